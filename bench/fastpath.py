"""The established-flow path of from_container against the floor, instruction by instruction:
each program run by the kernel's test loop (BPF_PROG_TEST_RUN) on one CPU with warm caches,
on a packet of a connection already in conntrack. No traffic, no second CPU, so what it
shows is the cost of the program's own work, steady enough to compare one change with the
next; what two CPUs sharing a connection add is bench/datapath.py's to show.

    .venv/bin/python bench/fastpath.py [--runs 200000]

lxc.c is compiled as a node compiles it (services/datapath/loader.py), with its maps pinned
under a throwaway bpffs directory (removed at the end), and given two endpoints (the
sender's on this netns's loopback, which the test loop runs the program on; their counter
slots exist with the map) and the connection's conntrack entry. Each syscall runs a program TTL_RUNS times
on one packet (its TTL starts at 255, so every run is forwarded); the mean over all runs is
reported, for a request (the entry's own direction) and a reply (found by the reverse key),
and for to_container, a packet of a connection from outside the node into the sender's pod.

"cold" runs each program once per syscall right after writing a buffer twice the size of
this CPU's L2 cache, and reports the median: what a run costs when its instructions and map
lines come from the last-level cache, as between two packets of a ping-pong, where the
network stack and the applications run in between. It prices how many distinct lines a
program touches, which the warm loop hides.
"""
from __future__ import annotations

import argparse
import os
import ctypes as ct
import ipaddress
import shutil
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table  # noqa: E402
from bench.floor import SOURCE as FLOOR_SOURCE, xlated_counts  # noqa: E402
from services.datapath import bpfsys, loader  # noqa: E402
from services.datapath.maps.conntrack import ConntrackMap, CtEntry, CtKey  # noqa: E402
from services.datapath.maps.endpoints import Endpoint, EndpointMap  # noqa: E402
from services.runtime.config import DatapathConfig, NodeConfig  # noqa: E402

POD_CIDR = "10.236.0.0/16"
CLIENT, SERVER = "10.236.0.2", "10.236.0.3"
OUTSIDE = "192.0.2.1"          # a host outside the node (to_container's packets come from it)
SPORT, DPORT = 40000, 5201
TTL_RUNS = 200                 # runs per syscall: the TTL (255) must stay above 1 throughout
LOOPBACK = 1                   # the test loop's device: the sender's "lxc" ifindex
COPIES = 8                     # loads of each program for the cold figures


def packet(src: str, dst: str, sport: int, dport: int, size: int = 64) -> bytes:
    """An Ethernet + IPv4 + TCP ACK frame of SIZE bytes with a valid IPv4 checksum."""
    ip_len = size - 14
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 255, 6, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xffff) + (total >> 16)
    header = header[:10] + struct.pack("!H", ~((total & 0xffff) + (total >> 16)) & 0xffff) + header[12:]
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x10, 65535, 0, 0)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + header + tcp
    return frame + bytes(size - len(frame))


def mean_ns(fd: int, frame: bytes, runs: int) -> tuple[int, float]:
    """(return value, mean ns a run) over RUNS runs, TTL_RUNS per syscall."""
    total = rc = 0
    for _ in range(max(1, runs // TTL_RUNS)):
        rc, ns = bpfsys.test_run(fd, frame, TTL_RUNS)
        total += ns
    return rc, total / max(1, runs // TTL_RUNS)


def l2_bytes() -> int:
    """This CPU's L2 cache size in bytes (sysfs), or 2 MiB when it does not say."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        if (index / "level").read_text().strip() == "2":
            size = (index / "size").read_text().strip()
            return int(size[:-1]) * (1024 if size.endswith("K") else 1024 * 1024)
    return 2 << 20


def copies(bpf, name: str, count: int) -> list[int]:
    """COUNT more loads of program NAME of the compiled object BPF: the same instructions,
    each JIT-compiled to a place of its own in memory."""
    from bcc import BPF, libbcc
    lib, module, func = libbcc.lib, bpf.module, name.encode()
    fds = []
    for _ in range(count):
        fd = lib.bcc_func_load(module, BPF.SCHED_CLS, func, lib.bpf_function_start(module, func),
                               lib.bpf_function_size(module, func), lib.bpf_module_license(module),
                               lib.bpf_module_kern_version(module), 0, None, 0, None, -1)
        if fd < 0:
            raise OSError(ct.get_errno(), f"loading another copy of {name}")
        fds.append(fd)
    return fds


def cold_ns(runs: dict[str, tuple[list[int], bytes]], samples: int) -> dict[str, float]:
    """Median ns of one run of each (program copies, packet) in RUNS after the caches were
    filled with other lines (see the module's docstring). The runs take turns, so a change
    in the machine's load moves every figure alike, and each figure pools its program's
    copies, so no one placement of its code in memory decides it."""
    size = 2 * l2_bytes()
    flush = ct.create_string_buffer(size)
    times: dict[str, list[int]] = {name: [] for name in runs}
    for i in range(samples):
        for name, (fds, frame) in runs.items():
            ct.memset(flush, i & 0xff, size)
            times[name].append(bpfsys.test_run(fds[i % len(fds)], frame, 1)[1])
    return {name: statistics.median(t) for name, t in times.items()}


def both_cpus(fd: int, request: bytes, reply: bytes, runs: int) -> tuple[float, float]:
    """Mean ns a run of requests on CPU 0 and replies on CPU 1 at the same time: one
    connection's two directions on two CPUs, as in a ping-pong or any TCP flow with ACKs."""
    out: dict[int, float] = {}

    def worker(cpu: int, frame: bytes) -> None:
        os.sched_setaffinity(0, {cpu})           # this thread only
        out[cpu] = mean_ns(fd, frame, runs)[1]

    threads = [threading.Thread(target=worker, args=(cpu, frame)) for cpu, frame in ((0, request), (1, reply))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out[0], out[1]


def lxc(root: Path):
    """lxc.c compiled for a node whose maps are under ROOT, with the two endpoints and the
    connection in place."""
    config = NodeConfig(podCIDR=POD_CIDR, datapath=DatapathConfig(bpfRoot=str(root)))
    loaded = loader.compile_source("lxc.c", config)
    endpoints, conntrack = EndpointMap(root), ConntrackMap(root)
    for n, (ip, ifindex) in enumerate(((CLIENT, LOOPBACK), (SERVER, LOOPBACK)), start=1):
        endpoints.upsert(Endpoint(ip, ifindex, 1000 + n, n, "02:00:00:00:00:0%d" % n, "04:00:00:00:00:0%d" % n))
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for src in (CLIENT, OUTSIDE):
        key = CtKey(protocol=6, sport=socket.htons(SPORT), dport=socket.htons(DPORT))
        key.saddr[:] = ipaddress.IPv4Address(src).packed
        key.daddr[:] = ipaddress.IPv4Address(SERVER if src == CLIENT else CLIENT).packed
        conntrack.put(key, CtEntry(created=now, last_seen=now, flags=2), packets=1, size=64)
    for m in (endpoints, conntrack):
        m.close()
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000, help="program runs a figure (default 200000)")
    parser.add_argument("--against", type=Path, metavar="BPF_DIR",
                        help="also compile lxc.c from BPF_DIR (another checkout's bpf/) and run its "
                             "from_container in the same turns, to price a change")
    parser.add_argument("--cold", type=int, default=2000, help="cold runs a figure, each after a cache flush (default 2000)")
    args = parser.parse_args(argv)
    from bcc import BPF
    root = Path("/sys/fs/bpf") / f"capillary-fastpath-{os.getpid()}"
    floor = BPF(src_file=str(FLOOR_SOURCE).encode())
    placed: dict[str, list[int]] = {}
    try:
        loaded = lxc(root)
        progs = {"from_container": loaded.program_fd("from_container"),
                 "to_container": loaded.program_fd("to_container"),
                 "floor_redirect": floor.load_func(b"floor_redirect", BPF.SCHED_CLS).fd}
        objects = {"from_container": loaded.bpf, "to_container": loaded.bpf, "floor_redirect": floor}
        if args.against:
            os.environ[loader.BPF_DIR_ENV] = str(args.against.resolve())
            other = lxc(root / "against")
            progs["against from_container"] = other.program_fd("from_container")
            objects["against from_container"] = other.bpf
        dests = floor[b"floor_dests"]
        dests[dests.Key(int.from_bytes(socket.inet_aton(SERVER), "little"))] = dests.Leaf(4242)
        dests[dests.Key(int.from_bytes(socket.inet_aton(CLIENT), "little"))] = dests.Leaf(4242)
        request, reply = packet(CLIENT, SERVER, SPORT, DPORT), packet(SERVER, CLIENT, DPORT, SPORT)
        outside = packet(OUTSIDE, CLIENT, SPORT, DPORT)
        cases = [("to_container", "from outside", progs["to_container"], outside)]
        cases += [(name, label, fd, frame) for name, fd in progs.items() if name != "to_container"
                  for label, frame in (("request", request), ("reply", reply))]
        for name, obj in objects.items():
            placed[name] = copies(obj, name.split()[-1], COPIES)
        cold = cold_ns({f"{name} {label}": (placed[name], frame) for name, label, _, frame in cases}, args.cold)
        rows = []
        for name, label, fd, frame in cases:
            rc, ns = mean_ns(fd, frame, args.runs)
            rows.append([name, label, str(rc), f"{ns:.1f}", f"{cold[f'{name} {label}']:.0f}"])
        for name, fd in progs.items():
            if name != "to_container":
                rows.append([name, "both, CPU 0 / 1", "",
                             "{:.1f} / {:.1f}".format(*both_cpus(fd, request, reply, args.runs)), ""])
        print(table(["program", "packet", "verdict", "ns/run", "cold ns/run"], rows))
        print("cold, from_container ÷ floor: " + ", ".join(
            f"{label} {cold['from_container ' + label] / cold['floor_redirect ' + label]:.2f}×"
            for label in ("request", "reply")))
        if args.against:
            print("cold, from_container ÷ against's: " + ", ".join(
                f"{label} {cold['from_container ' + label] / cold['against from_container ' + label]:.3f}×"
                for label in ("request", "reply")))
        print("xlated instructions (helper calls): " + "; ".join(
            f"{n} {c['insns']} ({c['helper_calls']})" for n, c in xlated_counts(progs).items()))
    finally:
        for fd in [fd for fds in placed.values() for fd in fds]:
            os.close(fd)
        floor.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
