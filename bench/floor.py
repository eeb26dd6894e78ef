"""The floor program of bench/datapath.py (bench/bpf/floor.c) on a pair of routed netns, and
the kernel's run-time statistics of BPF programs: nanoseconds per packet of any program.

The floor runs on the host side of both pods' veths (tc ingress), as capillary's
from_container does: a packet either way is parsed, its destination looked up in one hash
map, its MACs rewritten, and bpf_redirect_peer hands it to the other pod's eth0.

Run-time statistics (kernel.bpf_stats_enabled) are turned on with BPF_ENABLE_STATS, which
holds them on while its fd is open and restores the previous state when it closes (also
when the process dies), so another user's setting of the sysctl is never overwritten.
With statistics on, each program run also reads the clock twice; `stats_overhead` measures
what that adds, with the empty program in floor.c run in the kernel's test loop.
"""
from __future__ import annotations

import ctypes as ct
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.common import Cleanup, run
from services.datapath import bpfsys
from services.datapath.netlink import Netlink

SOURCE = Path(__file__).resolve().parent / "bpf" / "floor.c"
PROGRAM = "floor_redirect"
TEST_PACKET = bytes(64)          # a 64-byte frame of zeros: not IPv4, so TC_ACT_OK at once
TEST_REPEAT = 1_000_000


@dataclass(frozen=True)
class Side:
    """One pod of the pair: its netns, its host-side veth and address."""

    netns: str
    host_ifname: str
    ip: str


class _Dest(ct.Structure):
    _fields_ = [("ifindex", ct.c_uint32), ("src_mac", ct.c_uint8 * 6), ("dst_mac", ct.c_uint8 * 6)]


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.strip().split(":"))


def _be32(ip: str) -> ct.c_uint32:
    return ct.c_uint32(int.from_bytes(bytes(int(p) for p in ip.split(".")), "little"))


def attach_floor(cleanup: Cleanup, a: Side, b: Side) -> dict[str, int]:
    """Load floor.c, point each side's address at its host veth and pod MAC, attach the floor
    to both host veths; returns {PROGRAM: fd} (the program stays loaded until CLEANUP)."""
    from bcc import BPF
    bpf = BPF(src_file=str(SOURCE).encode())
    cleanup.push("unload the floor program", bpf.cleanup)
    fn = bpf.load_func(PROGRAM.encode(), BPF.SCHED_CLS)
    dests = bpf[b"floor_dests"]
    for side in (a, b):
        host = Path("/sys/class/net") / side.host_ifname
        pod_mac = run(["cat", "/sys/class/net/eth0/address"], side.netns).stdout
        dest = _Dest(int((host / "ifindex").read_text()), (ct.c_uint8 * 6)(*_mac((host / "address").read_text())),
                     (ct.c_uint8 * 6)(*_mac(pod_mac)))
        dests[dests.Key(_be32(side.ip).value)] = dests.Leaf(*(getattr(dest, f) for f, _ in _Dest._fields_))
    links = Netlink()
    try:
        for side in (a, b):
            links.attach_bpf(int((Path("/sys/class/net") / side.host_ifname / "ifindex").read_text()), fn.fd, PROGRAM)
    finally:
        links.close()
    return {PROGRAM: fn.fd}


@contextmanager
def run_time_stats() -> Iterator[None]:
    """Kernel BPF run-time statistics on for the duration (see the module docstring)."""
    fd = bpfsys.enable_run_time_stats()
    try:
        yield
    finally:
        os.close(fd)


def snapshot(programs: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each program fd, by name."""
    out = {}
    for name, fd in programs.items():
        info = bpfsys.prog_info(fd)
        out[name] = (info.run_time_ns, info.run_cnt)
    return out


def ns_per_run(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Mean ns a run of each program between two snapshots (0.0: it did not run)."""
    out = {}
    for name, (ns, cnt) in after.items():
        runs = cnt - before[name][1]
        out[name] = (ns - before[name][0]) / runs if runs else 0.0
    return out


def xlated_counts(programs: dict[str, int]) -> dict[str, dict[str, int]]:
    """Each program's size after the verifier: instructions and helper calls among them."""
    out = {}
    for name, fd in programs.items():
        insns = bpfsys.prog_xlated(fd)
        out[name] = {"insns": len(insns), "helper_calls": sum(1 for i in insns if i & 0xff == bpfsys.BPF_CALL)}
    return out


def stats_overhead() -> dict[str, float]:
    """What run-time statistics add to a program run, in ns: `in_figure`, the empty program's
    ns/run as the statistics report it (a floor under every figure), and `per_run`, how much
    longer each run of the kernel's test loop takes with statistics on than off."""
    from bcc import BPF
    bpf = BPF(src_file=str(SOURCE).encode())
    try:
        fd = bpf.load_func(b"empty", BPF.SCHED_CLS).fd
        _, off = bpfsys.test_run(fd, TEST_PACKET, TEST_REPEAT)
        with run_time_stats():
            before = snapshot({"empty": fd})
            _, on = bpfsys.test_run(fd, TEST_PACKET, TEST_REPEAT)
            inside = ns_per_run(before, snapshot({"empty": fd}))["empty"]
        return {"in_figure": round(inside, 1), "per_run": round(on - off, 1)}
    finally:
        bpf.cleanup()
