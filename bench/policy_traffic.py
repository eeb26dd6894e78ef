"""The variants of bench/policy.py: the same TCP traffic through N policy entries (a capillary
node) and through N iptables rules (kernel routing), for every N, in the same rounds.

A variant is a pod pair plus the state it is measured in, switched just before the
measurement (the order rotates each round):
  capillary/N   node in redirect mode, pods bench/client -> bench/server; N = 0: no policy,
                else policies putting N entries in the server's ingress (client identity x
                TCP ports, the bench ports among them), in chunks of CHUNK entries per policy
                so that no request outgrows a NATS message
  iptables/N    datapath.py's kernel variant (own netns, veths, /32 host routes), its traffic
                jumped from FORWARD to chain BENCH-FWD-<tag>: N non-matching DROP rules, then
                ACCEPT (N = 0: the ACCEPT alone)
The ACCEPT keeps the rest of FORWARD (other users' rules on this machine) out of both.
"""
from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import Cleanup, log, run
from bench.datapath import IPERF_PORT, SOCKPERF_PORT, Pair, Placement, iperf, node_pair, routed_netns, sockperf, \
    start_servers
from bench.policy_wire import PolicyBus, allow_from, cnp, entry_packets, pod_info, policy_entries

TRAFFIC_CIDR = "10.234.0.0/16"
MAPS = {"policy": 131072}      # 50k entries and the node's own, with room to spare
KERNEL_NET = "10.235.0.0/24"
KERNEL_IPS = ("10.235.0.2", "10.235.0.3")
FILLER_PORT = 12000            # filler entries: client -> TCP 12000, 12001, ... (50k fit below 65536)
PORTS_PER_RULE = 100
CHUNK = 10000                  # entries per policy
FILLER_SOURCES = ipaddress.IPv4Address("198.18.0.0")   # RFC 2544 benchmarking range: never a pod
POLICY_PREFIX = "bench-entries"
KINDS = ("capillary", "iptables")
SETTLE = 0.5                   # seconds after a switch: what is measured is a state, not its change


def variant(kind: str, count: int) -> str:
    return f"{kind}/{count}"


@dataclass(frozen=True)
class Sample:
    gbps: float
    retransmits: int
    rr_per_s: float
    p50_us: float
    p99_us: float
    policy_lookups: int | None     # hits on the server's entries for the bench ports (capillary)


def entries_policies(count: int) -> list[dict]:
    """Policies that together put COUNT allow entries in bench/server's ingress, the two bench
    ports among them (in the first policy)."""
    if count == 0:
        return []
    filler = list(range(FILLER_PORT, FILLER_PORT + count - 2))
    out = []
    for k, first in enumerate(range(0, max(len(filler), 1), CHUNK)):
        ports = filler[first:first + CHUNK]
        rules = [allow_from({"app": "client"}, [IPERF_PORT, SOCKPERF_PORT])] if k == 0 else []
        rules += [allow_from({"app": "client"}, ports[i:i + PORTS_PER_RULE]) for i in range(0, len(ports), PORTS_PER_RULE)]
        out.append(cnp(f"{POLICY_PREFIX}-{k}", "bench", {"app": "server"}, rules))
    return out


class PolicyEntries:
    """The entries policies for one count at a time, switched over NATS; every switch timed."""

    def __init__(self, pair: Pair) -> None:
        self.node = pair.node
        pods = self.node.pods()
        self.server, self.client = pod_info(pods, "bench/server"), pod_info(pods, "bench/client")
        self.current: dict[str, dict] = {}
        self.count = 0
        self.switches: list[dict] = []
        self.server_entries: dict[int, int] = {0: 0}

    def set(self, count: int) -> None:
        if count == self.count:
            return
        wanted = {p["metadata"]["name"]: p for p in entries_policies(count)}
        began = time.monotonic()
        asyncio.run(self._switch(wanted))
        self.switches.append({"from": self.count, "to": count, "ms": (time.monotonic() - began) * 1000})
        self.current, self.count = wanted, count
        if count not in self.server_entries:
            self.server_entries[count] = policy_entries(self.node)["by_endpoint"].get(self.server.endpoint_id, 0)

    async def _switch(self, wanted: dict[str, dict]) -> None:
        bus = await PolicyBus.connect(self.node)
        try:
            for name in self.current.keys() - wanted.keys():
                await bus.delete(name, "bench")
            for name, doc in wanted.items():
                if self.current.get(name) != doc:
                    await bus.apply(doc)
        finally:
            await bus.close()

    def lookups(self) -> int:
        return sum(entry_packets(self.node, self.server.endpoint_id, self.client.identity, port) or 0
                   for port in (IPERF_PORT, SOCKPERF_PORT))


class Chain:
    """Chain BENCH-FWD-<tag>, jumped to from FORWARD for KERNEL_NET only: COUNT non-matching
    DROP rules then ACCEPT. Removed by CLEANUP."""

    def __init__(self, cleanup: Cleanup, tag: str) -> None:
        self.name = f"BENCH-FWD-{tag}"
        self.match = ["-s", KERNEL_NET, "-d", KERNEL_NET, "-j", self.name]
        run(["iptables", "-w", "-N", self.name])
        cleanup.push(f"iptables chain {self.name}", self._remove)
        self.loads: list[dict] = []
        self.count = -1                                    # forces the first set(0) to load
        self.set(0)
        run(["iptables", "-w", "-I", "FORWARD", "1", *self.match])
        cleanup.push(f"iptables jump to {self.name}", lambda: run(["iptables", "-w", "-D", "FORWARD", *self.match]))

    def _remove(self) -> None:
        run(["iptables", "-w", "-F", self.name])
        run(["iptables", "-w", "-X", self.name])

    def set(self, count: int) -> None:
        if count == self.count:
            return
        lines = ["*filter", f"-F {self.name}"]
        lines += [f"-A {self.name} -s {FILLER_SOURCES + i}/32 -j DROP" for i in range(count)]
        lines += [f"-A {self.name} -j ACCEPT", "COMMIT", ""]
        began = time.monotonic()
        proc = subprocess.run(["iptables-restore", "-w", "--noflush"], input="\n".join(lines), text=True,
                              capture_output=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"iptables-restore exited {proc.returncode}: {proc.stderr.strip()}")
        self.loads.append({"rules": count, "ms": (time.monotonic() - began) * 1000})
        self.count = count


@dataclass
class TrafficSetup:
    cpus: Placement
    counts: list[int]
    policy: PolicyEntries
    chain: Chain
    pairs: dict[str, Pair] = field(default_factory=dict)

    @classmethod
    def create(cls, cleanup: Cleanup, workdir: Path, cpus: Placement, counts: list[int], tag: str) -> "TrafficSetup":
        log(f"policy scale: node on {TRAFFIC_CIDR}, kernel-routed netns on {KERNEL_NET}, chain BENCH-FWD-{tag}")
        capillary = node_pair(cleanup, workdir, TRAFFIC_CIDR, "t", "redirect", {"maps": MAPS})
        forwarding = Path("/proc/sys/net/ipv4/ip_forward")
        if forwarding.read_text().strip() != "1":
            log("turning on net.ipv4.ip_forward")           # left on, as datapath.py does
            forwarding.write_text("1")
        kernel = Pair("kernel", routed_netns(cleanup, tag, "a", KERNEL_IPS[0]),
                      routed_netns(cleanup, tag, "b", KERNEL_IPS[1]), KERNEL_IPS[1])
        chain = Chain(cleanup, tag)
        for pair in (capillary, kernel):
            start_servers(cleanup, pair, cpus)
        setup = cls(cpus, [0, *counts], PolicyEntries(capillary), chain)
        setup.pairs = {"capillary": capillary, "iptables": kernel}
        return setup

    @property
    def variants(self) -> list[str]:
        return [variant(kind, n) for kind in KINDS for n in self.counts]

    def enter(self, name: str) -> None:
        kind, count = name.split("/")
        before = (self.policy.count, self.chain.count)
        self.policy.set(int(count) if kind == "capillary" else 0)
        self.chain.set(int(count) if kind == "iptables" else 0)
        if (self.policy.count, self.chain.count) != before:
            time.sleep(SETTLE)

    def measure(self, name: str, seconds: int, latency_seconds: int) -> Sample:
        kind, count = name.split("/")
        pair = self.pairs[kind]
        counted = kind == "capillary" and count != "0"
        before = self.policy.lookups() if counted else 0
        gbps, retransmits = iperf(pair, self.cpus, seconds, 1)
        lat = sockperf(pair, self.cpus, latency_seconds)
        lookups = self.policy.lookups() - before if counted else None
        return Sample(gbps, retransmits, lat["rr_per_s"], lat["p50_us"], lat["p99_us"], lookups)

    def record(self, rounds: list[dict]) -> dict:
        return {"counts": self.counts, "server_ingress_entries": self.policy.server_entries,
                "policy_switches": self.policy.switches, "iptables_loads": self.chain.loads,
                "rounds": [{"order": r["order"], "samples": {v: asdict(s) for v, s in r["samples"].items()}}
                           for r in rounds]}


def run_rounds(setup: TrafficSetup, rounds: int, seconds: int, latency_seconds: int) -> list[dict]:
    for kind in KINDS:
        setup.enter(variant(kind, 0))
        iperf(setup.pairs[kind], setup.cpus, 1, 1)          # warm-up, not recorded
    names = setup.variants
    done = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        log(f"round {r + 1}/{rounds}")
        samples = {}
        for name in order:
            setup.enter(name)
            s = samples[name] = setup.measure(name, seconds, latency_seconds)
            log(f"  {name:16} {s.gbps:6.2f} Gbit/s  {s.rr_per_s:7.0f} rr/s  p50 {s.p50_us:6.2f} us  "
                f"p99 {s.p99_us:7.2f} us" + (f"  policy lookups {s.policy_lookups}" if s.policy_lookups else ""))
        done.append({"order": order, "samples": samples})
    setup.enter(variant("capillary", 0))                    # no policy, the chain empty, before clean-up
    return done
