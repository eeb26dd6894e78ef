"""Footprint: memory and CPU of each service (endpointd, policyd, routed, flowd) and of
nats-server, idle and under load, on one node grown to 10, then 500 pods (--pods).

Pids come from `capillary status -o json` (the supervisor's children). Per process and window:
  VmRSS       /proc/<pid>/status, sampled every SAMPLE s: the largest (the target's figure)
  Pss, anon   /proc/<pid>/smaps_rollup at the window's end: Pss shares each shared library
              page among the processes that map it; RssAnon is the process's own heap
  CPU         utime + stime from /proc/<pid>/stat over the window, as % of one CPU
Load, for LOAD s, all at once:
  connections  bench/connload.py in pod 0 opening new TCP connections to pod 1 (32 in
               flight): a new flow each, so datapath events for flowd
  policies     a policy selecting pod 1 applied and deleted over NATS, back to back
  pods         2 pods created then deleted with the CLI, back to back
Each size's idle window is the baseline of its load window; each size is compared with the
smallest. After the measured windows of the largest size, one more load window with py-spy
on flowd and policyd (the services the load keeps busy) says where their time goes.

    .venv/bin/python bench/footprint.py [--pods 10,500] [--idle 5] [--load 10] [--quick]

Prints a table and writes bench/results/footprint.json. Its node (10.236.0.0/16) is purged
at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Cleanup, Node, Spread, bench_node, cleaned_up, environment, log, start,  # noqa: E402
                          table, wait_listening, write_results)
from bench.policy_wire import PolicyBus, allow_from, cnp, pod_info  # noqa: E402
from bench.profile import Profile  # noqa: E402
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

CIDR = "10.236.0.0/16"
NAMESPACE = "foot"
PROCESSES = ("endpointd", "policyd", "routed", "flowd", "nats")
PROFILED = ("flowd", "policyd")
SAMPLE = 0.25              # seconds between VmRSS samples
LOAD_PORT = 9000
CONNLOAD = str(Path(__file__).with_name("connload.py"))
SYNPROBE = str(Path(__file__).with_name("synprobe.py"))
TARGET_MB, TARGET_PODS = 100.0, 500
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS       # utime, stime (fields 14 and 15)


def status_kb(pid: int, *keys: str) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def pids(node: Node) -> dict[str, int]:
    children = node.status()["supervisor"]["children"]
    return {name: children[name]["pid"] for name in PROCESSES}


def window(procs: dict[str, int], seconds: float) -> dict[str, dict]:
    """Watch PROCS for SECONDS: the largest VmRSS, Pss and RssAnon at the end, CPU % of one CPU."""
    cpu0 = {n: cpu_seconds(p) for n, p in procs.items()}
    peak = {n: 0 for n in procs}
    began = time.monotonic()
    while True:
        for n, p in procs.items():
            peak[n] = max(peak[n], status_kb(p, "VmRSS")["VmRSS"])
        if time.monotonic() - began >= seconds:
            break
        time.sleep(SAMPLE)
    wall = time.monotonic() - began
    out = {}
    for n, p in procs.items():
        anon = status_kb(p, "RssAnon", "RssFile")
        out[n] = {"rss_mb": peak[n] / 1024, "pss_mb": pss_kb(p) / 1024, "anon_mb": anon["RssAnon"] / 1024,
                  "file_mb": anon["RssFile"] / 1024, "cpu_pct": 100 * (cpu_seconds(p) - cpu0[n]) / wall}
    return out


# ---- load -----------------------------------------------------------------------------------

class Load:
    """Connections, policy changes and pod churn at once, for a given time (see the docstring)."""

    def __init__(self, cleanup: Cleanup, node: Node, seconds: float) -> None:
        self.cleanup, self.node, self.seconds = cleanup, node, seconds
        pods = node.pods()
        self.a, self.b = pod_info(pods, f"{NAMESPACE}/p0000"), pod_info(pods, f"{NAMESPACE}/p0001")
        self.counts = {"connections": 0, "connect_failures": 0, "policy_changes": 0, "pod_cycles": 0}
        self.errors: list[str] = []

    def run(self, procs: dict[str, int]) -> dict[str, dict]:
        conn = start(self.cleanup, ["nsenter", f"--net={self.a.netns}", "--", sys.executable, CONNLOAD, self.b.ip,
                                 str(LOAD_PORT), str(self.seconds)])
        end = time.monotonic() + self.seconds
        workers = [threading.Thread(target=self._guard, args=(f, end), daemon=True)
                   for f in (self._policies, self._pods)]
        for w in workers:
            w.start()
        measured = window(procs, self.seconds)
        for w in workers:
            w.join(timeout=120)
        conn.wait(timeout=30)
        conn.output.seek(0)
        words = conn.output.read().decode().split()
        if words[:1] == ["done"]:
            self.counts["connections"], self.counts["connect_failures"] = int(words[1]), int(words[2])
        else:
            self.errors.append(f"connload: {' '.join(words)[-200:]}")
        return measured

    def _guard(self, work, end: float) -> None:
        try:
            work(end)
        except Exception as exc:          # the window still counts; the error is reported
            self.errors.append(f"{work.__name__}: {exc}")

    def _policies(self, end: float) -> None:
        doc = cnp("load", NAMESPACE, {"app": "p0001"}, [allow_from({"app": "p0000"}, [LOAD_PORT, 9001])])

        async def loop() -> None:
            bus = await PolicyBus.connect(self.node)
            try:
                while time.monotonic() < end:
                    await bus.apply(doc)
                    await bus.delete("load", NAMESPACE)
                    self.counts["policy_changes"] += 2
            finally:
                await bus.close()
        asyncio.run(loop())

    def _pods(self, end: float) -> None:
        text = docs(*(pod_doc(NAMESPACE, f"churn{i}") for i in range(2)))
        while time.monotonic() < end:
            self.node.cli("apply", "-f", "-", input=text, timeout=120)
            self.node.cli("delete", "-f", "-", input=text, timeout=120)
            self.counts["pod_cycles"] += 1


# ---- the run --------------------------------------------------------------------------------

def grow(node: Node, have: int, want: int) -> None:
    new = [pod_doc(NAMESPACE, f"p{i:04d}") for i in range(have, want)]
    log(f"footprint: {len(new)} more pods ({want} in all)")
    node.cli("apply", "-f", "-", input=docs(*([namespace_doc(NAMESPACE)] if not have else []), *new), timeout=900)


def profiled_load(cleanup: Cleanup, node: Node, procs: dict[str, int], seconds: float) -> dict[str, dict]:
    """py-spy on each of PROFILED during one more load window (not counted in the figures)."""
    log(f"footprint: load {seconds} s with py-spy on {', '.join(PROFILED)}")
    profiles = [Profile(procs[name], name) for name in PROFILED]
    for prof in profiles:
        prof.__enter__()
    try:
        Load(cleanup, node, seconds).run(procs)
    finally:
        for prof in profiles:
            prof.__exit__(None, None, None)
    return {prof.name: prof.top() for prof in profiles}


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[dict], dict]:
    sizes = []
    with cleaned_up() as cleanup:
        node = bench_node(cleanup, workdir, CIDR, "m")
        have = 0
        for n in args.pods:
            grow(node, have, n)
            if not have:
                b = pod_info(node.pods(), f"{NAMESPACE}/p0001")
                server = start(cleanup, [sys.executable, SYNPROBE, "serve", str(LOAD_PORT)], b.netns)
                wait_listening(b.netns, LOAD_PORT, server)
            have = n
            procs = pids(node)
            time.sleep(args.settle)
            log(f"footprint: {n} pods, idle {args.idle} s")
            idle = window(procs, args.idle)
            log(f"footprint: {n} pods, load {args.load} s")
            load = Load(cleanup, node, args.load)
            busy = load.run(procs)
            sizes.append({"pods": n, "idle": idle, "load": busy, "load_counts": load.counts,
                          "load_errors": load.errors, "restarts": pids(node) != procs})
            log(f"  load: {load.counts}" + (f" errors: {load.errors}" if load.errors else ""))
        profiles = profiled_load(cleanup, node, pids(node), args.load) if args.profile else {}
    return sizes, profiles


def summarize(sizes: list[dict]) -> dict:
    base = sizes[0]
    out: dict = {"ratio_to_smallest": {}, "load_vs_idle_cpu": {}}
    for s in sizes:
        out["ratio_to_smallest"][str(s["pods"])] = {
            p: s["load"][p]["rss_mb"] / base["load"][p]["rss_mb"] for p in PROCESSES}
        out["load_vs_idle_cpu"][str(s["pods"])] = {
            p: s["load"][p]["cpu_pct"] - s["idle"][p]["cpu_pct"] for p in PROCESSES}
    at = next((s for s in sizes if s["pods"] == TARGET_PODS), None)
    if at:
        worst = max((max(at["idle"][p]["rss_mb"], at["load"][p]["rss_mb"]), p) for p in PROCESSES)
        out["target"] = {"pods": TARGET_PODS, "mb": TARGET_MB, "largest_rss_mb": worst[0], "service": worst[1],
                         "ok": worst[0] <= TARGET_MB}
    out["cpu_load_pct"] = {str(s["pods"]): Spread.of([s["load"][p]["cpu_pct"] for p in PROCESSES]) for s in sizes}
    return out


def report(sizes: list[dict], summary: dict) -> str:
    rows = []
    for s in sizes:
        for state in ("idle", "load"):
            for p in PROCESSES:
                m = s[state][p]
                rows.append([str(s["pods"]), state, p, f"{m['rss_mb']:.1f}", f"{m['pss_mb']:.1f}",
                             f"{m['anon_mb']:.1f}", f"{m['cpu_pct']:.1f}"])
    out = [table(["pods", "state", "process", "VmRSS max (MB)", "Pss (MB)", "RssAnon (MB)", "CPU (% of one)"], rows)]
    out += [f"load at {s['pods']} pods: {s['load_counts']}" for s in sizes]
    if "target" in summary:
        t = summary["target"]
        out.append(f"target: every service <= {t['mb']:.0f} MB VmRSS at {t['pods']} pods: largest {t['service']} "
                   f"{t['largest_rss_mb']:.1f} MB {'ok' if t['ok'] else 'MISS'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=lambda t: [int(v) for v in t.split(",")], help="default 10,500; quick 10,20")
    parser.add_argument("--idle", type=float, help="idle window, s (default 5; quick 1)")
    parser.add_argument("--load", type=float, help="load window, s (default 10; quick 2)")
    parser.add_argument("--settle", type=float, help="wait after growing, s (default 2; quick 0.5)")
    parser.add_argument("--profile", action="store_true", help="py-spy on flowd and policyd, one more load window")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.pods = sorted(args.pods or ([10, 20] if args.quick else [10, 500]))
    args.idle = args.idle or (1 if args.quick else 5)
    args.load = args.load or (2 if args.quick else 10)
    args.settle = args.settle if args.settle is not None else (0.5 if args.quick else 2.0)
    if min(args.pods) < 2:
        parser.error("at least 2 pods")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capillary-bench-footprint-") as tmp:
        sizes, profiles = measure(args, Path(tmp) / "node")
    summary = summarize(sizes)
    print(report(sizes, summary))
    wall = round(time.monotonic() - began, 1)
    path = write_results("footprint", {"benchmark": "footprint", "environment": environment(),
                                       "parameters": vars(args), "sizes": sizes, "summary": summary,
                                       "profiles": profiles,
                                       "wall_seconds": wall})
    print(f"\nwall time {wall} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
