"""Fixtures for the compose tests (`make compose-test`): the engine, the image and one
deployment, each torn down even when a test fails; the time each step took is reported at
the end of the run."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support.compose import TIMINGS, Deployment, Engine
from tests.support.node import REPO

ENABLE_ENV = "CAPILLARY_COMPOSE_TEST"
IMAGE = "capillary:compose-test"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"docker compose tests run with `make compose-test` ({ENABLE_ENV}=1)")
    for item in items:
        if "/compose/" in str(item.fspath) and os.environ.get(ENABLE_ENV) != "1":
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("compose timings")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what:<40} {seconds:7.1f} s")


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the compose tests need root (dockerd, BPF, network namespaces)")
    eng = Engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    started = time.monotonic()
    eng.ensure()
    if eng.proc:
        TIMINGS["start dockerd"] = time.monotonic() - started
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def image(engine):
    started = time.monotonic()
    proc = subprocess.run(["bash", "scripts/compose-image.sh", IMAGE], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, f"image build failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    TIMINGS["base image, wheels and image build"] = time.monotonic() - started
    subprocess.run(["bash", "scripts/compose-host.sh"], cwd=REPO, check=True)
    yield IMAGE
    # Keep the image (the next run's build starts from its layers); drop replaced ones.
    subprocess.run(["docker", "image", "prune", "-f", "--filter", "dangling=true"], capture_output=True)


@pytest.fixture(scope="module")
def deployment(image, tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("compose"), image)
    try:
        TIMINGS["up -d until every service is healthy"] = dep.up()
        yield dep
    finally:
        # Idempotent: the last test does the same and checks it; this is for a failed run.
        errors = []
        for step in (lambda: dep.down(volumes=True), dep.purge):
            try:
                step()
            except Exception as exc:      # every step runs, whatever the one before did
                errors.append(str(exc))
        left = dep.leftovers()
        assert not left and not errors, f"teardown: {errors}; left behind: {left}"
