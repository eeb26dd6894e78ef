"""Policy on one node: how fast a policy takes effect, and what 10,000 rules cost traffic.

Three figures, each from one run, each against a baseline measured in the same run:
  1 apply -> enforced   N pods (one apply), then twice K repetitions: first with a baseline
                        of 2 base rules (B's ingress default-deny, the map small), then with
                        R base rules: one CiliumNetworkPolicy per pod, each rule
                        fromEndpoints one tier of up to 10 pods to one TCP port, so about 10
                        map entries per rule. A repetition: a prober in pod A
                        (bench/synprobe.py, via nsenter) sends a fresh SYN to pod B's port P
                        every 1 ms while it is denied; the bench publishes a policy allowing
                        A -> B:P on NATS (capillary.policy.apply, msgpack) and takes the time
                        from just before the publish to the prober's first completed
                        connection (time.monotonic in both: CLOCK_MONOTONIC is one clock for
                        every netns), to the reply, and to the entry showing up in the map (a
                        thread polls it). Then it deletes the policy the same way and waits,
                        with the prober, until A -> B:P is denied again. Each repetition has
                        its own P (8000 up): the datapath's conntrack entries are never
                        closed or expired, so a new SYN that reuses the 4-tuple of a
                        connection allowed earlier skips policy (seen here: after a delete, a
                        reused source port still connected).
  2 policy entries      two pods (iperf3 + sockperf server in B), rounds alternating between
                        no policy and a policy that puts E entries (default 10,000) in B's
                        ingress and still allows A -> B on the bench ports.
  3 iptables rules      the same traffic between two kernel-routed netns (as datapath.py's
                        kernel variant), through a chain of E non-matching rules jumped to
                        from FORWARD, against the same chain empty. Measured in the same
                        rounds as figure 2 (bench/policy_traffic.py).

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

from bench.common import (Node, Spread, bench_node, cleaned_up, environment, log,  # noqa: E402
                          start, table, wait_listening, write_results)
from bench.datapath import PLACEMENTS, Placement  # noqa: E402
from bench.policy_traffic import TrafficSetup, run_rounds, summarize_rounds, traffic_report  # noqa: E402
from bench.policy_wire import (EntryWatch, PodInfo, PolicyBus, allow_from, cnp,  # noqa: E402
                               handler_seconds, pod_info, policy_entries, replay_plan, yaml_docs)
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

LATENCY_CIDR = "10.233.0.0/16"
NAMESPACE = "apply"
TIER = 10                  # pods per tier label; a base rule allows one tier
BASE_PORT = 10000          # base rule j allows TCP BASE_PORT + j
PROBE_PORT = 8000          # repetition k: the measured policy allows A -> B on PROBE_PORT + k
MAX_REPEATS = (BASE_PORT - PROBE_PORT) // 2     # two phases, one port per repetition
BASELINE_RULES = 2         # one rule for A, one for B: B's ingress is default-deny, the map small
PROBE_POLICY = "bench-allow"
SYNPROBE = str(Path(__file__).with_name("synprobe.py"))
TARGET_P99_MS = 20.0
PROBE_TIMEOUT = 10.0       # seconds a prober may wait for the state it is after


@dataclass(frozen=True)
class Repetition:
    enforced_ms: float         # publish -> first connection A -> B:P completed
    first_syn_ms: float        # publish -> send of the SYN that got through
    map_ms: float              # publish -> the entry is in the policy map (polled every 0.5 ms)
    reply_ms: float            # publish -> apply reply (with the KV revision)
    handler_ms: float          # policyd's own time for the apply (its request-duration metric)
    revision: int
    attempts: int              # SYNs the prober sent, from its start to the first success
    unmap_ms: float            # delete publish -> the entry is gone from the map
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


def probe_policy(a: str, b: str, port: int) -> dict:
    return cnp(PROBE_POLICY, NAMESPACE, {"app": b}, [allow_from({"app": a}, [port])])


async def start_prober(netns: str, want: str, ip: str, port: int) -> asyncio.subprocess.Process:
    """A synprobe.py in NETNS, once it has printed "ready" (the opposite state was seen)."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", "--", sys.executable, SYNPROBE, want, ip, str(port),
        "--deadline", str(PROBE_TIMEOUT), stdout=asyncio.subprocess.PIPE)
    try:
        line = await prober_line(proc)
        if line[0] != "ready":
            raise RuntimeError(f"prober ({want}) did not get ready: {' '.join(line)}")
        return proc
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


async def timed_change(bus: PolicyBus, node: Node, a: PodInfo, b: PodInfo, port: int, doc: dict | None) -> dict:
    """Apply DOC (None: delete the probe policy) while a prober waits in A for B:PORT to
    flip and a thread watches the map entry; monotonic times of each step, from t0."""
    want = "allowed" if doc else "denied"
    before = handler_seconds(node)
    proc = await start_prober(a.netns, want, b.ip, port)
    watch = EntryWatch(node, b.endpoint_id, a.identity, port, present=doc is not None)
    try:
        t0 = time.monotonic()
        result = await (bus.apply(doc) if doc else bus.delete(PROBE_POLICY, NAMESPACE))
        reply = time.monotonic()
        line = await prober_line(proc)
        in_map = watch.wait()
    finally:
        watch.close()
        await stop_prober(proc)
    if line[0] != want:
        raise RuntimeError(f"A -> B:{port} not {want} after the {'apply' if doc else 'delete'}: {' '.join(line)}")
    request = "apply" if doc else "delete"
    # "allowed SENT DONE N" / "denied SENT N": a denial is known at the send of the unanswered SYN
    sent, done = float(line[1]), float(line[2] if doc else line[1])
    return {"t0": t0, "reply": reply, "map": in_map, "sent": sent, "done": done, "attempts": int(line[-1]),
            "handler_s": handler_seconds(node)[request] - before[request], "revision": result.get("revision", 0)}


async def one_repetition(bus: PolicyBus, node: Node, a: PodInfo, b: PodInfo, port: int) -> Repetition:
    up = await timed_change(bus, node, a, b, port, probe_policy(a.name, b.name, port))
    down = await timed_change(bus, node, a, b, port, None)
    ms = 1000.0
    return Repetition(enforced_ms=(up["done"] - up["t0"]) * ms, first_syn_ms=(up["sent"] - up["t0"]) * ms,
                      map_ms=(up["map"] - up["t0"]) * ms, reply_ms=(up["reply"] - up["t0"]) * ms,
                      handler_ms=up["handler_s"] * ms, revision=int(up["revision"]), attempts=up["attempts"],
                      unmap_ms=(down["map"] - down["t0"]) * ms, delete_reply_ms=(down["reply"] - down["t0"]) * ms,
                      denied_ms=(down["sent"] - down["t0"]) * ms, delete_handler_ms=down["handler_s"] * ms)


async def repetitions(node: Node, a: PodInfo, b: PodInfo, ports: list[int]) -> list[Repetition]:
    bus = await PolicyBus.connect(node)
    try:
        done = []
        for k, port in enumerate(ports):
            done.append(await one_repetition(bus, node, a, b, port))
            r = done[-1]
            log(f"  {k + 1}/{len(ports)}: enforced {r.enforced_ms:6.1f} ms  in map {r.map_ms:6.1f} ms  "
                f"reply {r.reply_ms:6.1f} ms  handler {r.handler_ms:6.1f} ms | revoked {r.denied_ms:6.1f} ms  "
                f"gone from map {r.unmap_ms:6.1f} ms  reply {r.delete_reply_ms:6.1f} ms")
        return done
    finally:
        await bus.close()


def timed_cli(node: Node, *args: str, text: str, timeout: float = 900) -> float:
    began = time.monotonic()
    node.cli(*args, input=text, timeout=timeout)
    return time.monotonic() - began


def phase(node: Node, a: PodInfo, b: PodInfo, names: list[str], rules: int, ports: list[int]) -> dict:
    """Install the base set with RULES rules (replacing the previous one), then one
    repetition per port of PORTS."""
    policies = base_policies(names, rules)
    log(f"figure 1: {rules} base rules in {len(policies)} policies")
    apply_s = timed_cli(node, "apply", "-f", "-", text=yaml_docs(policies))
    entries = policy_entries(node)
    log(f"figure 1: map holds {entries['total']} entries; {len(ports)} repetitions")
    reps = asyncio.run(repetitions(node, a, b, ports))
    replay = replay_plan(node, [*policies, probe_policy(a.name, b.name, ports[0])])
    return {"rules": rules, "policies": len(policies), "apply_s": apply_s, "map_entries": entries["total"],
            "b_entries": entries["by_endpoint"].get(b.endpoint_id, 0), "probe_ports": [ports[0], ports[-1]],
            "plan_replay": replay, "repetitions": [asdict(r) for r in reps]}


def apply_latency(args: argparse.Namespace, workdir: Path) -> dict:
    names = pod_names(args.pods)
    ports = [PROBE_PORT + k for k in range(2 * args.repeats)]
    with cleaned_up() as cleanup:
        node = bench_node(cleanup, workdir, LATENCY_CIDR, "a")
        pods_doc = docs(namespace_doc(NAMESPACE), *(pod_doc(NAMESPACE, n, {"app": n, "tier": tier(i)})
                                                   for i, n in enumerate(names)))
        log(f"figure 1: {args.pods} pods in one apply")
        pods_s = timed_cli(node, "apply", "-f", "-", text=pods_doc)
        pods = node.pods()
        a, b = pod_info(pods, f"{NAMESPACE}/{names[0]}"), pod_info(pods, f"{NAMESPACE}/{names[1]}")
        server = start(cleanup, [sys.executable, SYNPROBE, "serve", *map(str, ports)], b.netns)
        wait_listening(b.netns, ports[-1], server)
        baseline = phase(node, a, b, names, BASELINE_RULES, ports[:args.repeats])
        full = phase(node, a, b, names, args.rules, ports[args.repeats:])
    return {"pods": args.pods, "pods_apply_s": pods_s, "baseline": baseline, "full": full}


# ---- statistics and report -----------------------------------------------------------------

def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile: with fewer than 100 values, the largest."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


LATENCY_ROWS = {
    "enforced_ms": "publish -> first allowed connection (ms)",
    "first_syn_ms": "publish -> send of the SYN that got through (ms)",
    "map_ms": "publish -> entry in the policy map (ms)",
    "reply_ms": "publish -> NATS reply with revision (ms)",
    "handler_ms": "policyd handler time, apply (ms)",
    "after_reply_ms": "first allowed connection minus reply (ms)",
    "delete_reply_ms": "delete publish -> reply (ms)",
    "unmap_ms": "delete publish -> entry gone from the map (ms)",
    "denied_ms": "delete publish -> first unanswered SYN sent (ms)",
    "delete_handler_ms": "policyd handler time, delete (ms)",
    "attempts": "SYNs sent per repetition (1 ms apart)",
}


def latency_summary(part: dict) -> dict:
    reps = part["repetitions"]
    series = {key: [r[key] for r in reps] for key in LATENCY_ROWS if key != "after_reply_ms"}
    series["after_reply_ms"] = [r["enforced_ms"] - r["reply_ms"] for r in reps]
    return {key: {"spread": Spread.of(v), "p99": p99(v)} for key, v in series.items()}


def summarize_latency(fig: dict) -> dict:
    base, full = latency_summary(fig["baseline"]), latency_summary(fig["full"])
    ratio = {key: full[key]["spread"].median / base[key]["spread"].median
             for key in LATENCY_ROWS if key != "after_reply_ms" and base[key]["spread"].median > 0}
    return {"baseline": base, "full": full, "ratio_of_medians": ratio, "target_p99_ms": TARGET_P99_MS,
            "meets_target": full["enforced_ms"]["p99"] <= TARGET_P99_MS}


def latency_report(fig: dict, summary: dict) -> str:
    base, full = fig["baseline"], fig["full"]
    head = (f"Figure 1: policy apply -> enforced, {fig['pods']} pods (one apply: {fig['pods_apply_s']:.1f} s). "
            f"{len(full['repetitions'])} repetitions per column; p99 is nearest-rank (< 100 samples: the max)\n"
            f"  baseline: {base['rules']} rules in {base['policies']} policies, map {base['map_entries']} entries "
            f"(B {base['b_entries']}), installed in {base['apply_s']:.1f} s\n"
            f"  full:     {full['rules']} rules in {full['policies']} policies, map {full['map_entries']} entries "
            f"(B {full['b_entries']}), installed in {full['apply_s']:.1f} s (CLI, one document each)")
    rows = []
    for key, label in LATENCY_ROWS.items():
        fmt = "{:.0f}" if key == "attempts" else "{:.1f}"
        cells = [label]
        for part in ("baseline", "full"):
            s = summary[part][key]
            cells += [s["spread"].text(fmt), fmt.format(s["p99"])]
        ratio = summary["ratio_of_medians"].get(key)
        cells.append("-" if ratio is None else f"{ratio:.1f}")
        rows.append(cells)
    verdict = "ok" if summary["meets_target"] else "MISS"
    plans = [f"  {name:8}  plan for an apply {r['apply_plan_ms']:5.1f} ms; a full recompile of {r['endpoints']} "
             f"endpoints x {r['policies']} policies {r['full_plan_ms']:.0f} ms; reading the {r['entries']} map "
             f"entries (once, at start-up) {r['map_read_ms']:.0f} ms"
             for name, r in (("baseline", base["plan_replay"]), ("full", full["plan_replay"]))]
    return "\n".join([
        head, "",
        table(["metric", "baseline median [min-max]", "p99", f"{full['rules']} rules median [min-max]", "p99",
               "full/base"], rows), "",
        f"target: p99 publish -> enforced <= {TARGET_P99_MS:.0f} ms at {fig['pods']} pods, {full['rules']} rules: "
        f"{summary['full']['enforced_ms']['p99']:.1f} ms {verdict}",
        "where policyd's time goes (its Enforcer.plan replayed in this process on the live map, read only, "
        "median of 3):", *plans,
        "  an apply or delete plans once (recompiling the endpoints the policy selects), checks capacity, "
        "writes the diff, then stores the policy in KV (fsync) and replies"])


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, help="pods for figure 1 (default 100; quick 20)")
    parser.add_argument("--rules", type=int, help="base rules for figure 1 (default 1000; quick 200)")
    parser.add_argument("--repeats", type=int, help="apply/delete repetitions per column (default 30; quick 8)")
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
    defaults = {"pods": (100, 20), "rules": (1000, 200), "repeats": (30, 8), "entries": (10000, 10000),
                "rounds": (5, 2), "seconds": (5, 2), "latency_seconds": (3, 1)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.pods < 2 or args.rules < 2 or min(args.repeats, args.entries, args.rounds, args.seconds) < 1 \
            or args.latency_seconds < 0:
        parser.error("need at least 2 pods and 2 rules, and positive counts")
    if args.repeats > MAX_REPEATS:
        parser.error(f"--repeats: at most {MAX_REPEATS} (one probe port each)")
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
            fig["summary"] = summarize_latency(fig)
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
