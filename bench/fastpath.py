"""The established-flow path of from_container against the floor, instruction by instruction:
each program run by the kernel's test loop (BPF_PROG_TEST_RUN) on one CPU with warm caches,
on a packet of a connection already in conntrack. No traffic, no second CPU, so what it
shows is the cost of the program's own work, steady enough to compare one change with the
next; what two CPUs sharing a connection add is bench/datapath.py's to show.

    .venv/bin/python bench/fastpath.py [--runs 200000]

lxc.c is compiled as a node compiles it (services/datapath/loader.py), with its maps pinned
under a throwaway bpffs directory (removed at the end), and given two endpoints (the
sender's on this netns's loopback, which the test loop runs the program on), their counter
entries and the connection's conntrack entry. Each syscall runs a program TTL_RUNS times
on one packet (its TTL starts at 255, so every run is forwarded); the mean over all runs is
reported, for a request (the entry's own direction) and a reply (found by the reverse key),
and for to_container, a packet of a connection from outside the node into the sender's pod.
"""
from __future__ import annotations

import argparse
import os
import ctypes as ct
import ipaddress
import shutil
import socket
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
from services.datapath.maps.metrics import EndpointMetricsMap  # noqa: E402
from services.runtime.config import DatapathConfig, NodeConfig  # noqa: E402

POD_CIDR = "10.236.0.0/16"
CLIENT, SERVER = "10.236.0.2", "10.236.0.3"
OUTSIDE = "192.0.2.1"          # a host outside the node (to_container's packets come from it)
SPORT, DPORT = 40000, 5201
TTL_RUNS = 200                 # runs per syscall: the TTL (255) must stay above 1 throughout
LOOPBACK = 1                   # the test loop's device: the sender's "lxc" ifindex


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
    endpoints, counters, conntrack = EndpointMap(root), EndpointMetricsMap(root), ConntrackMap(root)
    for n, (ip, ifindex) in enumerate(((CLIENT, LOOPBACK), (SERVER, LOOPBACK)), start=1):
        endpoints.upsert(Endpoint(ip, ifindex, 1000 + n, n, "02:00:00:00:00:0%d" % n, "04:00:00:00:00:0%d" % n))
        counters.create(n)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for src in (CLIENT, OUTSIDE):
        key = CtKey(protocol=6, sport=socket.htons(SPORT), dport=socket.htons(DPORT))
        key.saddr[:] = ipaddress.IPv4Address(src).packed
        key.daddr[:] = ipaddress.IPv4Address(SERVER if src == CLIENT else CLIENT).packed
        conntrack.put(key, CtEntry(created=now, last_seen=now, flags=2), packets=1, size=64)
    for m in (endpoints, counters, conntrack):
        m.close()
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000, help="program runs a figure (default 200000)")
    args = parser.parse_args(argv)
    from bcc import BPF
    root = Path("/sys/fs/bpf") / f"capillary-fastpath-{os.getpid()}"
    floor = BPF(src_file=str(FLOOR_SOURCE).encode())
    try:
        loaded = lxc(root)
        progs = {"from_container": loaded.program_fd("from_container"),
                 "to_container": loaded.program_fd("to_container"),
                 "floor_redirect": floor.load_func(b"floor_redirect", BPF.SCHED_CLS).fd}
        dests = floor[b"floor_dests"]
        dests[dests.Key(int.from_bytes(socket.inet_aton(SERVER), "little"))] = dests.Leaf(4242)
        dests[dests.Key(int.from_bytes(socket.inet_aton(CLIENT), "little"))] = dests.Leaf(4242)
        request, reply = packet(CLIENT, SERVER, SPORT, DPORT), packet(SERVER, CLIENT, DPORT, SPORT)
        rows = []
        rc, ns = mean_ns(progs["to_container"], packet(OUTSIDE, CLIENT, SPORT, DPORT), args.runs)
        rows.append(["to_container", "from outside", str(rc), f"{ns:.1f}"])
        for name, fd in progs.items():
            if name == "to_container":
                continue
            for label, frame in (("request", request), ("reply", reply)):
                rc, ns = mean_ns(fd, frame, args.runs)
                rows.append([name, label, str(rc), f"{ns:.1f}"])
            rows.append([name, "both, CPU 0 / 1", "", "{:.1f} / {:.1f}".format(*both_cpus(fd, request, reply, args.runs))])
        print(table(["program", "packet", "verdict", "ns/run"], rows))
        print("xlated instructions (helper calls): " + "; ".join(
            f"{n} {c['insns']} ({c['helper_calls']})" for n, c in xlated_counts(progs).items()))
    finally:
        floor.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
