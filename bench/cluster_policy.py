"""Policy across a cluster: published on node A, in force on node C.

`capillary cluster up --nodes 3` (native routing) with a client pod on A and a target pod on
C. Each round publishes one revision of a policy on node A's policy.apply only (one request
to A's policyd, as a user publishing on A's NATS would; not the CLI, which sends an object
to every node), the revision allowing the client a port no earlier one named. The time
counted ends when C's own policy map, the one C's datapath reads, holds the new port's
entry for the target: C learnt the revision from the shared bucket and put it in force.

    .venv/bin/python bench/cluster_policy.py [--rounds 50] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Spread, cleaned_up, environment, log, percentile, write_results  # noqa: E402
from services.cli import lab as labmod  # noqa: E402
from services.cli.client import Client  # noqa: E402
from services.datapath.maps.policy import PolicyMap  # noqa: E402
from services.runtime.config import load_config  # noqa: E402
from services.wire import subjects  # noqa: E402
from services.wire.messages import Apply  # noqa: E402

FIRST_PORT = 20000
TARGET = 50e-3              # seconds: the p99


def cli(*args: str, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"capillary {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def policy(port: int) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "bench-rev", "namespace": "bench"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "target"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                  "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]}}


def in_force(pmap: PolicyMap, endpoint_id: int, port: int) -> bool:
    return any(k.endpoint_id == endpoint_id and not k.egress and k.port == port for k in pmap.all())


async def rounds(lab: labmod.Lab, endpoint_id: int, count: int) -> list[float]:
    a, c = lab.nodes[0], lab.nodes[2]
    pmap = PolicyMap(Path(load_config(c.config_path).datapath.bpfRoot))
    out = []
    try:
        async with Client(load_config(a.config_path)) as client:
            for i in range(count):
                port = FIRST_PORT + i
                started = time.perf_counter()
                await client.call(subjects.POLICY_APPLY, Apply(policy(port)), timeout=60, node=a.name)
                while not in_force(pmap, endpoint_id, port):
                    if time.perf_counter() - started > 30:
                        raise RuntimeError(f"revision {i} (port {port}) not in force on {c.name} within 30 s")
                    await asyncio.sleep(0.0005)
                out.append(time.perf_counter() - started)
    finally:
        pmap.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args()
    count = 5 if args.quick else args.rounds
    name = "b" + time.strftime("%H%M%S")
    # The directory outlives the cleanup: `cluster down` needs the lab file in it.
    with tempfile.TemporaryDirectory(prefix="capillary-bench-") as tmp, cleaned_up() as cleanup:
        directory = Path(tmp) / "cluster"
        cleanup.push("cluster down", lambda: cli("cluster", "down", "--purge", "--dir", str(directory)))
        log(f"cluster {name}: 3 nodes")
        cli("cluster", "up", "--nodes", "3", "--name", name, "--dir", str(directory), "--routing", "native")
        lab = labmod.Lab.load(directory)
        a, c = lab.nodes[0], lab.nodes[2]
        pods = (f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n"
                f"apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: bench, labels: {{app: client}}}}\n"
                f"spec: {{nodeName: {a.name}}}\n---\n"
                f"apiVersion: v1\nkind: Pod\nmetadata: {{name: target, namespace: bench, labels: {{app: target}}}}\n"
                f"spec: {{nodeName: {c.name}}}\n")
        subprocess.run([sys.executable, "-m", "services.cli.main", "--config", str(a.config_path), "apply", "-f", "-"],
                       input=pods, text=True, check=True, capture_output=True, cwd=REPO, timeout=300)
        listed = json.loads(cli("--config", str(c.config_path), "get", "pods", "-n", "bench", "-o", "json"))
        endpoint_id = next(p["status"]["endpointID"] for p in listed["items"] if p["metadata"]["name"] == "target")
        times = asyncio.run(rounds(lab, endpoint_id, count))
    ms = [t * 1000 for t in times]
    p99 = percentile(ms, 99)
    summary = {"rounds": count, "ms": Spread.of(ms), "p50_ms": percentile(ms, 50), "p99_ms": p99,
               "target_ms": TARGET * 1000, "met": p99 <= TARGET * 1000}
    path = write_results("cluster_policy", {"environment": environment(), "summary": summary, "ms": ms})
    print(f"policy published on node A -> in force in node C's map, {count} revisions: "
          f"p50 {summary['p50_ms']:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms "
          f"(target p99 <= {TARGET * 1000:.0f} ms: {'met' if summary['met'] else 'missed'}); {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
