"""Policy scale: what policy entries cost pod-to-pod traffic, against iptables rules.

Policy maps holding 0, 1k, 10k and 50k entries (--entries), against iptables holding the
same number of rules in FORWARD, in the same alternating rounds (bench/policy_traffic.py
has the variants). Each measurement: iperf3 TCP, 1 stream (its sender with cubic:
bench/traffic.py, DEFAULT_CC), and sockperf TCP ping-pong (request/response rate, p50/p99
latency). Every count is compared with its own kind at 0
(median of per-round ratios), and capillary with iptables at the same count.

    .venv/bin/python bench/policy.py [--entries 1000,10000,50000] [--rounds 4] [--seconds 2]
                                     [--latency-seconds 1] [--quick]

Prints tables and writes bench/results/policy.json. Everything it makes (a node on
10.234.0.0/16, netns capb-p<tag>-k*, links vethbp<tag>*, the iptables chain
BENCH-FWD-p<tag> and its jump) is removed at the end, also on failure or Ctrl-C.
The policy map is sized for them (maps.policy 131072).
"""
from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Spread, cleaned_up, environment, ratios, table, write_results  # noqa: E402
from bench.datapath import PLACEMENTS, Placement  # noqa: E402
from bench.policy_traffic import KINDS, MAPS, TrafficSetup, run_rounds, variant  # noqa: E402
from bench.traffic import DEFAULT_CC  # noqa: E402

METRICS = {"gbps": "TCP 1 stream (Gbit/s)", "rr_per_s": "request/response (1/s)",
           "p50_us": "latency p50 (us)", "p99_us": "latency p99 (us)"}
TARGET_COUNT, TARGET = 10000, 0.97      # capillary at 10k entries / none, TCP 1 stream


def series(rounds: list[dict], name: str, metric: str) -> list[float]:
    return [getattr(r["samples"][name], metric) for r in rounds]


def summarize(rounds: list[dict], counts: list[int]) -> dict:
    names = [variant(k, n) for k in KINDS for n in counts]
    out: dict = {"variants": {v: {m: Spread.of(series(rounds, v, m)) for m in [*METRICS, "retransmits"]}
                              for v in names}}
    pairs = {f"{variant(k, n)} / {variant(k, 0)}": (variant(k, n), variant(k, 0)) for k in KINDS for n in counts if n}
    pairs.update({f"iptables/{n} / capillary/{n}": (variant("iptables", n), variant("capillary", n))
                  for n in counts if n})
    out["ratios"] = {label: {m: Spread.of(ratios(series(rounds, a, m), series(rounds, b, m))) for m in METRICS}
                     for label, (a, b) in pairs.items()}
    key = f"capillary/{TARGET_COUNT} / capillary/0"
    if key in out["ratios"]:
        median = out["ratios"][key]["gbps"].median
        out["target"] = {"count": TARGET_COUNT, "ratio": TARGET, "median": median, "ok": median >= TARGET}
    return out


def report(traffic: dict, args: argparse.Namespace) -> str:
    s, counts = traffic["summary"], traffic["counts"]
    names = [variant(k, n) for k in KINDS for n in counts]
    held = traffic["server_ingress_entries"]
    absolute = table(["variant", "server ingress entries", *METRICS.values(), "retransmits"],
                     [[v, str(held.get(int(v.split("/")[1]), "-")) if v.startswith("capillary") else "-",
                       *(s["variants"][v][m].text("{:.0f}" if m == "rr_per_s" else "{:.2f}") for m in METRICS),
                       f"{s['variants'][v]['retransmits'].median:.0f}"] for v in names])
    versus = table(["ratio", *METRICS.values()],
                   [[label, *(r[m].text("{:.3f}") for m in METRICS)] for label, r in s["ratios"].items()])
    out = [f"Policy scale: {args.rounds} rounds; iperf3 {args.seconds} s, sockperf {args.latency_seconds} s; "
           f"CPUs {args.cpus}; median [min-max] over rounds", "", absolute, "",
           "ratios: median [min-max] of per-round ratios", versus]
    if "target" in s:
        t = s["target"]
        out.append(f"\ntarget: capillary with {t['count']} entries >= {TARGET}x no policy (TCP 1 stream): "
                   f"{t['median']:.3f} {'ok' if t['ok'] else 'MISS'}")
    switches = {n: Spread.of([x["ms"] for x in traffic["policy_switches"] if x["to"] == n]) for n in counts[1:]
                if any(x["to"] == n for x in traffic["policy_switches"])}
    loads = {n: Spread.of([x["ms"] for x in traffic["iptables_loads"] if x["rules"] == n]) for n in counts[1:]
             if any(x["rules"] == n for x in traffic["iptables_loads"])}
    out += ["", "switching in (ms, median [min-max]): " + "; ".join(
        f"{n}: policy {switches[n].text('{:.0f}')}, iptables-restore {loads[n].text('{:.0f}')}"
        for n in counts[1:] if n in switches and n in loads)]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=lambda t: [int(v) for v in t.split(",")],
                        help="entry / rule counts besides 0, comma-separated (default 1000,10000,50000; "
                             "quick 10000)")
    parser.add_argument("--rounds", type=int, help="rounds, every variant once per round (default 4; quick 1)")
    parser.add_argument("--seconds", type=int, help="length of each iperf3 run (default 2; quick 1)")
    parser.add_argument("--latency-seconds", type=int, help="length of each sockperf run (default 1; quick 1)")
    parser.add_argument("--cpus", choices=PLACEMENTS, default="split", help="client/server CPUs as datapath.py")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    args.entries = sorted(set(args.entries or ([10000] if args.quick else [1000, 10000, 50000])) - {0})
    args.rounds = args.rounds or (1 if args.quick else 4)
    args.seconds = args.seconds or (1 if args.quick else 2)
    args.latency_seconds = args.latency_seconds or 1
    if min(args.rounds, args.seconds, args.latency_seconds) < 1 or not args.entries or min(args.entries) < 3 \
            or max(args.entries) > 53000:
        parser.error("positive counts; entries between 3 and 53000 (one TCP port each above 12000)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    cpus = Placement(*PLACEMENTS[args.cpus])
    with tempfile.TemporaryDirectory(prefix="capillary-bench-policy-") as tmp, cleaned_up() as cleanup:
        setup = TrafficSetup.create(cleanup, Path(tmp) / "traffic", cpus, args.entries, "p" + secrets.token_hex(2))
        rounds = run_rounds(setup, args.rounds, args.seconds, args.latency_seconds)
        traffic = setup.record(rounds)
    traffic["summary"] = summarize(rounds, traffic["counts"])
    print(report(traffic, args))
    wall = round(time.monotonic() - began, 1)
    path = write_results("policy", {"benchmark": "policy", "environment": environment(),
                                    "parameters": {**vars(args), "maps": MAPS, "congestion": DEFAULT_CC},
                                    "traffic": traffic, "wall_seconds": wall})
    print(f"\nwall time {wall} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
