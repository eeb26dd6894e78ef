"""`capillary cluster up|down` (a local cluster of N nodes) and `capillary get nodes`."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from services.cli import lab as labmod
from services.cli.client import Client
from services.cli.labconfig import write_configs
from services.cli.output import table
from services.wire import subjects
from services.wire.messages import ListRequest

DEFAULT_DIR = Path("/var/lib/capillary-cluster")
UP_TIMEOUT = 180.0          # seconds for every node's services: N bcc compiles share 2 cores


def _cli(node: labmod.LabNode, *args: str) -> list[str]:
    return labmod.in_node(node, sys.executable, "-m", "services.cli.main", "--config", str(node.config_path), *args)


def up(directory: Path, name: str, count: int, routing: str, heartbeat_timeout: int = 6) -> int:
    if (directory / labmod.LAB_FILE).exists():
        print(f"error: a cluster already exists at {directory}; `capillary cluster down --dir {directory}` "
              "removes it", file=sys.stderr)
        return 1
    try:
        lab = labmod.plan(name, count, directory)
        labmod.build(lab)
    except labmod.LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_configs(lab, routing, heartbeat_timeout)
    # Together: a replicated bucket is made only once enough servers have met.
    procs = [subprocess.Popen(_cli(node, "up", "--detach", "--timeout", str(UP_TIMEOUT)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for node in lab.nodes]
    failed = []
    for node, proc in zip(lab.nodes, procs):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"{node.name}: {out.strip()}")
    if failed:
        print("error: nodes did not come up:\n  " + "\n  ".join(failed), file=sys.stderr)
        down(directory, purge=True)
        return 1
    print(f"cluster {name}: {count} nodes ({routing} routing) on {lab.subnet} (bridge {lab.bridge})")
    for node in lab.nodes:
        print(f"  {node.name}  underlay {node.underlay_ip}  pods {node.pod_cidr}  "
              f"capillary --config {node.config_path}")
    return 0


def down(directory: Path, purge: bool) -> int:
    """Stop every node (with PURGE: remove its pods, pins and state), then the namespaces,
    the bridge and the bpffs mounts; PURGE also deletes DIRECTORY."""
    try:
        lab = labmod.Lab.load(directory)
    except labmod.LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    procs = []
    for node in lab.nodes:
        if node.config_path.exists() and Path(f"/run/netns/{node.netns}").exists():
            procs.append(subprocess.Popen(_cli(node, "down", *(["--purge"] if purge else [])),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for proc in procs:
        proc.wait()
    left = labmod.destroy(lab)
    if purge and not left:
        shutil.rmtree(directory, ignore_errors=True)
    if left:
        print(f"error: could not remove: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"cluster {lab.name} removed" + (" (purged)" if purge else f"; node state kept in {directory}"))
    return 0


async def get_nodes(client: Client, output: str) -> int:
    if not client.config.cluster.enabled:
        rows = [{"name": client.config.node, "underlay_ip": "-", "pod_cidr": client.config.podCIDR,
                 "routing": "-", "healthy": True, "heartbeat_age": 0.0, "self": True}]
    else:
        rows = await client.call(subjects.NODES_LIST, ListRequest())
    if output == "json":
        import json
        print(json.dumps({"items": rows}, indent=2))
        return 0
    print(table(["NAME", "STATUS", "UNDERLAY", "POD CIDR", "ROUTING", "LAST HEARTBEAT"],
                [[r["name"] + (" (this node)" if r.get("self") else ""), "Ready" if r["healthy"] else "NotReady",
                  r["underlay_ip"], r["pod_cidr"], r["routing"], f"{r['heartbeat_age']:.1f}s ago"] for r in rows]))
    return 0
