"""Flow export: datapath events -> flowd -> NATS -> a subscriber, at rising offered load.

A node with events.aggregation none, so every packet makes events (a UDP packet from one pod
to another makes two: from-endpoint at the client's lxc, to-endpoint at the server's), and
two pods. Each step sends a UDP stream (iperf3 -u, 16-byte datagrams, paced) from client to
server at a packet rate, then waits until flowd has drained. A subscriber in its own process
(bench/flowsink.py) counts the flows arriving on capillary.flows.<node>.>.

Per step, from flowd's own accounting (capillary status) and the subscriber:
  offered     events generated per second of sending (ring records + ring-full losses)
  exported    flows published per second, from the step's start until flowd was drained
  received    flows the subscriber counted (NATS drops slow consumers; this shows it)
  lost        by source: ring full, publish backpressure, undecodable
  exact       generated == published + lost, exactly, for the step
and flowd's RSS (VmRSS), and the CPU (utime + stime over the step's wall time) of flowd,
nats-server and the subscriber.

    .venv/bin/python bench/flows.py [--rates 10000,25000,...] [--seconds 5] [--repeats 2] [--quick]

Prints a table and writes bench/results/flows.json. Runs its own node (pod CIDR
10.233.0.0/16) and purges it at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (REPO, Cleanup, Node, Spread, bench_node, cleaned_up, environment, log,  # noqa: E402
                          ping, run, start, table, wait_listening, write_results)
from services.wire import subjects  # noqa: E402
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

POD_CIDR = "10.233.0.0/16"
PORT = 5201
DATAGRAM = 16                       # bytes of UDP payload: the packet rate is what counts
RATES = (10_000, 25_000, 50_000, 75_000, 100_000, 150_000)      # packets per second
QUICK_RATES = (10_000, 50_000)
TARGET_FLOWS = 100_000              # flows/s
TARGET_RSS_MB = 150
DRAIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Step:
    pps: int
    seconds: float              # sending
    drained_s: float            # from the start of sending until flowd was drained
    generated: int
    published: int
    received: int
    lost_ring: int
    lost_publish: int
    lost_undecodable: int
    identity_holds: bool
    sink_bad: int
    flowd_rss_mb: float
    flowd_cpu: float            # CPU seconds per wall second over the step
    nats_cpu: float             # likewise, nats-server
    sink_cpu: float             # likewise, the subscriber

    @property
    def offered(self) -> float:
        return self.generated / self.seconds

    @property
    def exported(self) -> float:
        return self.published / self.drained_s


class Sink:
    """bench/flowsink.py in its own process; `count` follows its reports."""

    def __init__(self, cleanup: Cleanup, node: Node) -> None:
        context = node.state_dir / "nats" / "admin.context.json"
        self.proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "flowsink.py"), str(context),
                                      subjects.flows(node.name, ">")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        cleanup.push("flow sink", self.close)
        self.count = self.bad = 0
        self._first = threading.Event()
        threading.Thread(target=self._follow, daemon=True).start()
        if not self._first.wait(15):
            raise RuntimeError("the flow sink did not subscribe within 15 s")

    def _follow(self) -> None:
        for line in self.proc.stdout:
            count, _, bad = (int(x) for x in line.split())
            self.count, self.bad = count, bad
            self._first.set()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def flowd_counters(node: Node) -> dict[str, int]:
    return node.status()["services"]["flowd"]["counters"]


def proc_usage(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds used so far) of PID."""
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_drained(node: Node, sink: Sink, before: dict[str, int]) -> dict[str, int]:
    """flowd's counters once it has read and handled everything the datapath generated and
    the subscriber has received what was published."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        now = flowd_counters(node)
        generated = now["flows_generated"] - before["flows_generated"]
        handled = (now["flows_published"] - before["flows_published"]) + (now["flows_lost"] - before["flows_lost"])
        if handled >= generated and now["flows_queued"] == 0:
            return now
        time.sleep(0.05)
    raise RuntimeError(f"flowd did not drain within {DRAIN_TIMEOUT:.0f} s: {now}")


def one_step(node: Node, sink: Sink, client: str, server_ip: str, pps: int, seconds: float) -> Step:
    status = node.status()
    pids = {"flowd": status["services"]["flowd"]["pid"], "nats": status["supervisor"]["children"]["nats"]["pid"],
            "sink": sink.proc.pid}
    before, received0 = status["services"]["flowd"]["counters"], sink.count
    cpu0 = {name: proc_usage(pid)[1] for name, pid in pids.items()}
    began = time.monotonic()
    argv = ["iperf3", "-c", server_ip, "-p", str(PORT), "-u", "-l", str(DATAGRAM), "-t", str(seconds),
            "-b", str(pps * DATAGRAM * 8), "--pacing-timer", "100"]
    run(argv, client, timeout=seconds + 30)
    sent_s = time.monotonic() - began
    after = wait_drained(node, sink, before)
    drained_s = time.monotonic() - began
    time.sleep(0.3)                                 # the last messages on their way to the sink
    rss = proc_usage(pids["flowd"])[0]
    cpu = {name: round((proc_usage(pid)[1] - cpu0[name]) / drained_s, 3) for name, pid in pids.items()}
    d = {key: after[key] - before[key] for key in after}
    return Step(pps=pps, seconds=sent_s, drained_s=drained_s, generated=d["flows_generated"],
                published=d["flows_published"], received=sink.count - received0, lost_ring=d["lost_ring_full"],
                lost_publish=d["lost_publish"], lost_undecodable=d["lost_undecodable"],
                identity_holds=d["flows_generated"] == d["flows_published"] + d["flows_lost"],
                sink_bad=sink.bad, flowd_rss_mb=round(rss, 1), flowd_cpu=cpu["flowd"], nats_cpu=cpu["nats"],
                sink_cpu=cpu["sink"])


def set_up(cleanup: Cleanup, workdir: Path) -> tuple[Node, str, str]:
    node = bench_node(cleanup, workdir, POD_CIDR, "f", sections={"events": {"aggregation": "none"}})
    node.apply(docs(namespace_doc("flows"), pod_doc("flows", "client"), pod_doc("flows", "server")))
    client, server = node.netns("flows/client"), node.netns("flows/server")
    server_ip = node.pod_ip("flows/server")
    iperf = start(cleanup, ["iperf3", "-s", "-p", str(PORT)], server)
    wait_listening(server, PORT, iperf)
    if not ping(client, server_ip):
        raise RuntimeError(f"no ping reply from the server pod {server_ip}")
    return node, client, server_ip


def summarize(steps: list[Step]) -> list[dict]:
    out = []
    for pps in sorted({s.pps for s in steps}):
        mine = [s for s in steps if s.pps == pps]
        out.append({"pps": pps, "offered": Spread.of([s.offered for s in mine]),
                    "exported": Spread.of([s.exported for s in mine]),
                    "received_ratio": Spread.of([s.received / s.published if s.published else 1.0 for s in mine]),
                    "lost": Spread.of([s.lost_ring + s.lost_publish + s.lost_undecodable for s in mine]),
                    "lost_ratio": Spread.of([(s.generated - s.published) / s.generated if s.generated else 0.0
                                             for s in mine]),
                    "identity_holds": all(s.identity_holds for s in mine),
                    "flowd_rss_mb": max(s.flowd_rss_mb for s in mine),
                    "flowd_cpu": Spread.of([s.flowd_cpu for s in mine]),
                    "nats_cpu": Spread.of([s.nats_cpu for s in mine]),
                    "sink_cpu": Spread.of([s.sink_cpu for s in mine])})
    return out


def best_lossless(summary: list[dict]) -> float:
    """The highest median export rate among steps that lost nothing."""
    clean = [row["exported"].median for row in summary if row["lost"].max == 0]
    return max(clean, default=0.0)


def report(summary: list[dict]) -> str:
    rows = [[f"{row['pps']:,}", row["offered"].text("{:,.0f}"), row["exported"].text("{:,.0f}"),
             row["received_ratio"].text("{:.4f}"), row["lost"].text("{:,.0f}"), row["lost_ratio"].text("{:.3f}"),
             "yes" if row["identity_holds"] else "NO", f"{row['flowd_rss_mb']:.0f}",
             f"{row['flowd_cpu'].median:.2f} / {row['nats_cpu'].median:.2f} / {row['sink_cpu'].median:.2f}"]
            for row in summary]
    return table(["UDP pkt/s", "offered flows/s", "exported flows/s", "received/published", "lost",
                  "lost/generated", "exact", "flowd RSS MB", "CPU flowd / nats / sink"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", help="packet rates, comma-separated (default %s)" % ",".join(map(str, RATES)))
    parser.add_argument("--seconds", type=float, help="seconds of sending per step (default 5; quick 2)")
    parser.add_argument("--repeats", type=int, help="times each rate is run (default 2; quick 1)")
    parser.add_argument("--quick", action="store_true", help="two rates, short steps, once")
    args = parser.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")] if args.rates else list(QUICK_RATES if args.quick else RATES)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="capillary-bench-flows-") as tmp, cleaned_up() as cleanup:
        node, client, server_ip = set_up(cleanup, Path(tmp))
        sink = Sink(cleanup, node)
        for repeat in range(args.repeats):
            for pps in args.rates:
                step = one_step(node, sink, client, server_ip, pps, args.seconds)
                log(f"{pps:,} pkt/s: offered {step.offered:,.0f} flows/s, exported {step.exported:,.0f}/s, "
                    f"lost {step.generated - step.published:,}, flowd {step.flowd_rss_mb} MB")
                steps.append(step)
    summary = summarize(steps)
    best = best_lossless(summary)
    peak_rss = max(row["flowd_rss_mb"] for row in summary)
    print(f"{args.repeats} repeats of {args.seconds:.0f} s per rate; medians [min-max]\n")
    print(report(summary))
    sustained = max(row["exported"].median for row in summary)
    print(f"\nhighest export rate (median of a step, published and received): {sustained:,.0f} flows/s "
          f"(target >= {TARGET_FLOWS:,}: {'met' if sustained >= TARGET_FLOWS else 'missed'})")
    print(f"highest export rate of a step that lost nothing: {best:,.0f} flows/s")
    print(f"flowd peak RSS: {peak_rss:.0f} MB (target <= {TARGET_RSS_MB}: "
          f"{'met' if peak_rss <= TARGET_RSS_MB else 'missed'})")
    print(f"loss accounting exact in every step: {all(row['identity_holds'] for row in summary)}")
    path = write_results("flows", {
        "benchmark": "flows", "environment": environment(),
        "parameters": {"rates_pps": args.rates, "seconds": args.seconds, "repeats": args.repeats,
                       "datagram_bytes": DATAGRAM, "aggregation": "none"},
        "steps": [{**asdict(s), "offered": s.offered, "exported": s.exported} for s in steps],
        "summary": summary, "best_lossless_flows_per_s": best, "flowd_peak_rss_mb": peak_rss,
        "targets": {"flows_per_s": TARGET_FLOWS, "flowd_rss_mb": TARGET_RSS_MB},
        "wall_seconds": round(time.monotonic() - began, 1)})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
