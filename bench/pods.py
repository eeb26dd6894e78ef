"""Pod churn on one node: create N pods in one apply, delete them in one delete, R times,
for each N of --pods (the sizes run one after the other on the same node).

Times `capillary apply -f -` and `capillary delete -f -` (wall clock of the command), and the
time from the start of the apply until the last pod of the file answers a ping from a pod
made beforehand. The baseline of each size is the smallest size: pods/s at N against
pods/s at the smallest N, repeat by repeat.

    .venv/bin/python bench/pods.py [--pods 100,500] [--repeats 3,2]

Prints a table and writes bench/results/pods.json. Runs its own node (pod CIDR
10.230.0.0/16) and purges it at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Node, Spread, bench_node, cleaned_up, environment, log,  # noqa: E402
                          ping, run, table, write_results)
from services.endpointd.plumbing import netns_name  # noqa: E402
from services.runtime.config import load_config  # noqa: E402
from tests.support.node import docs, namespace_doc, pod_doc  # noqa: E402

POD_CIDR = "10.230.0.0/16"
NAMESPACE = "churn"
PROBE = "probe"
CLI_TIMEOUT = 600          # seconds for one apply/delete of every pod
PING_INTERVAL = "0.01"     # seconds between pings while waiting for the first reply
POLL = 0.02                # seconds between looks for the last pod's address


@dataclass(frozen=True)
class Repeat:
    apply_s: float
    first_packet_s: float
    delete_s: float
    pings_sent: int        # echo requests sent to the last pod up to its first reply


def pod_names(count: int) -> list[str]:
    return [f"pod{i:04d}" for i in range(count)]


def manifest(names: list[str]) -> str:
    return docs(*(pod_doc(NAMESPACE, name) for name in names))


def timed_cli(node: Node, *args: str, text: str) -> float:
    start = time.monotonic()
    node.cli(*args, input=text, timeout=CLI_TIMEOUT)
    return time.monotonic() - start


def wait_pod_ip(netns: str, deadline: float, outcome: dict) -> str:
    """The pod's eth0 address, as soon as endpointd has configured it."""
    path = Path("/run/netns") / netns
    while time.monotonic() < deadline and "error" not in outcome:
        if path.exists():
            out = run(["ip", "-n", netns, "-o", "-4", "addr", "show", "dev", "eth0"], check=False).stdout
            match = re.search(r"inet (\S+)/32", out)
            if match:
                return match.group(1)
        time.sleep(POLL)
    raise RuntimeError(f"no address in netns {netns}: {outcome.get('error', 'apply timed out')}")


def first_reply(probe_netns: str, ip: str, deadline: float) -> int:
    """Ping IP every PING_INTERVAL until one reply; returns the requests sent."""
    remaining = max(1, int(deadline - time.monotonic()))
    argv = ["ping", "-n", "-q", "-c", "1", "-i", PING_INTERVAL, "-w", str(remaining), ip]
    proc = run(argv, probe_netns, timeout=remaining + 10, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"no reply from {ip} within {remaining}s: {proc.stdout.strip()}")
    return int(re.search(r"(\d+) packets transmitted", proc.stdout).group(1))


def apply_in_background(node: Node, text: str) -> tuple[threading.Thread, dict]:
    """Start the timed apply; the thread leaves 'seconds' or 'error' in the returned dict."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["seconds"] = timed_cli(node, "apply", "-f", "-", text=text)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="apply", daemon=True)
    thread.start()
    return thread, outcome


def one_repeat(node: Node, probe_netns: str, count: int) -> Repeat:
    names = pod_names(count)
    text = manifest(names)
    last_netns = netns_name(load_config(str(node.config_path)), NAMESPACE, names[-1])
    start = time.monotonic()
    deadline = start + CLI_TIMEOUT
    thread, outcome = apply_in_background(node, text)
    sent = first_reply(probe_netns, wait_pod_ip(last_netns, deadline, outcome), deadline)
    first_packet = time.monotonic() - start
    thread.join(timeout=max(0.0, deadline - time.monotonic()) + 10)
    if "seconds" not in outcome:
        raise RuntimeError(f"apply failed: {outcome.get('error', 'timed out')}")
    listed = [ref for ref in node.pods() if ref.startswith(f"{NAMESPACE}/pod")]
    if len(listed) != count:
        raise RuntimeError(f"{len(listed)} pods listed after applying {count}")
    delete = timed_cli(node, "delete", "-f", "-", text=text)
    left = [ref for ref in node.pods() if ref.startswith(f"{NAMESPACE}/pod")]
    if left:
        raise RuntimeError(f"{len(left)} pods still listed after delete")
    return Repeat(outcome["seconds"], first_packet, delete, sent)


def prepare(node: Node) -> str:
    """The namespace and the pod the pings come from; returns the probe's netns path."""
    node.apply(docs(namespace_doc(NAMESPACE), pod_doc(NAMESPACE, PROBE)))
    probe = node.netns(f"{NAMESPACE}/{PROBE}")
    if not ping(probe, node.router_ip):
        raise RuntimeError("the probe pod cannot reach the router IP")
    return probe


def summarize(repeats: list[Repeat]) -> dict[str, Spread]:
    return {field: Spread.of([getattr(r, field) for r in repeats]) for field in Repeat.__dataclass_fields__}


def rates(count: int, repeats: list[Repeat]) -> dict[str, Spread]:
    return {"create_per_s": Spread.of([count / r.apply_s for r in repeats]),
            "delete_per_s": Spread.of([count / r.delete_s for r in repeats])}


def report(count: int, repeats: list[Repeat], summary: dict[str, Spread]) -> str:
    rows = [
        (f"apply {count} pods (s)", "apply_s", "{:.2f}"),
        ("first packet to the last pod, from apply start (s)", "first_packet_s", "{:.2f}"),
        (f"delete {count} pods (s)", "delete_s", "{:.2f}"),
        ("pings sent to the last pod until its first reply", "pings_sent", "{:.0f}"),
    ]
    lines = [[label, fmt.format(summary[key].median), fmt.format(summary[key].min), fmt.format(summary[key].max),
              " ".join(fmt.format(getattr(r, key)) for r in repeats)] for label, key, fmt in rows]
    for label, key, seconds in (("pods created per second (apply)", "create_per_s", "apply_s"),
                                ("pods deleted per second (delete)", "delete_per_s", "delete_s")):
        rate = rates(count, repeats)[key]
        lines.append([label, f"{rate.median:.1f}", f"{rate.min:.1f}", f"{rate.max:.1f}",
                      " ".join(f"{count / getattr(r, seconds):.1f}" for r in repeats)])
    return f"{count} pods, {len(repeats)} repeats\n" + table(["metric", "median", "min", "max", "per repeat"], lines)


def sizes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("pod counts, comma-separated, each at least 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=sizes, default=[100, 500], help="pods per apply, comma-separated "
                                                                      "(default 100,500)")
    parser.add_argument("--repeats", type=sizes, default=[3, 2],
                        help="apply/delete cycles per size, comma-separated, the last one for every further "
                             "size (default 3,2)")
    args = parser.parse_args(argv)
    per_size = {n: args.repeats[min(i, len(args.repeats) - 1)] for i, n in enumerate(args.pods)}
    began = time.monotonic()
    by_size: dict[int, list[Repeat]] = {}
    with tempfile.TemporaryDirectory(prefix="capillary-bench-pods-") as tmp, cleaned_up() as cleanup:
        node = bench_node(cleanup, Path(tmp) / "node", POD_CIDR, "p")
        probe = prepare(node)
        for count in args.pods:
            by_size[count] = []
            for i in range(per_size[count]):
                log(f"{count} pods, repeat {i + 1}/{per_size[count]}")
                by_size[count].append(one_repeat(node, probe, count))
                log(f"  {by_size[count][-1]}")
    results = {}
    base = min(args.pods)
    for count, repeats in by_size.items():
        summary = {**summarize(repeats), **rates(count, repeats)}
        summary["create_per_s_ratio_to_smallest"] = Spread.of(
            [(count / r.apply_s) / (base / b.apply_s) for r, b in zip(repeats, by_size[base])])
        results[str(count)] = {"repeats": [asdict(r) for r in repeats], "summary": summary}
        print(report(count, repeats, summary) + "\n")
    path = write_results("pods", {
        "benchmark": "pods", "environment": environment(),
        "parameters": {"pods": args.pods, "repeats": per_size, "mode": "redirect", "pod_cidr": POD_CIDR},
        "sizes": results, "wall_seconds": round(time.monotonic() - began, 1)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
