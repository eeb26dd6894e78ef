"""Shared by the bench scripts: statistics, a cleanup stack, processes in network
namespaces, benchmark nodes, result tables and JSON files.

Everything a script creates is pushed onto one Cleanup as soon as it exists, so a failure or
Ctrl-C at any point removes exactly what was made so far.
"""
from __future__ import annotations

import json
import math
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tests.support.node import Node

REPO = Path(__file__).resolve().parents[1]
# bench/run.py points this elsewhere for a quick run, so a smoke test never replaces the
# results a full run left for the report.
RESULTS_ENV = "CAPILLARY_BENCH_RESULTS"
RESULTS = Path(os.environ.get(RESULTS_ENV) or REPO / "bench" / "results")

# Every bench node gets its own pod interface prefix instead of the "lxt" that
# tests.support.node gives all nodes: a node's start-up orphan sweep and `down --purge`
# delete every 15-character link with the node's prefix, so two running nodes that share
# a prefix delete each other's pods (seen here: the second node's start-up removed the
# first node's pod veths). Each prefix must not be a prefix of another.
BENCH_PREFIX = "lxb"        # + one letter per node: lxbp (pods.py), lxbr, lxbh (datapath.py), lxba (cplane.py),
                            # lxbt (policy.py), lxbf (flows.py), lxbm (footprint.py)
# Bench node tags start with this letter (test nodes' tags are hex), so a bench node's netns
# (cap-tx...), bpffs root (capillary-tx...) and router devices (ctx...) are known as ours.
BENCH_TAG = "x"
UP_TIMEOUT = 90             # seconds for a bench node to come up healthy


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- statistics --------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, fmt: str = "{:.2f}") -> str:
        return f"{fmt.format(self.median)} [{fmt.format(self.min)}-{fmt.format(self.max)}]"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile Q (0-100]: with fewer than 100/(100-Q) values, the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-round ratios VALUE/BASELINE (the two lists are aligned by round)."""
    if len(values) != len(baseline):
        raise ValueError("rounds do not line up")
    return [v / b for v, b in zip(values, baseline)]


# ---- cleanup -----------------------------------------------------------------------------

class Cleanup:
    """Undo steps, run newest first by close(); a failing step is reported, the rest still run."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self.failures: list[str] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        self._steps.append((what, undo))

    def close(self) -> None:
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
            except Exception as exc:            # keep going: the other steps still matter
                self.failures.append(f"{what}: {exc}")
                log(f"cleanup step failed: {what}: {exc}")


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def cleaned_up() -> Iterator[Cleanup]:
    """A Cleanup that is closed on success, error, Ctrl-C or SIGTERM. While it runs, further
    SIGINT/SIGTERM are ignored so a second Ctrl-C cannot cut the cleanup short."""
    cleanup = Cleanup()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield cleanup
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    if cleanup.failures:                        # only reached when the body succeeded
        raise RuntimeError("cleanup failed: " + "; ".join(cleanup.failures))


# ---- processes and namespaces ------------------------------------------------------------

def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """ARGV run in the network namespace at path NETNS (None: the host)."""
    return ["nsenter", f"--net={netns}", "--", *argv] if netns else list(argv)


def run(argv: Sequence[str], netns: str | None = None, timeout: float = 30,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(in_netns(netns, argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def start(cleanup: Cleanup, argv: Sequence[str], netns: str | None = None) -> subprocess.Popen:
    """A background process (a server), killed and reaped by CLEANUP. nsenter execs ARGV for
    --net alone, so the pid is the server's own."""
    output = tempfile.TemporaryFile()           # a file, not a pipe: nobody drains it
    proc = subprocess.Popen(in_netns(netns, argv), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    proc.output = output
    cleanup.push(f"kill {argv[0]} (pid {proc.pid})", lambda: _stop(proc))
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    proc.output.close()


def output_of(proc: subprocess.Popen) -> str:
    proc.output.seek(0)
    return proc.output.read().decode(errors="replace").strip()


def wait_listening(netns: str, port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3:]} exited {proc.returncode}: {output_of(proc)}")
        if run(["ss", "-Hltn", f"sport = :{port}"], netns).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {netns} after {timeout}s")


def add_netns(cleanup: Cleanup, name: str) -> str:
    """A new, empty netns /run/netns/NAME with lo up, deleted by CLEANUP."""
    run(["ip", "netns", "add", name])
    cleanup.push(f"netns {name}", lambda: run(["ip", "netns", "del", name], check=False))
    run(["ip", "link", "set", "lo", "up"], f"/run/netns/{name}")
    return f"/run/netns/{name}"


def ping(netns: str | None, ip: str, count: int = 3) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", ip]
    return run(argv, netns, check=False).returncode == 0


# ---- nodes -------------------------------------------------------------------------------

def bench_node(cleanup: Cleanup, workdir: Path, pod_cidr: str, letter: str, mode: str = "redirect",
               sections: dict[str, dict] | None = None) -> Node:
    """A running node of our own (tests.support.node.Node, pod interfaces BENCH_PREFIX+LETTER,
    tag BENCH_TAG+3 hex digits), purged by CLEANUP, which then fails loudly if anything of it
    is left. SECTIONS: config fields to set, by section (e.g. {"maps": {"policy": 131072}})."""
    workdir.mkdir(parents=True, exist_ok=True)
    node = Node(workdir, pod_cidr=pod_cidr, mode=mode, tag=BENCH_TAG + secrets.token_hex(2)[:3])
    node.lxc_prefix = BENCH_PREFIX + letter
    config = yaml.safe_load(node.config_path.read_text())
    config["datapath"]["lxcPrefix"] = node.lxc_prefix
    for section, fields in (sections or {}).items():
        config.setdefault(section, {}).update(fields)
    node.config_path.write_text(yaml.safe_dump(config))
    cleanup.push(f"node {node.name} leftovers", lambda: _check_purged(node))
    cleanup.push(f"purge node {node.name}", node.purge)
    log(f"starting node {node.name} ({mode}, {pod_cidr})")
    # Node.up() allows the CLI's default 30 s until every service is healthy: on two CPUs
    # shared with other work, four bcc compiles can take longer than that.
    node.cli("up", "--detach", "--timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 30)
    return node


def _check_purged(node: Node) -> None:
    # A Node.leftovers() that counts every "lxt" link on the machine (other test runs' too)
    # is corrected: those are dropped and our own prefix is looked for instead.
    left = {item for item in node.leftovers() if not item.startswith("link lxt")}
    left |= {f"link {name}" for name in link_names() if name.startswith(node.lxc_prefix)}
    if left:
        raise RuntimeError(f"node {node.name} left things behind: {sorted(left)}")


def link_names(netns: str | None = None) -> list[str]:
    out = run(["ip", "-o", "link"], netns).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


# ---- output ------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in (headers, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.rstrip()

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(),
            "cpus": os.cpu_count(), "commit": git("rev-parse", "HEAD"), "uncommitted_outside_bench": changed,
            "loadavg": os.getloadavg()}


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, Spread):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
