"""Run every benchmark, then write the report: what `make bench` runs.

    .venv/bin/python bench/run.py [--quick] [--only datapath,policy,...] [--report-only]

Each benchmark is its own script, run one after the other (never two at once: they would
measure each other), with a time limit; on the limit it gets SIGTERM, which its cleanup
handles, then SIGKILL. A failing benchmark does not stop the others; the run fails at the
end. Flow export is bench/flows.py, run when the file exists.

A full run writes bench/results/*.json, docs/benchmarks.md (+ PNGs in docs/benchmarks/) and
the targets table in README.md;
a quick run (the CI smoke test: does the suite work, not what are the numbers) writes
everything under bench/results/quick/, so it never replaces a full run's report.
At the end the run looks for anything a benchmark could have left (netns, links, pinned
maps, iptables chains, processes, by the names only benchmarks use) and fails if it finds any.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import BENCH_PREFIX, BENCH_TAG, RESULTS_ENV, log  # noqa: E402

PY = sys.executable
FULL_RESULTS, QUICK_RESULTS = REPO / "bench" / "results", REPO / "bench" / "results" / "quick"
FULL_DOC = REPO / "docs" / "benchmarks.md"
KILL_GRACE = 120           # seconds between SIGTERM and SIGKILL: a cleanup purges nodes

# name: (script, full arguments, quick arguments, time limit full / quick in seconds)
STEPS = {
    "datapath": ("datapath.py", ["--perf"], ["--quick"], (600, 200)),   # five variants, four runs each a round
    "policy": ("policy.py", [], ["--quick"], (420, 150)),
    # 500 and 1,000 pods: issue 12's "pods at scale" (p99 <= 20 ms and <= 30 ms)
    "cplane": ("cplane.py", ["--profile", "--pods", "10,100,500,1000"], ["--quick"], (600, 150)),
    # 1,000 pods in one apply: issue 12's "pods at scale"
    "pods": ("pods.py", ["--pods", "100,500,1000", "--repeats", "3,2,1"], ["--pods", "10,30", "--repeats", "1"],
             (900, 150)),
    "footprint": ("footprint.py", ["--profile"], ["--quick"], (300, 150)),
    "flows": ("flows.py", [], ["--quick"], (300, 150)),
    "cni": ("cni.py", [], ["--containers", "4", "--adds", "5"], (420, 150)),
    "encap": ("encap.py", [], ["--quick"], (420, 180)),
    "cidr_scale": ("cidr_scale.py", [], ["--quick"], (900, 150)),
    # three nodes come up first (three bcc compiles on 2 cores: minutes), then the rounds
    "cluster_policy": ("cluster_policy.py", ["--rounds", "50"], ["--quick"], (900, 600)),
}


def command(name: str, quick: bool) -> list[str]:
    script, full_args, quick_args, _ = STEPS[name]
    return [PY, str(REPO / "bench" / script), *(quick_args if quick else full_args)]


def _cpu_times() -> dict[int, tuple[float, str, int]]:
    """pid -> (utime + stime in ticks, command line, parent pid), for every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
            fields = rest.split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:                          # gone meanwhile
            continue
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12]), cmd or head.split("(", 1)[1], int(fields[1]))
    return out


def others(window: float = 1.0) -> list[str]:
    """The processes, not this run's, that used at least 5% of a CPU over WINDOW seconds:
    what else the machine was doing (other worktrees' tests, containers, ...)."""
    before = _cpu_times()
    time.sleep(window)
    after = _cpu_times()
    ticks = os.sysconf("SC_CLK_TCK") * window
    busy = []
    for pid, (cpu, cmd, _) in after.items():
        if pid in before and not _mine(pid, after) and (cpu - before[pid][0]) / ticks >= 0.05:
            busy.append(((cpu - before[pid][0]) / ticks, cmd))
    return [f"{share * 100:.0f}% {cmd[:90]}" for share, cmd in sorted(busy, reverse=True)[:6]]


def _mine(pid: int, table: dict[int, tuple[float, str, int]]) -> bool:
    while pid > 1 and pid in table:
        if pid == os.getpid():
            return True
        pid = table[pid][2]
    return False


def snapshot(label: str) -> dict:
    return {"at": label, "time": time.strftime("%H:%M:%S"), "loadavg": os.getloadavg(), "busy": others()}


def run_step(name: str, quick: bool, results: Path) -> dict:
    argv = command(name, quick)
    limit = STEPS[name][3][1 if quick else 0]
    log(f"== {name}: {' '.join(Path(a).name if a == PY else a for a in argv)} (limit {limit} s)")
    env = {**os.environ, RESULTS_ENV: str(results)}
    began = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env)
    try:
        rc = proc.wait(timeout=limit)
        reason = "" if rc == 0 else f"exited {rc}"
    except subprocess.TimeoutExpired:
        stop(proc)
        rc, reason = proc.returncode, f"over its {limit} s limit"
    except KeyboardInterrupt:          # Ctrl-C or SIGTERM: let the benchmark clean up first
        stop(proc)
        raise
    wall = round(time.monotonic() - began, 1)
    log(f"== {name}: {'ok' if not reason else 'FAILED, ' + reason} in {wall} s")
    return {"name": name, "command": display(argv), "rc": rc, "error": reason, "wall_seconds": wall}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the benchmark's cleanup runs), then SIGKILL after KILL_GRACE."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def display(argv: list[str]) -> str:
    return " ".join([".venv/bin/python" if a == PY else str(Path(a).relative_to(REPO)) if a.startswith(str(REPO))
                     else a for a in argv])


# ---- leftovers --------------------------------------------------------------------------------

# bench/cluster_policy.py's cluster is named b<HHMMSS>: its host namespaces and bpffs mounts
CLUSTER_HOST, CLUSTER_BPFFS = r"caphost-b\d{6}-\d+\b", r"capillary-b\d{6}-\d+$"


def leftovers() -> list[str]:
    """Anything with a name only benchmarks use, still in the kernel or running."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    found += [f"netns {n.split()[0]}" for n in netns
              if n.startswith(("capb-", "cnib-", f"cap-t{BENCH_TAG}", f"cap-o{BENCH_TAG}", f"capu-{BENCH_TAG}",
                               f"capn-{BENCH_TAG}")) or re.match(CLUSTER_HOST, n)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
    names = [line.split(": ")[1].split("@")[0] for line in links]
    found += [f"link {n}" for n in names if n.startswith((BENCH_PREFIX, "vethb", f"ct{BENCH_TAG}", f"cbr{BENCH_TAG}"))]
    bpffs = Path("/sys/fs/bpf")
    found += [f"bpffs {p}" for pattern in (f"capillary-t{BENCH_TAG}*", f"capillary-o{BENCH_TAG}*")
              for p in bpffs.glob(pattern)] if bpffs.is_dir() else []
    found += [f"bpffs {p}" for p in bpffs.glob("capillary-b*") if re.match(CLUSTER_BPFFS, p.name)] \
        if bpffs.is_dir() else []
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    found += sorted({f"iptables {m}" for m in re.findall(r"BENCH-FWD-\w+", rules)})
    procs = subprocess.run(["pgrep", "-af", "capillary-bench-"], capture_output=True, text=True).stdout
    found += [f"process {line}" for line in procs.splitlines() if str(os.getpid()) != line.split()[0]]
    return found


# ---- main -------------------------------------------------------------------------------------

def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    os_release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    return {"cpu": model.group(1) if model else platform.processor(), "cpus": os.cpu_count(),
            "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None, "kernel": platform.release(),
            "os": os_release.get("PRETTY_NAME", "").strip('"'), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke test: small sizes, short runs")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--report-only", action="store_true", help="write the report from existing results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    steps = args.only.split(",") if args.only else list(STEPS)
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    results = QUICK_RESULTS if args.quick else FULL_RESULTS
    doc = results / "benchmarks.md" if args.quick else FULL_DOC
    results.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    if not args.report_only:
        began = time.monotonic()
        record = {"quick": args.quick, "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "snapshots": [snapshot("start")], "steps": []}
        for name in steps:
            if not (REPO / "bench" / STEPS[name][0]).exists():
                log(f"== {name}: bench/{STEPS[name][0]} is not in this tree, skipped")
                record["steps"].append({"name": name, "skipped": True})
                continue
            record["steps"].append(run_step(name, args.quick, results))
            record["snapshots"].append(snapshot(f"after {name}"))
        record["wall_seconds"] = round(time.monotonic() - began, 1)
        record["command"] = "make bench QUICK=1" if args.quick else "make bench"
        failed = [s["name"] for s in record["steps"] if s.get("error")]
        left = leftovers()
        record["leftovers"] = left
        (results / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        if left:
            log("LEFT BEHIND: " + "; ".join(left))
    readme = [] if args.quick else ["--readme", str(REPO / "README.md")]
    report = subprocess.run([PY, str(REPO / "bench" / "report.py"), "--results", str(results), "--out", str(doc),
                             *readme], cwd=REPO)
    if report.returncode != 0:
        failed.append("report")
    if failed or (not args.report_only and record["leftovers"]):
        log(f"bench FAILED: {', '.join(failed) or 'leftovers'}")
        return 1
    log(f"wrote {doc.relative_to(REPO)}" + ("" if args.report_only else f"; {record['wall_seconds']} s in all"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
