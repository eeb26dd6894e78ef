"""Control-plane latency: from a policy published on NATS to the first packet that gets the
new verdict, on one node grown to 10, then 100, then 500 pods (--pods).

At each size N the node holds a base set of RULES_PER_POD x N rules (the previous size's
set is removed before the node grows, then the new one installed): one
CiliumNetworkPolicy per pod, each rule fromEndpoints one tier of up to 10 pods to one TCP
port, so about 10 map entries per rule (about 100 x N entries). Then K repetitions: a prober
in pod A (bench/synprobe.py, via nsenter) sends a fresh SYN to pod B's port P every 1 ms
while it is denied; the bench publishes a policy allowing A -> B:P on NATS
(capillary.policy.apply, msgpack) and takes the time from just before the publish to the
prober's first completed connection (time.monotonic in both: CLOCK_MONOTONIC is one clock
for every netns), to the reply, and to the entry showing up in the map (a thread polls it).
Then it deletes the policy the same way and waits, with the prober, until A -> B:P is
denied again. Each repetition has its own P (8000 up): the datapath's conntrack entries are
never closed or expired, so a new SYN that reuses the 4-tuple of a connection allowed
earlier skips policy. The baseline is the smallest size: each size's median against it.

With --profile, py-spy samples policyd during --profile-repeats extra repetitions at the
size nearest 100 pods (after the measured ones, so the sampling cannot disturb them).

    .venv/bin/python bench/cplane.py [--pods 10,100,500] [--repeats 40] [--profile] [--quick]

Prints a table and writes bench/results/cplane.json. Its node (10.237.0.0/16) is purged at
the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Node, Spread, bench_node, cleaned_up, environment, log, percentile,  # noqa: E402
                          start, table, wait_listening, write_results)
from bench.policy_wire import (EntryWatch, PodInfo, PolicyBus, allow_from, cnp,  # noqa: E402
                               handler_seconds, pod_info, policy_entries, replay_plan, yaml_docs)
from bench.profile import Profile, lines  # noqa: E402
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

CIDR = "10.237.0.0/16"
MAPS = {"policy": 131072}  # up to 1,000 pods x 10 rules x ~10 entries (102,000), with room to spare
NAMESPACE = "apply"
TIER = 10                  # pods per tier label; a base rule allows one tier
RULES_PER_POD = 10
BASE_PORT = 10000          # base rule j allows TCP BASE_PORT + j
PROBE_PORT = 8000          # repetition k: the measured policy allows A -> B on PROBE_PORT + k
MAX_PORTS = BASE_PORT - PROBE_PORT
PROBE_POLICY = "bench-allow"
SYNPROBE = str(Path(__file__).with_name("synprobe.py"))
TARGET_PODS, TARGET_P99_MS = 100, 20.0
PROBE_TIMEOUT = 10.0       # seconds a prober may wait for the state it is after
# policyd's /metrics endpoint, which the bench scrapes for the handler times outside the timed
# windows: its thread is not the handler's time, so the profile leaves it out.
METRICS_SERVER = ("socketserver.py",)


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


def grow(node: Node, names: list[str], have: int) -> float:
    """Pods NAMES[HAVE:] in one apply (with the namespace when HAVE is 0); the apply's seconds."""
    new = [pod_doc(NAMESPACE, n, {"app": n, "tier": tier(have + i)}) for i, n in enumerate(names[have:])]
    log(f"figure 1: {len(new)} more pods in one apply ({len(names)} in all)")
    return timed_cli(node, "apply", "-f", "-", text=docs(*([namespace_doc(NAMESPACE)] if not have else []), *new))


def size_column(node: Node, a: PodInfo, b: PodInfo, names: list[str], ports: list[int]) -> dict:
    """The base set for len(NAMES) pods, then one repetition per port of PORTS."""
    rules = RULES_PER_POD * len(names)
    policies = base_policies(names, rules)
    log(f"figure 1: {len(names)} pods, {rules} base rules in {len(policies)} policies")
    apply_s = timed_cli(node, "apply", "-f", "-", text=yaml_docs(policies))
    entries = policy_entries(node)
    log(f"figure 1: map holds {entries['total']} entries; {len(ports)} repetitions")
    reps = asyncio.run(repetitions(node, a, b, ports))
    replay = replay_plan(node, [*policies, probe_policy(a.name, b.name, ports[0])], runs=3 if len(names) <= 100 else 1)
    return {"pods": len(names), "rules": rules, "policies": len(policies), "apply_s": apply_s,
            "map_entries": entries["total"], "b_entries": entries["by_endpoint"].get(b.endpoint_id, 0),
            "probe_ports": [ports[0], ports[-1]], "plan_replay": replay, "repetitions": [asdict(r) for r in reps]}


def profiled(node: Node, a: PodInfo, b: PodInfo, ports: list[int]) -> dict:
    """py-spy on policyd during repetitions on PORTS (not counted in any figure)."""
    pid = node.service_pid("policyd")
    log(f"figure 1: profiling policyd (pid {pid}) over {len(ports)} extra repetitions")
    with Profile(pid, "policyd", exclude=METRICS_SERVER) as prof:
        reps = asyncio.run(repetitions(node, a, b, ports))
    top = prof.top()
    top["repetitions"] = len(reps)
    top["enforced_ms"] = Spread.of([r.enforced_ms for r in reps])
    return top


def apply_latency(args: argparse.Namespace, workdir: Path) -> dict:
    sizes = sorted(args.pods)
    names = pod_names(sizes[-1])
    profile_at = min(sizes, key=lambda n: abs(n - TARGET_PODS)) if args.profile else None
    ports = list(range(PROBE_PORT, PROBE_PORT + args.repeats * len(sizes) + args.profile_repeats))
    columns, profile = [], None
    with cleaned_up() as cleanup:
        node = bench_node(cleanup, workdir, CIDR, "a", sections={"maps": MAPS})
        have = 0
        for n in sizes:
            if have:
                # Pods join faster without rules in force (policyd recompiles what a new
                # identity touches): the base set goes, the pods come, the next set follows.
                log(f"figure 1: removing the {have}-pod base set")
                timed_cli(node, "delete", "-f", "-", text=yaml_docs(base_policies(names[:have], RULES_PER_POD * have)))
            pods_s = grow(node, names[:n], have)
            if not have:
                pods = node.pods()
                a, b = pod_info(pods, f"{NAMESPACE}/{names[0]}"), pod_info(pods, f"{NAMESPACE}/{names[1]}")
                server = start(cleanup, [sys.executable, SYNPROBE, "serve", *map(str, ports)], b.netns)
                wait_listening(b.netns, ports[-1], server)
            have = n
            mine, ports = ports[:args.repeats], ports[args.repeats:]
            columns.append({**size_column(node, a, b, names[:n], mine), "pods_apply_s": pods_s})
            if n == profile_at:
                profile = profiled(node, a, b, ports[:args.profile_repeats])
                ports = ports[args.profile_repeats:]
    return {"sizes": columns, "profile": profile}


# ---- statistics and report -----------------------------------------------------------------

LATENCY_ROWS = {
    "enforced_ms": "publish -> first allowed connection (ms)",
    "map_ms": "publish -> entry in the policy map (ms)",
    "reply_ms": "publish -> NATS reply with revision (ms)",
    "handler_ms": "policyd handler time, apply (ms)",
    "after_reply_ms": "first allowed connection minus reply (ms)",
    "denied_ms": "delete publish -> first unanswered SYN sent (ms)",
    "unmap_ms": "delete publish -> entry gone from the map (ms)",
    "delete_handler_ms": "policyd handler time, delete (ms)",
    "attempts": "SYNs sent per repetition (1 ms apart)",
}


def latency_summary(column: dict) -> dict:
    reps = column["repetitions"]
    series = {key: [r[key] for r in reps] for key in LATENCY_ROWS if key != "after_reply_ms"}
    series["after_reply_ms"] = [r["enforced_ms"] - r["reply_ms"] for r in reps]
    return {key: {"spread": Spread.of(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
            for key, v in series.items()}


def summarize_latency(fig: dict) -> dict:
    by_size = {str(c["pods"]): latency_summary(c) for c in fig["sizes"]}
    base = by_size[str(fig["sizes"][0]["pods"])]
    ratio = {size: {key: s[key]["spread"].median / base[key]["spread"].median
                    for key in ("enforced_ms", "map_ms", "reply_ms") if base[key]["spread"].median > 0}
             for size, s in by_size.items()}
    out = {"by_size": by_size, "ratio_of_medians_to_smallest": ratio, "target_p99_ms": TARGET_P99_MS,
           "target_pods": TARGET_PODS}
    if str(TARGET_PODS) in by_size:
        p99 = by_size[str(TARGET_PODS)]["enforced_ms"]["p99"]
        out["target"] = {"p99_ms": p99, "ok": p99 <= TARGET_P99_MS}
    return out


def latency_report(fig: dict, summary: dict) -> str:
    cols = fig["sizes"]
    head = [f"Figure 1: policy publish -> enforced; {len(cols[0]['repetitions'])} repetitions per size; "
            "median [min-max], p99 nearest-rank (under 100 samples: the largest)"]
    head += [f"  {c['pods']:4} pods (apply {c['pods_apply_s']:.1f} s): {c['rules']} rules in {c['policies']} "
             f"policies, map {c['map_entries']} entries (B {c['b_entries']}), installed in {c['apply_s']:.1f} s; "
             f"policyd plan for an apply {c['plan_replay']['apply_plan_ms']:.1f} ms, full recompile "
             f"{c['plan_replay']['full_plan_ms']:.0f} ms" for c in cols]
    rows = []
    for key, label in LATENCY_ROWS.items():
        fmt = "{:.0f}" if key == "attempts" else "{:.1f}"
        cells = [label]
        for c in cols:
            s = summary["by_size"][str(c["pods"])][key]
            cells += [s["spread"].text(fmt), fmt.format(s["p99"])]
        rows.append(cells)
    headers = ["metric"] + [h for c in cols for h in (f"{c['pods']} pods", "p99")]
    out = [*head, "", table(headers, rows)]
    if "target" in summary:
        t = summary["target"]
        out.append(f"\ntarget: p99 publish -> enforced <= {TARGET_P99_MS:.0f} ms at {TARGET_PODS} pods: "
                   f"{t['p99_ms']:.1f} ms {'ok' if t['ok'] else 'MISS'}")
    if fig.get("profile"):
        p = fig["profile"]
        out += [f"\npy-spy on policyd over {p['repetitions']} extra repetitions ({p['samples']} samples, "
                f"enforced {p['enforced_ms'].text('{:.1f}')} ms), functions by own time:", *lines(p, "self")]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=lambda t: [int(v) for v in t.split(",")],
                        help="pod counts, comma-separated, ascending (default 10,100,500; quick 10,30)")
    parser.add_argument("--repeats", type=int, help="apply/delete repetitions per size (default 40; quick 6)")
    parser.add_argument("--profile", action="store_true", help="py-spy on policyd, extra repetitions")
    parser.add_argument("--profile-repeats", type=int, help="repetitions profiled (default 20; quick 5)")
    parser.add_argument("--quick", action="store_true", help="smaller and fewer")
    args = parser.parse_args(argv)
    args.pods = args.pods or ([10, 30] if args.quick else [10, 100, 500])
    args.repeats = args.repeats or (5 if args.quick else 40)
    args.profile_repeats = args.profile_repeats or (5 if args.quick else 20)
    if min(args.pods) < 2 or args.repeats < 1:
        parser.error("at least 2 pods per size and 1 repetition")
    if args.repeats * len(args.pods) + args.profile_repeats > MAX_PORTS:
        parser.error(f"too many repetitions: one probe port each, {MAX_PORTS} ports")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capillary-bench-cplane-") as tmp:
        fig = apply_latency(args, Path(tmp) / "node")
    fig["summary"] = summarize_latency(fig)
    print(latency_report(fig, fig["summary"]))
    path = write_results("cplane", {"benchmark": "cplane", "environment": environment(),
                                    "parameters": {**vars(args), "rules_per_pod": RULES_PER_POD, "maps": MAPS},
                                    **fig, "wall_seconds": round(time.monotonic() - began, 1)})
    print(f"\nwall time {round(time.monotonic() - began, 1)} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
