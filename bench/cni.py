"""Containers on capillary's CNI plugin against podman on the reference bridge plugin.

For each of --containers containers (alternating between the two networks, in one private
podman): the time from `podman run -d` until the container answers a ping from the host
(create -> first packet). Then the plugin on its own: --adds ADDs (and DELs) into fresh
netns with the spec's environment, each split into start-up (an exec of the plugin's
interpreter importing what ADD imports, and nothing more) and work (the rest: NATS,
endpointd, the kernel).

    .venv/bin/python bench/cni.py [--containers 50] [--adds 20]

Prints a table and writes bench/results/cni.json. Runs its own node (pod CIDR
10.231.0.0/24), a bridge network on 10.232.0.0/24 (bridge device cbr<tag>, no masquerade),
and cleans both up, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (Spread, bench_node, cleaned_up, environment, log, ratios, run,  # noqa: E402
                          table, write_results)
from tests.support.podman import IMAGE, Podman  # noqa: E402

PLUGIN = "/opt/cni/bin/capillary"
POD_CIDR, BRIDGE_CIDR = "10.231.0.0/24", "10.232.0.0/24"
FIRST_PACKET_TIMEOUT = 60
# The plugin's start-up before ADD does any work: its entry point and the node's client
# (tests/unit/test_cni_imports.py keeps this set free of heavy libraries).
ADD_IMPORTS = "import services.cni.__main__, services.cni.plugin"


def first_packet(pm: Podman, name: str, network: str) -> float:
    start = time.monotonic()
    pm("run", "-d", "--name", name, "--network", network, IMAGE, "sleep", "3600")
    ip = pm("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).stdout.strip()
    while run(["ping", "-n", "-q", "-c", "1", "-W", "0.2", ip], check=False).returncode != 0:
        if time.monotonic() - start > FIRST_PACKET_TIMEOUT:
            raise RuntimeError(f"{name} ({ip}) did not answer within {FIRST_PACKET_TIMEOUT}s")
    return time.monotonic() - start


def plugin(command: str, conf: dict, **env: str) -> float:
    environ = {**os.environ, "CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", **env}
    start = time.monotonic()
    proc = subprocess.run([PLUGIN], input=json.dumps(conf), capture_output=True, text=True, env=environ)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command}: {proc.stdout}")
    return took


def start_up() -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", ADD_IMPORTS], check=True)
    return time.monotonic() - start


def add_times(cleanup, node, count: int) -> tuple[list[float], list[float]]:
    conf = {"cniVersion": "1.1.0", "name": "benchnet", "type": "capillary", "config": str(node.config_path)}
    startup, total = [], []
    for i in range(count):
        ns = f"cnib-{node.tag}-{i}"
        run(["ip", "netns", "add", ns])
        cleanup.push(f"netns {ns}", lambda ns=ns: run(["ip", "netns", "del", ns], check=False))
        env = {"CNI_CONTAINERID": f"bench{i}", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0"}
        startup.append(start_up())
        total.append(plugin("ADD", conf, **env))
        plugin("DEL", conf, **env)
    return startup, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--adds", type=int, default=20)
    args = parser.parse_args()
    with cleaned_up() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="capillary-bench-cni-"))
        cleanup.push(f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
        node = bench_node(cleanup, work / "node", POD_CIDR, "c")
        pm = Podman(work / "podman")
        cleanup.push("podman", pm.close)
        pm.import_busybox()
        pm.network("capnet", {"type": "capillary", "config": str(node.config_path)})
        bridge = f"cbr{node.tag}"
        cleanup.push(f"bridge {bridge}", lambda: run(["ip", "link", "del", bridge], check=False))
        pm.network("bridgenet", {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                                 "ipam": {"type": "host-local", "subnet": BRIDGE_CIDR,
                                          "dataDir": str(work / "host-local")}})
        times: dict[str, list[float]] = {"capnet": [], "bridgenet": []}
        for i in range(args.containers):
            network = ("capnet", "bridgenet")[i % 2]
            times[network].append(first_packet(pm, f"b{i}", network))
        log(f"{args.containers} containers up; removing them")
        pm("rm", "-a", "-f", "-t", "0")
        startup, total = add_times(cleanup, node, args.adds)
        s = summary(times, startup, total)
        rows = [["create -> first packet, capillary (s)", s["first_packet_s"]["capillary"].text()],
                ["create -> first packet, bridge (s)", s["first_packet_s"]["bridge"].text()],
                ["ratio capillary / bridge (p50 of pairs)", s["ratio_to_bridge"].text()],
                ["ADD total (ms)", s["add_total_ms"].text("{:.0f}")],
                ["ADD start-up (ms)", s["add_startup_ms"].text("{:.0f}")],
                ["ADD work (ms)", s["add_work_ms"].text("{:.0f}")]]
        print(table(["measure", "p50 [min..max]"], rows))
        write_results("cni", {"benchmark": "cni", "environment": environment(),
                              "parameters": {"containers": args.containers, "adds": args.adds}, "summary": s,
                              "first_packet_s": times, "add_total_s": total, "add_startup_s": startup})


def summary(times: dict[str, list[float]], startup: list[float], total: list[float]) -> dict:
    pairs = min(len(times["capnet"]), len(times["bridgenet"]))
    return {"first_packet_s": {"capillary": Spread.of(times["capnet"]), "bridge": Spread.of(times["bridgenet"])},
            "ratio_to_bridge": Spread.of(ratios(times["capnet"][:pairs], times["bridgenet"][:pairs])),
            "add_total_ms": Spread.of([t * 1000 for t in total]),
            "add_startup_ms": Spread.of([s * 1000 for s in startup]),
            "add_work_ms": Spread.of([(t - s) * 1000 for t, s in zip(total, startup)])}


if __name__ == "__main__":
    main()
