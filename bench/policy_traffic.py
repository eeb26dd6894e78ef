"""Figures 2 and 3 of bench/policy.py: the same TCP traffic through E policy entries (a
capillary node) and through E iptables rules (kernel routing), each against itself without
them, in the same alternating rounds.

Four variants on two pod pairs; a variant is a pair plus the state it is measured in, and
the state is switched just before the measurement (the order rotates each round):
  capillary            node in redirect mode, pods bench/client -> bench/server, no policy
  capillary+entries    the same pods with one policy whose E entries sit in the server's
                       ingress (client identity x TCP ports), allowing the bench ports too
  kernel               datapath.py's kernel variant (own netns, veths, /32 host routes), its
                       traffic jumped from FORWARD to chain BENCH-FWD-<tag> holding only ACCEPT
  kernel+iptables      the same, E non-matching DROP rules before that ACCEPT
The ACCEPT keeps the rest of FORWARD (other users' rules on this machine) out of both.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import Cleanup, Spread, log, ratios, run, table
from bench.datapath import (IPERF_PORT, SOCKPERF_PORT, Pair, Placement, iperf, node_pair, routed_netns,
                            sockperf, start_servers)
from bench.policy_wire import PolicyBus, allow_from, cnp, entry_packets, pod_info, policy_entries

TRAFFIC_CIDR = "10.234.0.0/16"
KERNEL_NET = "10.235.0.0/24"
KERNEL_IPS = ("10.235.0.2", "10.235.0.3")
FILLER_PORT = 20000            # filler entries: client -> TCP FILLER_PORT, FILLER_PORT + 1, ...
PORTS_PER_RULE = 100
FILLER_SOURCES = ipaddress.IPv4Address("198.18.0.0")   # RFC 2544 benchmarking range: never a pod
POLICY_NAME = "bench-entries"
TARGET = 0.97                  # capillary+entries / capillary, TCP 1 stream
VARIANTS = ("capillary", "capillary+entries", "kernel", "kernel+iptables")
RATIOS = {"capillary+entries / capillary": ("capillary+entries", "capillary"),
          "kernel+iptables / kernel": ("kernel+iptables", "kernel"),
          "kernel+iptables / capillary+entries": ("kernel+iptables", "capillary+entries")}
METRICS = {"gbps": "TCP 1 stream (Gbit/s)", "p50_us": "latency p50 (us)", "p99_us": "latency p99 (us)"}


@dataclass(frozen=True)
class Sample:
    gbps: float
    retransmits: int
    p50_us: float | None
    p99_us: float | None
    policy_lookups: int | None     # hits on the server's entries for the bench ports (capillary)


def entries_policy(count: int) -> dict:
    """COUNT allow entries in bench/server's ingress, the bench ports among them."""
    filler = list(range(FILLER_PORT, FILLER_PORT + count - 2))
    rules = [allow_from({"app": "client"}, [IPERF_PORT, SOCKPERF_PORT])]
    rules += [allow_from({"app": "client"}, filler[i:i + PORTS_PER_RULE]) for i in range(0, len(filler), PORTS_PER_RULE)]
    return cnp(POLICY_NAME, "bench", {"app": "server"}, rules)


class PolicyToggle:
    """The entries policy on or off, switched over NATS; every switch is timed."""

    def __init__(self, pair: Pair, count: int) -> None:
        self.node, self.document = pair.node, entries_policy(count)
        pods = self.node.pods()
        self.server, self.client = pod_info(pods, "bench/server"), pod_info(pods, "bench/client")
        self.on = False
        self.applies: list[dict] = []
        self.deletes_ms: list[float] = []
        self.server_entries = 0

    def set(self, on: bool) -> None:
        if on != self.on:
            asyncio.run(self._switch(on))
            self.on = on
            if on and not self.server_entries:
                self.server_entries = policy_entries(self.node)["by_endpoint"][self.server.endpoint_id]

    async def _switch(self, on: bool) -> None:
        bus = await PolicyBus.connect(self.node)
        try:
            began = time.monotonic()
            result = await (bus.apply(self.document) if on else bus.delete(POLICY_NAME, "bench"))
            ms = (time.monotonic() - began) * 1000
        finally:
            await bus.close()
        if on:
            self.applies.append({"ms": ms, "written": result.get("written"), "revision": result.get("revision")})
        else:
            self.deletes_ms.append(ms)

    def lookups(self) -> int:
        return sum(entry_packets(self.node, self.server.endpoint_id, self.client.identity, port) or 0
                   for port in (IPERF_PORT, SOCKPERF_PORT))


class Chain:
    """Chain BENCH-FWD-<tag>, jumped to from FORWARD for KERNEL_NET only: COUNT
    non-matching DROP rules then ACCEPT, or the ACCEPT alone. Removed by CLEANUP."""

    def __init__(self, cleanup: Cleanup, tag: str, count: int) -> None:
        self.name, self.count = f"BENCH-FWD-{tag}", count
        self.match = ["-s", KERNEL_NET, "-d", KERNEL_NET, "-j", self.name]
        run(["iptables", "-w", "-N", self.name])
        cleanup.push(f"iptables chain {self.name}", self._remove)
        self.loads_ms: list[float] = []
        self.full = True                                   # forces the first set(False) to load
        self.set(False)
        run(["iptables", "-w", "-I", "FORWARD", "1", *self.match])
        cleanup.push(f"iptables jump to {self.name}", lambda: run(["iptables", "-w", "-D", "FORWARD", *self.match]))

    def _remove(self) -> None:
        run(["iptables", "-w", "-F", self.name])
        run(["iptables", "-w", "-X", self.name])

    def set(self, full: bool) -> None:
        if full == self.full:
            return
        lines = ["*filter", f"-F {self.name}"]
        if full:
            lines += [f"-A {self.name} -s {FILLER_SOURCES + i}/32 -j DROP" for i in range(self.count)]
        lines += [f"-A {self.name} -j ACCEPT", "COMMIT", ""]
        began = time.monotonic()
        proc = subprocess.run(["iptables-restore", "-w", "--noflush"], input="\n".join(lines), text=True,
                              capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"iptables-restore exited {proc.returncode}: {proc.stderr.strip()}")
        if full:
            self.loads_ms.append((time.monotonic() - began) * 1000)
        self.full = full


@dataclass
class TrafficSetup:
    cpus: Placement
    entries: int
    policy: PolicyToggle
    chain: Chain
    pairs: dict[str, Pair] = field(default_factory=dict)

    @classmethod
    def create(cls, cleanup: Cleanup, workdir: Path, cpus: Placement, entries: int, tag: str) -> "TrafficSetup":
        log(f"figures 2-3: node on {TRAFFIC_CIDR}, kernel-routed netns on {KERNEL_NET}, chain BENCH-FWD-{tag}")
        capillary = node_pair(cleanup, workdir, TRAFFIC_CIDR, "t", "redirect")
        forwarding = Path("/proc/sys/net/ipv4/ip_forward")
        if forwarding.read_text().strip() != "1":
            log("turning on net.ipv4.ip_forward")           # left on, as datapath.py does
            forwarding.write_text("1")
        kernel = Pair("kernel", routed_netns(cleanup, tag, "a", KERNEL_IPS[0]),
                      routed_netns(cleanup, tag, "b", KERNEL_IPS[1]), KERNEL_IPS[1])
        chain = Chain(cleanup, tag, entries)
        for pair in (capillary, kernel):
            start_servers(cleanup, pair, cpus)
        setup = cls(cpus, entries, PolicyToggle(capillary, entries), chain)
        setup.pairs = {"capillary": capillary, "capillary+entries": capillary,
                       "kernel": kernel, "kernel+iptables": kernel}
        return setup

    def enter(self, variant: str) -> None:
        self.policy.set(variant == "capillary+entries")
        self.chain.set(variant == "kernel+iptables")

    def measure(self, variant: str, seconds: int, latency_seconds: int) -> Sample:
        pair = self.pairs[variant]
        counted = variant == "capillary+entries"
        before = self.policy.lookups() if counted else 0
        gbps, retransmits = iperf(pair, self.cpus, seconds, 1)
        lat = sockperf(pair, self.cpus, latency_seconds) if latency_seconds else {}
        lookups = self.policy.lookups() - before if counted else None
        return Sample(gbps, retransmits, lat.get("p50_us"), lat.get("p99_us"), lookups)

    def record(self, rounds: list[dict]) -> dict:
        return {"entries": self.entries, "server_ingress_entries": self.policy.server_entries,
                "iptables_rules": self.chain.count, "policy_applies": self.policy.applies,
                "policy_deletes_ms": self.policy.deletes_ms, "iptables_loads_ms": self.chain.loads_ms,
                "rounds": [{"order": r["order"], "samples": {v: asdict(s) for v, s in r["samples"].items()}}
                           for r in rounds]}


def run_rounds(setup: TrafficSetup, rounds: int, seconds: int, latency_seconds: int) -> list[dict]:
    for variant in ("capillary", "kernel"):
        setup.enter(variant)
        iperf(setup.pairs[variant], setup.cpus, 1, 1)       # warm-up, not recorded
    done = []
    for r in range(rounds):
        order = list(VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)])
        log(f"round {r + 1}/{rounds}: {' '.join(order)}")
        samples = {}
        for variant in order:
            setup.enter(variant)
            s = samples[variant] = setup.measure(variant, seconds, latency_seconds)
            lat = f"p50 {s.p50_us:6.2f} us  p99 {s.p99_us:7.2f} us" if s.p50_us is not None else ""
            log(f"  {variant:18} {s.gbps:6.2f} Gbit/s  {lat}"
                + (f"  policy lookups {s.policy_lookups}" if s.policy_lookups is not None else ""))
        done.append({"order": order, "samples": samples})
    setup.enter("capillary")           # the policy off and the chain empty before clean-up
    return done


# ---- summary -------------------------------------------------------------------------------

def _series(rounds: list[dict], variant: str, metric: str) -> list[float]:
    return [getattr(r["samples"][variant], metric) for r in rounds]


def summarize_rounds(rounds: list[dict]) -> dict:
    metrics = [m for m in METRICS if all(v is not None for v in _series(rounds, "capillary", m))]
    out: dict = {"variants": {v: {m: Spread.of(_series(rounds, v, m)) for m in [*metrics, "retransmits"]}
                              for v in VARIANTS}}
    out["ratios"] = {name: {m: Spread.of(ratios(_series(rounds, a, m), _series(rounds, b, m))) for m in metrics}
                     for name, (a, b) in RATIOS.items()}
    lookups = _series(rounds, "capillary+entries", "policy_lookups")
    out["policy_lookups"] = Spread.of(lookups)
    gbps = out["ratios"]["capillary+entries / capillary"]["gbps"].median
    out["target"] = {"ratio": TARGET, "median": gbps, "ok": gbps >= TARGET}
    return out


def traffic_report(traffic: dict, args: argparse.Namespace) -> str:
    s, e = traffic["summary"], traffic["entries"]
    labels = {"capillary": "capillary, no policy",
              "capillary+entries": f"capillary, {e} policy entries (server ingress holds "
                                   f"{traffic['server_ingress_entries']})",
              "kernel": "kernel routing, chain with ACCEPT only",
              "kernel+iptables": f"kernel routing, {traffic['iptables_rules']} iptables rules + ACCEPT"}
    metrics = [m for m in METRICS if m in s["variants"]["capillary"]]
    absolute = table(["variant", *(METRICS[m] for m in metrics), "retransmits"],
                     [[labels[v], *(s["variants"][v][m].text() for m in metrics),
                       f"{s['variants'][v]['retransmits'].median:.0f}"] for v in VARIANTS])
    versus = table(["ratio", *(METRICS[m] for m in metrics)],
                   [[name, *(s["ratios"][name][m].text("{:.3f}") for m in metrics)] for name in RATIOS])
    t = s["target"]
    applies = Spread.of([a["ms"] for a in traffic["policy_applies"]])
    notes = [
        f"target: capillary with {e} entries >= {TARGET}x no policy (TCP 1 stream, median of per-round ratios): "
        f"{t['median']:.3f} {'ok' if t['ok'] else 'MISS'}",
        "The datapath looks policy up only for a connection's first packet; conntrack passes the rest.",
        f"  lookups on the server's bench-port entries per measurement (iperf3 control + data, sockperf): "
        f"{s['policy_lookups'].text('{:.0f}')}",
        "iptables evaluates the FORWARD rules for every packet.",
        f"policy with {e} entries over NATS: apply reply {applies.text('{:.0f}')} ms, delete reply "
        f"{Spread.of(traffic['policy_deletes_ms']).text('{:.0f}')} ms; iptables-restore of "
        f"{traffic['iptables_rules']} rules {Spread.of(traffic['iptables_loads_ms']).text('{:.0f}')} ms",
    ]
    head = (f"Figures 2-3: {e} policy entries vs {traffic['iptables_rules']} iptables rules. {args.rounds} rounds; "
            f"iperf3 {args.seconds} s, sockperf {args.latency_seconds} s; CPUs {args.cpus}; "
            f"median [min-max] over rounds")
    return "\n".join([head, "", absolute, "", "ratios: median [min-max] of per-round ratios", versus, "", *notes])
