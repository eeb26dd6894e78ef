"""Pod-to-pod throughput and latency on one node: capillary against the kernel's own paths.

Five variants, measured in the same run, in alternating rounds (the order rotates each round):
  redirect    capillary node in datapath.mode redirect (bpf_redirect_peer), two pods
  host-stack  a second capillary node, running at the same time, in host-stack mode, two pods
  floor       the kernel variant's set-up with bench/bpf/floor.c on both host veths: parse, one
              hash lookup, MAC rewrite, bpf_redirect_peer (bench/floor.py); what any
              redirect_peer datapath costs at least
  kernel      plain kernel routing, no BPF: two netns with a veth to the host each, /32 host
              routes, default via 169.254.1.1 onlink, proxy_arp on the host veths
  veth        one veth pair straight between two netns (no routing: the limit for veths)
Metrics: iperf3 TCP with 1 and with 4 streams, sockperf TCP ping-pong: request/response rate
(round trips per second, one message in flight) and latency (p50, p99; sockperf reports half
the round trip), iperf3 UDP with 64-byte payloads in 4 flows, unlimited rate (packets/s the
server received), and, for the variants with BPF, the kernel's run-time statistics of the
program on the sender's host veth (from_container, or the floor): ns per packet during the
ping-pong, the 1-stream bulk TCP and the UDP runs (statistics on for the whole run; what they
add themselves is measured and printed). Each variant is compared with `veth`, `kernel` and
`floor` through the median over rounds of the per-round ratio, and the rounds it took for
that median to settle within +-5% are reported (see `settled`).

Client and server are pinned to CPUs (--cpus): on this 2-vCPU VM a ping-pong between two
CPUs takes ~27 us and on one CPU ~7 us, and unpinned runs flip between the two, which
swamps any difference between datapaths. "split" (default) pins the client to CPU 0 and
the server to CPU 1, "same" both to CPU 1, "none" leaves placement to the scheduler.

    .venv/bin/python bench/datapath.py [--rounds 5] [--seconds 2] [--quick] [--cpus split|same|none]
                                       [--cc cubic|bbr|default]

Prints tables and writes bench/results/datapath.json. Everything it makes (two nodes on
10.230.0.0/16 and 10.231.0.0/16, netns capb-<tag>-*, links vethb<tag>*, servers) is removed
at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Cleanup, Node, Spread, add_netns, bench_node, cleaned_up, environment, log,  # noqa: E402
                          ratios, run, table, write_results)
from bench.floor import Side, attach_floor, ns_per_run, run_time_stats, snapshot, stats_overhead, xlated_counts  # noqa: E402
from bench.profile import perf_top  # noqa: E402
from bench.traffic import (IPERF_PORT, SOCKPERF_PORT, Pair, Placement, add_cc_argument, check_cc,  # noqa: E402,F401
                           congestion, iperf, sockperf, start_servers, udp)
from services.datapath import bpfsys  # noqa: E402
from services.datapath.loader import PROGRAMS_DIR  # noqa: E402
from services.datapath.maps.metrics import MetricsMap  # noqa: E402
from services.datapath.numbers import METRIC_EGRESS, REASON_NAMES  # noqa: E402
from services.endpointd.plumbing import FROM_CONTAINER, TO_CONTAINER  # noqa: E402
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

REDIRECT_CIDR, HOST_STACK_CIDR = "10.230.0.0/16", "10.231.0.0/16"
KERNEL_IPS = ("10.232.0.2", "10.232.0.3")        # /32s routed by the host
VETH_IPS = ("10.232.1.2", "10.232.1.3")          # one /24 on the direct pair, never on the host
FLOOR_IPS = ("10.232.2.2", "10.232.2.3")         # /32s routed by the host, delivered by the floor
T = TypeVar("T")
GATEWAY = "169.254.1.1"
VARIANTS = ("redirect", "host-stack", "floor", "kernel", "veth")
BASELINES = ("veth", "kernel", "floor")
PROFILED = ("redirect", "veth")
TARGETS = {"gbps_1": 0.95, "gbps_4": 0.95, "p50_us": 1.05}   # ratio to `veth`: >= for Gbit/s, <= for us
# Ratio to `floor`: >= for rates, <= for times.
FLOOR_TARGETS = {"ns_rr": 1.5, "ns_bulk": 1.5, "udp_pps": 0.9, "p50_us": 1.02, "gbps_1": 0.98}
HIGHER_IS_BETTER = ("gbps_1", "gbps_4", "rr_per_s", "udp_pps")
SETTLED = 0.05             # +-: the half-width of a median's ~95% interval, relative to it
PLACEMENTS = {"split": ("0", "1"), "same": ("1", "1"), "none": (None, None)}   # (client CPU, server CPU)
METRICS = {"gbps_1": "TCP 1 stream (Gbit/s)", "gbps_4": "TCP 4 streams (Gbit/s)",
           "rr_per_s": "request/response (1/s)", "p50_us": "latency p50 (us)", "p99_us": "latency p99 (us)",
           "udp_pps": "UDP 64 B x4 (pkt/s)", "ns_rr": "BPF ns/pkt ping-pong", "ns_bulk": "BPF ns/pkt bulk",
           "ns_udp": "BPF ns/pkt UDP"}


@dataclass(frozen=True)
class Sample:
    gbps_1: float
    gbps_4: float
    rr_per_s: float
    p50_us: float
    p99_us: float
    avg_us: float
    retransmits_1: int
    retransmits_4: int
    sockperf_dropped: int
    udp_pps: float
    udp_sent_pps: float
    ns_rr: float           # ns/packet of the program on the sender's host veth (0: no BPF)
    ns_bulk: float
    ns_udp: float
    ns_to_container: float  # to_container over all three runs (0: it did not run)


# ---- the four variants -------------------------------------------------------------------

def node_pair(cleanup: Cleanup, workdir: Path, cidr: str, letter: str, mode: str,
              sections: dict[str, dict] | None = None) -> Pair:
    node = bench_node(cleanup, workdir, cidr, letter, mode, sections)
    node.apply(docs(namespace_doc("bench"), pod_doc("bench", "client"), pod_doc("bench", "server")))
    pods = node.pods()
    progs = Path(node.bpf_root) / PROGRAMS_DIR
    programs = {name: bpfsys.obj_get(str(progs / name)) for name in (FROM_CONTAINER, TO_CONTAINER)}
    cleanup.push(f"close {mode}'s program fds", lambda: [os.close(fd) for fd in programs.values()])
    return Pair(mode, pods["bench/client"]["spec"]["netns"], pods["bench/server"]["spec"]["netns"],
                pods["bench/server"]["status"]["podIP"], node, programs)


def routed_netns(cleanup: Cleanup, tag: str, side: str, ip: str) -> str:
    """A netns whose eth0 is a veth to the host, reached by a /32 host route."""
    name, host = f"capb-{tag}-k{side}", f"vethb{tag}k{side}"
    path = add_netns(cleanup, name)
    run(["ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name])
    cleanup.push(f"link {host}", lambda: run(["ip", "link", "del", host], check=False))
    Path(f"/proc/sys/net/ipv4/conf/{host}/proxy_arp").write_text("1")
    # Proxy ARP replies wait a random 0-0.8 s by default; the gateway must answer at once.
    Path(f"/proc/sys/net/ipv4/neigh/{host}/proxy_delay").write_text("0")
    run(["ip", "link", "set", host, "up"])
    run(["ip", "route", "add", f"{ip}/32", "dev", host])
    for argv in (["ip", "addr", "add", f"{ip}/32", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                 ["ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink"]):
        run(argv, path)
    return path


def kernel_pair(cleanup: Cleanup, tag: str) -> Pair:
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    if forwarding.read_text().strip() != "1":
        # Left on afterwards: every capillary node on this machine needs it too.
        log("turning on net.ipv4.ip_forward")
        forwarding.write_text("1")
    client = routed_netns(cleanup, tag, "a", KERNEL_IPS[0])
    server = routed_netns(cleanup, tag, "b", KERNEL_IPS[1])
    return Pair("kernel", client, server, KERNEL_IPS[1])


def floor_pair(cleanup: Cleanup, tag: str) -> Pair:
    sides = [Side(routed_netns(cleanup, tag, side, ip), f"vethb{tag}k{side}", ip) for side, ip in zip("cd", FLOOR_IPS)]
    return Pair("floor", sides[0].netns, sides[1].netns, FLOOR_IPS[1], programs=attach_floor(cleanup, *sides))


def veth_pair(cleanup: Cleanup, tag: str) -> Pair:
    names = (f"capb-{tag}-va", f"capb-{tag}-vb")
    paths = [add_netns(cleanup, name) for name in names]
    # Made inside the two netns directly; deleting either netns removes the pair.
    run(["ip", "link", "add", "eth0", "netns", names[0], "type", "veth", "peer", "name", "eth0", "netns", names[1]])
    for path, ip in zip(paths, VETH_IPS):
        run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], path)
        run(["ip", "link", "set", "eth0", "up"], path)
    return Pair("veth", paths[0], paths[1], VETH_IPS[1])


# ---- measurements ------------------------------------------------------------------------

def timed(pair: Pair, work: Callable[[], T]) -> tuple[T, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """WORK's result and the pair's programs' run-time statistics before and after it."""
    programs = pair.programs or {}
    before = snapshot(programs)
    out = work()
    return out, before, snapshot(programs)


def measure(pair: Pair, cpus: Placement, seconds: int) -> Sample:
    (gbps_1, retransmits_1), b1, a1 = timed(pair, lambda: iperf(pair, cpus, seconds, 1))
    gbps_4, retransmits_4 = iperf(pair, cpus, seconds, 4)
    lat, b2, a2 = timed(pair, lambda: sockperf(pair, cpus, seconds))
    (udp_pps, udp_sent), b3, a3 = timed(pair, lambda: udp(pair, cpus, seconds))
    main = next(iter(pair.programs or {}), None)
    ns = [ns_per_run(b, a).get(main, 0.0) for b, a in ((b2, a2), (b1, a1), (b3, a3))]
    to_container = ns_per_run(b1, a3).get(TO_CONTAINER, 0.0)
    return Sample(gbps_1, gbps_4, lat["rr_per_s"], lat["p50_us"], lat["p99_us"], lat["avg_us"], retransmits_1, retransmits_4,
                  int(lat["dropped"]), udp_pps, udp_sent, *ns, to_container)


def datapath_counters(node: Node) -> dict[str, int]:
    """The node's BPF packet counters by direction and reason (redirect-peer, to-stack, drops)."""
    counters = MetricsMap(Path(node.bpf_root))
    try:
        return {f"{'egress' if c.direction == METRIC_EGRESS else 'ingress'} {REASON_NAMES.get(c.reason, c.reason)}":
                c.packets for c in counters.nonzero()}
    finally:
        counters.close()


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def run_rounds(pairs: list[Pair], cpus: Placement, rounds: int, seconds: int,
               take: Callable[[Pair, Placement, int], Sample] = measure) -> list[dict]:
    """Every variant once per round (its Sample from TAKE), the order rotated by one each round."""
    for pair in pairs:
        iperf(pair, cpus, 1, 1)                         # warm-up, not recorded
    done = []
    for r in range(rounds):
        order = pairs[r % len(pairs):] + pairs[:r % len(pairs)]
        log(f"round {r + 1}/{rounds}: {' '.join(p.variant for p in order)}")
        samples = {}
        for pair in order:
            samples[pair.variant] = take(pair, cpus, seconds)
            s = samples[pair.variant]
            log(f"  {pair.variant:10} {s.gbps_1:6.2f} / {s.gbps_4:6.2f} Gbit/s  {s.rr_per_s:7.0f} rr/s  "
                f"p50 {s.p50_us:6.2f} us  p99 {s.p99_us:6.2f} us")
        done.append({"order": [p.variant for p in order], "samples": samples})
    return done


def profile_variants(pairs: list[Pair], cpus: Placement, seconds: int, variants: tuple[str, ...] = PROFILED) -> dict:
    """Where the kernel's time goes in one iperf3 run per variant of VARIANTS (after the rounds)."""
    out = {}
    for pair in pairs:
        if pair.variant in variants:
            log(f"perf: iperf3 through {pair.variant}")
            out[pair.variant] = perf_top(lambda: iperf(pair, cpus, seconds, 1), seconds + 1, "iperf3")
    return out


# ---- summary -----------------------------------------------------------------------------

def series(rounds: list[dict], variant: str, metric: str) -> list[float]:
    return [getattr(r["samples"][variant], metric) for r in rounds]


def settled(values: list[float]) -> int | None:
    """How many rounds it took for the median of VALUES (per-round ratios) to settle: the first
    n >= 3 from which on the half-width of its ~95% interval, 1.96 * 1.2533 * stdev / sqrt(n)
    (the standard error of a median), stays under SETTLED of the median. None: never."""
    first = None
    for n in range(3, len(values) + 1):
        head = values[:n]
        width = 1.96 * 1.2533 * statistics.stdev(head) / math.sqrt(n)
        if width <= SETTLED * abs(statistics.median(head)):
            first = first or n
        else:
            first = None
    return first


def summarize(rounds: list[dict], variants: list[str]) -> dict:
    summary = {}
    for variant in variants:
        metrics = {m: Spread.of(series(rounds, variant, m)) for m in Sample.__dataclass_fields__}
        versus, settle = {}, {}
        for base in BASELINES:
            if base not in variants:
                continue
            per_round = {m: ratios(series(rounds, variant, m), series(rounds, base, m)) for m in METRICS
                         if all(series(rounds, base, m)) and all(series(rounds, variant, m))}
            versus[base] = {m: Spread.of(r) for m, r in per_round.items()}
            settle[base] = {m: settled(r) for m, r in per_round.items()}
        summary[variant] = {"metrics": metrics, "ratio_to": versus, "rounds_to_settle": settle}
    return summary


def verdict(ratio: float, metric: str, targets: dict[str, float] = TARGETS) -> str:
    target = targets[metric]
    ok = ratio >= target if metric in HIGHER_IS_BETTER else ratio <= target
    return f"{ratio:.3f} {'ok' if ok else 'MISS'}"


def report(summary: dict, variants: list[str]) -> str:
    absolute = table(["variant", *METRICS.values(), "retransmits 1/4 (median)"],
                     [[v, *(summary[v]["metrics"][m].text() for m in METRICS),
                       f"{summary[v]['metrics']['retransmits_1'].median:.0f} / "
                       f"{summary[v]['metrics']['retransmits_4'].median:.0f}"] for v in variants])
    parts = ["median [min-max] over rounds", absolute]
    for base in BASELINES:
        shown = [m for m in METRICS if any(m in summary[v]["ratio_to"][base] for v in variants if v != base)]
        parts += ["", f"ratio to {base}: median [min-max] of per-round ratios (rounds until within +-5%)",
                  table(["variant", *(METRICS[m] for m in shown)],
                        [[v, *(ratio_text(summary[v], base, m) for m in shown)] for v in variants if v != base])]
    measured = [v for v in variants if v not in BASELINES]
    targets = table(["variant", "1 stream >= 0.95x veth", "4 streams >= 0.95x veth", "p50 <= 1.05x veth"],
                    [[v, *(verdict(summary[v]["ratio_to"]["veth"][m].median, m) for m in TARGETS)] for v in measured])
    floor = table(["variant", *(f"{METRICS[m]} {'>=' if m in HIGHER_IS_BETTER else '<='} {t}x"
                                for m, t in FLOOR_TARGETS.items())],
                  [[v, *(verdict(summary[v]["ratio_to"]["floor"][m].median, m, FLOOR_TARGETS)
                         if m in summary[v]["ratio_to"]["floor"] else "-" for m in FLOOR_TARGETS)] for v in measured])
    return "\n".join([*parts, "", "targets (median ratio to veth)", targets, "",
                      "targets (median ratio to floor)", floor])


def ratio_text(summary: dict, base: str, metric: str) -> str:
    if metric not in summary["ratio_to"][base]:
        return "-"
    settle = summary["rounds_to_settle"][base][metric]
    return f"{summary['ratio_to'][base][metric].text('{:.3f}')} ({settle or '>n'})"


# ---- main --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds, every variant once per round (default 5; quick 1)")
    parser.add_argument("--seconds", type=int, help="length of each iperf3/sockperf run (default 2; quick 1)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--perf", action="store_true", help="then `perf record -a` during iperf3 (1 stream) through "
                                                            "redirect and through veth: the top kernel symbols")
    parser.add_argument("--cpus", choices=PLACEMENTS, default="split",
                        help="client/server CPUs: split 0/1 (default), same 1/1, none (unpinned)")
    parser.add_argument("--variants", type=lambda t: t.split(","),
                        help=f"comma-separated subset of {','.join(VARIANTS)} (default all; quick: all but "
                             "host-stack, whose node start-up the smoke test cannot afford)")
    add_cc_argument(parser)
    args = parser.parse_args(argv)
    check_cc(parser, args)
    args.variants = args.variants or [v for v in VARIANTS if not (args.quick and v == "host-stack")]
    if set(args.variants) - set(VARIANTS) or not set(BASELINES) <= set(args.variants):
        parser.error(f"--variants: from {','.join(VARIANTS)}, with both baselines ({','.join(BASELINES)})")
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds or (1 if args.quick else 2)
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    return args


def set_up(cleanup: Cleanup, tmp: Path, cpus: Placement, variants: list[str]) -> list[Pair]:
    tag = secrets.token_hex(2)
    make = {"redirect": lambda: node_pair(cleanup, tmp / "redirect", REDIRECT_CIDR, "r", "redirect"),
            "host-stack": lambda: node_pair(cleanup, tmp / "host-stack", HOST_STACK_CIDR, "h", "host-stack"),
            "floor": lambda: floor_pair(cleanup, tag),
            "kernel": lambda: kernel_pair(cleanup, tag), "veth": lambda: veth_pair(cleanup, tag)}
    pairs = [make[v]() for v in VARIANTS if v in variants]
    for pair in pairs:
        start_servers(cleanup, pair, cpus)
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = Placement(*PLACEMENTS[args.cpus])
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capillary-bench-datapath-") as tmp, cleaned_up() as cleanup:
        cc, cc_text = congestion(args.cc)
        pairs = [replace(pair, congestion=cc) for pair in set_up(cleanup, Path(tmp), cpus, args.variants)]
        nodes = {p.variant: p.node for p in pairs if p.node}
        before = {variant: datapath_counters(node) for variant, node in nodes.items()}
        insns = {p.variant: xlated_counts(p.programs) for p in pairs if p.programs}
        overhead = stats_overhead()
        with run_time_stats():
            rounds = run_rounds(pairs, cpus, args.rounds, args.seconds)
        counters = {variant: counters_delta(before[variant], datapath_counters(node))
                    for variant, node in nodes.items()}
        perf = profile_variants(pairs, cpus, args.seconds) if args.perf else None
    variants = [p.variant for p in pairs]
    summary = summarize(rounds, variants)
    print(f"{args.rounds} rounds of {args.seconds} s runs, CPUs {args.cpus} (client {cpus.client_cpu}, "
          f"server {cpus.server_cpu}), TCP congestion control {cc_text}\n")
    print(report(summary, variants))
    print(f"\nrun-time statistics add {overhead['per_run']:.0f} ns to a program run, {overhead['in_figure']:.0f} ns "
          "of it inside the ns/packet figures (an empty program's figure)")
    print("instructions after the verifier (helper calls among them): " + "; ".join(
        f"{v} {name} {c['insns']} ({c['helper_calls']})" for v, progs in insns.items() for name, c in progs.items()))
    print("\nBPF packet counters during the rounds (all pods of the node):")
    for variant, delta in counters.items():
        print(f"  {variant:10} " + (", ".join(f"{k} {v}" for k, v in sorted(delta.items())) or "none"))
    path = write_results("datapath", {
        "benchmark": "datapath", "environment": environment(),
        "parameters": {"rounds": args.rounds, "seconds": args.seconds, "variants": variants, "cpus": args.cpus,
                       "host_stack": "a second node running at the same time", "congestion": cc_text,
                       "targets_vs_veth": TARGETS},
        "rounds": [{"order": r["order"], "samples": {v: asdict(s) for v, s in r["samples"].items()}} for r in rounds],
        "summary": summary, "bpf_counters": counters, "stats_overhead_ns": overhead, "xlated": insns, "perf": perf, "wall_seconds": round(time.monotonic() - began, 1)})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
