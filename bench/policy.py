"""Policy on one node: how fast a policy takes effect, and what 10,000 rules cost traffic.

Three figures, each from one run, each against a baseline measured in the same run:
  1 apply -> enforced   N pods (one apply), R base rules in one CiliumNetworkPolicy per
                        pod (each rule: fromEndpoints one tier of up to 10 pods, one TCP
                        port, so about 10 map entries per rule). K times: a prober in pod A
                        (bench/synprobe.py, via nsenter) sends a fresh SYN to pod B's port P
                        every 1 ms while it is denied; the bench publishes a policy allowing
                        A -> B:P on NATS (capillary.policy.apply, msgpack) and takes the time
                        from just before the publish to the prober's first completed
                        connection (time.monotonic in both: CLOCK_MONOTONIC is one clock for
                        every netns), and to the reply. Then it deletes the policy the same
                        way and waits, with the prober, until A -> B:P is denied again.
  2 policy entries      two pods (iperf3 + sockperf server in B), rounds alternating between
                        no policy and a policy that puts E entries (default 10,000) in B's
                        ingress and still allows A -> B on the bench ports.
  3 iptables rules      the same traffic between two kernel-routed netns (as datapath.py's
                        kernel variant), through a chain of E non-matching rules jumped to
                        from FORWARD, against the same chain empty. Measured in the same
                        rounds as figure 2.

    .venv/bin/python bench/policy.py [--pods 100] [--rules 1000] [--repeats 30]
                                     [--entries 10000] [--rounds 5] [--seconds 5] [--quick]

Prints tables and writes bench/results/policy.json. Everything it makes (nodes on
10.233.0.0/16 and 10.234.0.0/16, netns capb-p<tag>-k*, links vethbp<tag>*, the iptables
chain BENCH-FWD-<tag> and its jump) is removed at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Cleanup, Node, Spread, bench_node, cleaned_up, environment, log,  # noqa: E402
                          ratios, start, table, wait_listening, write_results)
from bench.datapath import PLACEMENTS, Placement  # noqa: E402
from bench.policy_traffic import TrafficSetup, run_rounds, summarize_rounds, traffic_report  # noqa: E402
from bench.policy_wire import (PolicyBus, allow_from, cnp, handler_seconds, pod_info,  # noqa: E402
                               policy_entries, yaml_docs)
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

LATENCY_CIDR = "10.233.0.0/16"
NAMESPACE = "apply"
TIER = 10                  # pods per tier label; a base rule allows one tier
BASE_PORT = 10000          # base rule j allows TCP BASE_PORT + j
PROBE_PORT = 8080          # A -> B on this port is what the measured policy allows
PROBE_POLICY = "bench-allow"
SYNPROBE = str(Path(__file__).with_name("synprobe.py"))
ECHO = str(Path(__file__).resolve().parents[1] / "tests" / "support" / "echo.py")
TARGET_P99_MS = 20.0
PROBE_TIMEOUT = 10.0       # seconds a prober may wait for the state it is after


@dataclass(frozen=True)
class Repetition:
    enforced_ms: float         # publish -> first connection A -> B:P completed
    first_syn_ms: float        # publish -> send of the SYN that got through
    reply_ms: float            # publish -> apply reply (with the KV revision)
    handler_ms: float          # policyd's own time for the apply (its request-duration metric)
    revision: int
    attempts: int              # SYNs the prober sent, from its start to the first success
    delete_reply_ms: float     # delete publish -> reply
    denied_ms: float           # delete publish -> send of the first SYN that got no answer
    delete_handler_ms: float


# ---- figure 1: apply -> enforced -----------------------------------------------------------

def pod_names(count: int) -> list[str]:
    return [f"pod{i:04d}" for i in range(count)]


def tier(index: int) -> str:
    return f"t{index // TIER}"


def base_policies(names: list[str], rules: int) -> list[dict]:
    """RULES rules dealt round-robin over one policy per pod: rule r goes to pod r % N as its
    rule j = r // N, allowing tier (i + j) % tiers on TCP BASE_PORT + j."""
    tiers = math.ceil(len(names) / TIER)
    per_pod: dict[int, list[dict]] = {}
    for r in range(rules):
        i, j = r % len(names), r // len(names)
        per_pod.setdefault(i, []).append(allow_from({"tier": f"t{(i + j) % tiers}"}, [BASE_PORT + j]))
    return [cnp(f"base-{names[i]}", NAMESPACE, {"app": names[i]}, ingress) for i, ingress in per_pod.items()]


def probe_policy(a: str, b: str) -> dict:
    return cnp(PROBE_POLICY, NAMESPACE, {"app": b}, [allow_from({"app": a}, [PROBE_PORT])])


async def start_prober(netns: str, want: str, ip: str) -> tuple[asyncio.subprocess.Process, float]:
    """A synprobe.py in NETNS, once it has printed "ready" (the opposite state was seen)."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", "--", sys.executable, SYNPROBE, want, ip, str(PROBE_PORT),
        "--deadline", str(PROBE_TIMEOUT), stdout=asyncio.subprocess.PIPE)
    try:
        line = await prober_line(proc)
        if line[0] != "ready":
            raise RuntimeError(f"prober ({want}) did not get ready: {' '.join(line)}")
        return proc, float(line[1])
    except BaseException:
        await stop_prober(proc)
        raise


async def prober_line(proc: asyncio.subprocess.Process) -> list[str]:
    line = await asyncio.wait_for(proc.stdout.readline(), PROBE_TIMEOUT + 5)
    return line.decode().split() or ["(no output)"]


async def stop_prober(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def one_repetition(bus: PolicyBus, node: Node, a_netns: str, b_ip: str, doc: dict) -> Repetition:
    before = handler_seconds(node)
    proc, _ = await start_prober(a_netns, "allowed", b_ip)
    try:
        t0 = time.monotonic()
        result = await bus.apply(doc)
        t_reply = time.monotonic()
        line = await prober_line(proc)
    finally:
        await stop_prober(proc)
    if line[0] != "allowed":
        raise RuntimeError(f"A -> B:{PROBE_PORT} not allowed after the apply: {' '.join(line)}")
    sent, done, attempts = float(line[1]), float(line[2]), int(line[3])
    middle = handler_seconds(node)

    proc, _ = await start_prober(a_netns, "denied", b_ip)
    try:
        t1 = time.monotonic()
        await bus.delete(PROBE_POLICY, NAMESPACE)
        t1_reply = time.monotonic()
        line = await prober_line(proc)
    finally:
        await stop_prober(proc)
    if line[0] != "denied":
        raise RuntimeError(f"A -> B:{PROBE_PORT} not denied again after the delete: {' '.join(line)}")
    after = handler_seconds(node)
    ms = 1000.0
    return Repetition(enforced_ms=(done - t0) * ms, first_syn_ms=(sent - t0) * ms, reply_ms=(t_reply - t0) * ms,
                      handler_ms=(middle["apply"] - before["apply"]) * ms, revision=int(result["revision"]),
                      attempts=attempts, delete_reply_ms=(t1_reply - t1) * ms,
                      denied_ms=(float(line[1]) - t1) * ms,
                      delete_handler_ms=(after["delete"] - middle["delete"]) * ms)


async def repetitions(node: Node, a_netns: str, b_ip: str, doc: dict, count: int) -> list[Repetition]:
    bus = await PolicyBus.connect(node)
    try:
        done = []
        for k in range(count):
            done.append(await one_repetition(bus, node, a_netns, b_ip, doc))
            r = done[-1]
            log(f"  {k + 1}/{count}: enforced {r.enforced_ms:6.2f} ms  reply {r.reply_ms:6.2f} ms  "
                f"handler {r.handler_ms:6.2f} ms  revoked {r.denied_ms:6.2f} ms")
        return done
    finally:
        await bus.close()


def timed_cli(node: Node, *args: str, text: str, timeout: float = 900) -> float:
    began = time.monotonic()
    node.cli(*args, input=text, timeout=timeout)
    return time.monotonic() - began


def apply_latency(args: argparse.Namespace, workdir: Path) -> dict:
    names = pod_names(args.pods)
    a, b = names[0], names[1]
    with cleaned_up() as cleanup:
        node = bench_node(cleanup, workdir, LATENCY_CIDR, "a")
        pods_doc = docs(namespace_doc(NAMESPACE), *(pod_doc(NAMESPACE, n, {"app": n, "tier": tier(i)})
                                                   for i, n in enumerate(names)))
        log(f"figure 1: {args.pods} pods in one apply")
        pods_s = timed_cli(node, "apply", "-f", "-", text=pods_doc)
        pods = node.pods()
        a_pod, b_pod = pod_info(pods, f"{NAMESPACE}/{a}"), pod_info(pods, f"{NAMESPACE}/{b}")
        server = start(cleanup, [sys.executable, ECHO, "serve", str(PROBE_PORT)], b_pod.netns)
        wait_listening(b_pod.netns, PROBE_PORT, server)
        policies = base_policies(names, args.rules)
        log(f"figure 1: {args.rules} base rules in {len(policies)} policies")
        base_s = timed_cli(node, "apply", "-f", "-", text=yaml_docs(policies))
        entries = policy_entries(node)
        log(f"figure 1: map holds {entries['total']} entries; {args.repeats} repetitions")
        reps = asyncio.run(repetitions(node, a_pod.netns, b_pod.ip, probe_policy(a, b), args.repeats))
        entries_after = policy_entries(node)
    return {"pods": args.pods, "rules": args.rules, "policies": len(policies), "pods_apply_s": pods_s,
            "base_apply_s": base_s, "map_entries": entries["total"], "map_entries_after": entries_after["total"],
            "b_entries": entries["by_endpoint"].get(b_pod.endpoint_id, 0), "repetitions": [asdict(r) for r in reps]}


# ---- statistics and report -----------------------------------------------------------------

def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile: with fewer than 100 values, the largest."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


LATENCY_ROWS = {
    "enforced_ms": "publish -> first allowed connection (ms)",
    "first_syn_ms": "publish -> send of the SYN that got through (ms)",
    "reply_ms": "publish -> NATS reply with revision (ms)",
    "handler_ms": "policyd handler time, apply (ms)",
    "after_reply_ms": "first allowed connection minus reply (ms)",
    "delete_reply_ms": "delete publish -> reply (ms)",
    "denied_ms": "delete publish -> first unanswered SYN sent (ms)",
    "delete_handler_ms": "policyd handler time, delete (ms)",
    "attempts": "SYNs sent per repetition (1 ms apart)",
}


def latency_summary(fig: dict) -> dict:
    reps = fig["repetitions"]
    series = {key: [r[key] for r in reps] for key in LATENCY_ROWS if key != "after_reply_ms"}
    series["after_reply_ms"] = [r["enforced_ms"] - r["reply_ms"] for r in reps]
    out = {key: {"spread": Spread.of(v), "p99": p99(v)} for key, v in series.items()}
    out["enforced_over_reply"] = Spread.of(ratios(series["enforced_ms"], series["reply_ms"]))
    out["target_p99_ms"] = TARGET_P99_MS
    out["meets_target"] = out["enforced_ms"]["p99"] <= TARGET_P99_MS
    return out


def latency_report(fig: dict, summary: dict) -> str:
    head = (f"Figure 1: policy apply -> enforced. {fig['pods']} pods (applied in {fig['pods_apply_s']:.1f} s), "
            f"{fig['rules']} base rules in {fig['policies']} CiliumNetworkPolicies (applied in "
            f"{fig['base_apply_s']:.1f} s),\npolicy map {fig['map_entries']} entries (B: {fig['b_entries']}), "
            f"{len(fig['repetitions'])} repetitions; p99 is nearest-rank (with < 100 samples: the max)")
    rows = []
    for key, label in LATENCY_ROWS.items():
        s, fmt = summary[key], "{:.0f}" if key == "attempts" else "{:.2f}"
        rows.append([label, fmt.format(s["spread"].median), fmt.format(s["p99"]), fmt.format(s["spread"].min),
                     fmt.format(s["spread"].max)])
    ratio = summary["enforced_over_reply"]
    verdict = "ok" if summary["meets_target"] else "MISS"
    return "\n".join([head, "", table(["metric", "median", "p99", "min", "max"], rows), "",
                      f"enforced / reply latency, per repetition: {ratio.text('{:.3f}')} (median [min-max]); "
                      f"baseline = the NATS reply of the same request",
                      f"target p99 enforced <= {TARGET_P99_MS:.0f} ms at {fig['pods']} pods: "
                      f"{summary['enforced_ms']['p99']:.2f} ms {verdict}"])


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, help="pods for figure 1 (default 100; quick 20)")
    parser.add_argument("--rules", type=int, help="base rules for figure 1 (default 1000; quick 200)")
    parser.add_argument("--repeats", type=int, help="apply/delete repetitions (default 30; quick 10)")
    parser.add_argument("--entries", type=int, help="policy entries / iptables rules, figures 2-3 "
                                                    "(default 10000; quick 10000)")
    parser.add_argument("--rounds", type=int, help="rounds, every variant once per round (default 5; quick 2)")
    parser.add_argument("--seconds", type=int, help="length of each iperf3 run (default 5; quick 2)")
    parser.add_argument("--latency-seconds", type=int, help="length of each sockperf run (default 3; quick 1; "
                                                            "0: none)")
    parser.add_argument("--cpus", choices=PLACEMENTS, default="split", help="client/server CPUs as datapath.py")
    parser.add_argument("--only", choices=("apply", "traffic"), help="run one part only")
    parser.add_argument("--quick", action="store_true", help="smaller and fewer: under 90 s")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"pods": (100, 20), "rules": (1000, 200), "repeats": (30, 10), "entries": (10000, 10000),
                "rounds": (5, 2), "seconds": (5, 2), "latency_seconds": (3, 1)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.pods < 2 or args.rules < 2 or min(args.repeats, args.entries, args.rounds, args.seconds) < 1 \
            or args.latency_seconds < 0:
        parser.error("need at least 2 pods and 2 rules, and positive counts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    results: dict = {"benchmark": "policy", "environment": environment(),
                     "parameters": {k: v for k, v in vars(args).items()}}
    reports = []
    with tempfile.TemporaryDirectory(prefix="capillary-bench-policy-") as tmp:
        if args.only in (None, "apply"):
            fig = apply_latency(args, Path(tmp) / "apply")
            fig["summary"] = latency_summary(fig)
            results["apply_latency"] = fig
            reports.append(latency_report(fig, fig["summary"]))
            print(reports[-1] + "\n", flush=True)
        if args.only in (None, "traffic"):
            cpus = Placement(*PLACEMENTS[args.cpus])
            with cleaned_up() as cleanup:
                setup = TrafficSetup.create(cleanup, Path(tmp) / "traffic", cpus, args.entries,
                                            "p" + secrets.token_hex(2))
                rounds = run_rounds(setup, args.rounds, args.seconds, args.latency_seconds)
                traffic = setup.record(rounds)
            traffic["summary"] = summarize_rounds(rounds)
            results["traffic"] = traffic
            reports.append(traffic_report(traffic, args))
            print(reports[-1] + "\n", flush=True)
    results["wall_seconds"] = round(time.monotonic() - began, 1)
    path = write_results("policy", results)
    print(f"wall time {results['wall_seconds']} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
