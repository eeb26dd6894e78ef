"""CIDR-heavy policy at scale: one NetworkPolicy whose ingress allows one pod selector plus N
ipBlock /32 peers (a partner allow-list), on a node with two pods.

For each N of --peers: the time from publishing the apply on NATS to policyd's reply (its
reply comes after the policy map and the ipcache hold every entry, checked afterwards from
routed's ipcache list and policyd's entries for the server pod); meanwhile a prober asks
policyd's health and applies a small 10-peer policy to the other pod, again and again, and
their latencies while the big apply runs are the "no head-of-line blocking" figures; the
peak RSS of every service; then the delete, after which no CIDR identity or ipcache entry
of the big policy may be left.

    .venv/bin/python bench/cidr_scale.py [--peers 10000,100000] [--quick] [--profile]

With --profile, py-spy samples policyd and routed during each big apply (their functions by
own and inclusive time are printed and kept in the results; the sampling costs some speed).

Prints a table and writes bench/results/cidr_scale.json. Its node (10.238.0.0/16, maps sized
for 262,144 ipcache and policy entries) is purged at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Node, bench_node, cleaned_up, environment, log, percentile,  # noqa: E402
                          table, write_results)
from bench.policy_wire import PolicyBus  # noqa: E402
from bench.profile import Profile, lines  # noqa: E402
from services.datapath.maps.policy import PolicyMap  # noqa: E402
from services.wire import codec, subjects  # noqa: E402
from services.wire.messages import Apply, ListRequest, ObjectRef  # noqa: E402
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

POD_CIDR = "10.238.0.0/16"
NAMESPACE = "allow"
BIG, SMALL = "partners", "small"
BIG_RANGE = ipaddress.IPv4Network("100.64.0.0/10")       # the big policy's peers
SMALL_RANGE = ipaddress.IPv4Network("198.18.0.0/15")     # the small policy's peers
SMALL_PEERS = 10
MAPS = {"ipcache": 262144, "policy": 262144}
PROBE_INTERVAL = 0.05      # seconds between probes while the big apply runs
PROFILED = ("policyd", "routed")
METRICS_SERVER = ("socketserver.py",)   # the metrics endpoint's thread: not the apply's time
TARGETS = {"apply_s": {10000: 2.0, 100000: 20.0}, "rss_mb": 150.0, "probe_p99_ms": 100.0}


def network_policy(name: str, pod: str, peers: list[str], port: int) -> dict:
    blocks = [{"ipBlock": {"cidr": p}} for p in peers]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"podSelector": {"matchLabels": {"app": pod}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}, *blocks],
                                  "ports": [{"protocol": "TCP", "port": port}]}]}}


def hosts(net: ipaddress.IPv4Network, count: int) -> list[str]:
    first = int(net.network_address) + 1
    return [f"{ipaddress.IPv4Address(first + i)}/32" for i in range(count)]


class Prober:
    """Health requests to policyd, and applies of the small policy (two versions in turn, so
    every apply changes something), until stopped."""

    def __init__(self, bus: PolicyBus) -> None:
        self.bus = bus
        self.health: list[float] = []
        self.small: list[float] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Two loops at once: health, and small applies (neither waits for the other)."""
        peers = hosts(SMALL_RANGE, SMALL_PEERS)

        def health():
            return self.bus.nc.request(subjects.health("policyd"), b"", timeout=30)

        def small(turn: int):
            return self.bus.apply(network_policy(SMALL, "cli", peers, 80 + turn % 2))

        await asyncio.gather(self._loop(self.health, lambda _turn: health()), self._loop(self.small, small))

    async def _loop(self, into: list[float], call) -> None:
        turn = 0
        while not self._stop.is_set():
            turn += 1
            await self._timed(into, call(turn))
            try:
                await asyncio.wait_for(self._stop.wait(), PROBE_INTERVAL)
            except asyncio.TimeoutError:
                pass

    async def _timed(self, into: list[float], call) -> None:
        began = time.monotonic()
        try:
            await call
            into.append((time.monotonic() - began) * 1000)
        except Exception as exc:           # a timeout is a result here, not a crash
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()


async def ipcache_in(bus: PolicyBus, net: ipaddress.IPv4Network) -> int:
    entries = await bus.request(subjects.IPCACHE_LIST, ListRequest().to_wire())
    return sum(1 for e in entries if e["source"] == "cidr-policy" and ipaddress.IPv4Network(e["cidr"]).subnet_of(net))


async def identities(bus: PolicyBus) -> int:
    """Identities policyd holds, from its health counters (a list of 100k is over the bus's
    payload limit)."""
    reply = codec.decode((await bus.nc.request(subjects.health("policyd"), b"", timeout=bus.timeout)).data)
    return reply["result"]["counters"]["identities"]


def entries_of(node: Node, endpoint_id: int) -> int:
    """The endpoint's entries in the policy map, read from its pin."""
    policy_map = PolicyMap(Path(node.bpf_root))
    try:
        return sum(1 for key in policy_map.all() if key.endpoint_id == endpoint_id)
    finally:
        policy_map.close()


def peak_rss_mb(node: Node, field: str = "VmHWM") -> dict[str, float]:
    """Every service's peak RSS (FIELD VmRSS: its RSS now)."""
    out = {}
    for service, info in node.status()["services"].items():
        status = Path(f"/proc/{info['pid']}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
        out[service] = round(int(hwm.split()[1]) / 1024, 1)
    return out


def rss_mb(node: Node) -> dict[str, float]:
    return peak_rss_mb(node, "VmRSS")


async def one_size(node: Node, server_ep: int, peers: int, timeout: float, profile: bool) -> dict:
    bus = await PolicyBus.connect(node, timeout)
    profiles: list[Profile] = []
    try:
        await bus.apply(network_policy(SMALL, "cli", hosts(SMALL_RANGE, SMALL_PEERS), 80))   # its identities exist
        baseline = await identities(bus)
        idle_rss = rss_mb(node)
        prober = Prober(bus)
        probing = asyncio.create_task(prober.run())
        await asyncio.sleep(PROBE_INTERVAL * 4)        # a few probes before, as a baseline
        before = len(prober.health), len(prober.small)
        # Encoded before the clock starts: encoding 100,000 peers holds this process's loop
        # for ~50 ms, which the probes in flight here would count as policyd's latency.
        body = codec.encode(Apply(network_policy(BIG, "srv", hosts(BIG_RANGE, peers), 80)).to_wire())
        if profile:
            profiles = [Profile(node.service_pid(s), s, exclude=METRICS_SERVER).__enter__() for s in PROFILED]
        began = time.monotonic()
        try:
            reply = await bus.request(subjects.POLICY_APPLY, body)
        finally:
            apply_s = time.monotonic() - began
            for prof in profiles:
                prof.__exit__(None, None, None)
        prober.stop()
        await probing
        entries = entries_of(node, server_ep)
        in_ipcache, held = await ipcache_in(bus, BIG_RANGE), await identities(bus) - baseline
        rss = peak_rss_mb(node)
        began = time.monotonic()
        await bus.request(subjects.POLICY_DELETE, ObjectRef(BIG, NAMESPACE, "NetworkPolicy").to_wire())
        delete_s = time.monotonic() - began
        left = await ipcache_in(bus, BIG_RANGE) + await identities(bus) - baseline
    finally:
        await bus.close()
    health, small = prober.health[before[0]:], prober.small[before[1]:]
    return {"peers": peers, "apply_s": round(apply_s, 3), "delete_s": round(delete_s, 3),
            "written": reply.get("written"), "server_entries": entries,
            "ipcache_entries": in_ipcache, "cidr_identities": held, "left_after_delete": left,
            "health_ms": health, "small_apply_ms": small, "probe_errors": prober.errors, "peak_rss_mb": rss,
            "idle_rss_mb": idle_rss, "profile": [p.top() for p in profiles]}


def summary_row(r: dict) -> list[str]:
    def p99(values: list[float]) -> str:
        return f"{percentile(values, 99):.1f} (n={len(values)})" if values else "none answered"
    return [str(r["peers"]), f"{r['apply_s']:.2f}", f"{r['delete_s']:.2f}", str(r["ipcache_entries"]),
            str(r["server_entries"]), p99(r["health_ms"]), p99(r["small_apply_ms"]), str(len(r["probe_errors"])),
            f"{max(r['peak_rss_mb'].values()):.0f} ({max(r['peak_rss_mb'], key=r['peak_rss_mb'].get)})",
            str(r["left_after_delete"])]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=lambda t: [int(v) for v in t.split(",")],
                        help="ipBlock peer counts, comma-separated (default 10000,100000; quick 1000)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take (default 600)")
    parser.add_argument("--quick", action="store_true", help="one small size")
    parser.add_argument("--profile", action="store_true", help="py-spy on policyd and routed during the big apply")
    args = parser.parse_args(argv)
    args.peers = args.peers or ([1000] if args.quick else [10000, 100000])
    if min(args.peers) < 1 or max(args.peers) > 200000:
        parser.error("peer counts between 1 and 200000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="capillary-bench-cidr-") as tmp, cleaned_up() as cleanup:
        node = bench_node(cleanup, Path(tmp) / "node", POD_CIDR, "s", sections={"maps": MAPS})
        node.apply(docs(namespace_doc(NAMESPACE), pod_doc(NAMESPACE, "srv", {"app": "srv"}),
                        pod_doc(NAMESPACE, "cli", {"app": "cli"})))
        server_ep = node.pods()[f"{NAMESPACE}/srv"]["status"]["endpointID"]
        for peers in args.peers:
            log(f"applying a policy with {peers} ipBlock peers")
            results.append(asyncio.run(one_size(node, server_ep, peers, args.timeout, args.profile)))
            log(f"{peers} peers: apply {results[-1]['apply_s']} s, delete {results[-1]['delete_s']} s, "
                f"load average {os.getloadavg()[0]:.1f}")
    headers = ["peers", "apply s", "delete s", "ipcache", "server entries", "health p99 ms",
               "small apply p99 ms", "probe errors", "peak RSS MB", "left after delete"]
    print(table(headers, [summary_row(r) for r in results]))
    for r in results:
        print(f"\n{r['peers']} peers: RSS before the apply (MB) {r['idle_rss_mb']}")
        for prof in r["profile"]:
            for kind in ("self", "inclusive"):
                print(f"py-spy on {prof['service']} during the apply ({prof['samples']} samples), by {kind} time:")
                print("\n".join(lines(prof, kind, 25)))
    wall = round(time.monotonic() - began, 1)
    path = write_results("cidr_scale", {"benchmark": "cidr_scale", "environment": environment(),
                                        "parameters": {**vars(args), "maps": MAPS}, "targets": TARGETS,
                                        "results": results, "wall_seconds": wall})
    print(f"\nwall time {wall} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
