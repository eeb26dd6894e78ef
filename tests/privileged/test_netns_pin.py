"""A runtime's netns path is checked once, and the pod is wired into exactly the namespace
that was checked: replacing the file at that path afterwards (with the host's own namespace,
say) must not redirect the work. Real namespaces, real bind mounts."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from services.datapath import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, mounts)")


@pytest.fixture
def two_namespaces():
    names = [f"cap-pin-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield [Path("/run/netns") / name for name in names]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _links(path: Path) -> str:
    return subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link"], capture_output=True, text=True,
                          check=True).stdout


def test_work_reaches_the_checked_namespace_after_its_path_is_swapped(two_namespaces):
    checked, other = two_namespaces
    keep = os.open(checked, os.O_RDONLY)          # to look into the checked namespace afterwards
    try:
        with netns.pinned_pod_netns(checked) as pinned:
            # The swap a hostile or careless caller could make between check and use.
            subprocess.run(["umount", "-l", str(checked)], check=True)
            subprocess.run(["mount", "--bind", str(other), str(checked)], check=True)
            with netns.entered(pinned):
                subprocess.run(["ip", "link", "add", "pinprobe0", "type", "veth", "peer", "name", "pinprobe1"], check=True)
        assert "pinprobe0" in _links(Path(f"/proc/{os.getpid()}/fd/{keep}"))
        assert "pinprobe0" not in _links(other)
        assert "pinprobe0" not in _links(checked)  # now the other namespace's file
    finally:
        os.close(keep)


def test_the_pin_refuses_what_the_check_refuses(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(netns.NotAPodNetns, match="a FIFO"):
        with netns.pinned_pod_netns(fifo):
            pass
    with pytest.raises(netns.NotAPodNetns, match="host's own"):
        with netns.pinned_pod_netns("/proc/self/ns/net"):
            pass
