"""Containers on capillary's CNI plugin against podman on the reference bridge plugin.

For each of --containers containers (alternating between the two networks, in one private
podman): the time from `podman run -d` until the container answers a ping from the host
(create -> first packet). Then the plugin on its own: --adds ADDs (and DELs) into fresh
netns with the spec's environment, each split into start-up (an exec of the plugin's
interpreter importing what ADD imports, and nothing more) and work (the rest: NATS,
endpointd, the kernel).

    .venv/bin/python bench/cni.py [--containers 50] [--adds 20] [--plugin-dir DIR] [--against DIR]

The plugin is this checkout's, installed into a directory of the run's own (as `make setup`
installs it into /opt/cni/bin), unless --plugin-dir names one that holds a `capillary`.
--against DIR: each ADD (and DEL) is also made with the plugin installed in DIR (another
build), alternating with ours on the same node, so a loaded machine weighs on both alike.
The network configs name the node's `cni` NATS context (`context`), as the README advises.

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
from services.cni.install import command, install  # noqa: E402
from services.runtime.config import load_config  # noqa: E402
from services.wire.subjects import CNI_CLIENT  # noqa: E402
from tests.support.podman import IMAGE, Podman  # noqa: E402

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


def plugin(plugin_dir: Path, command: str, conf: dict, **env: str) -> float:
    environ = {**os.environ, "CNI_COMMAND": command, "CNI_PATH": str(plugin_dir), **env}
    start = time.monotonic()
    proc = subprocess.run([plugin_dir / "capillary"], input=json.dumps(conf), capture_output=True, text=True,
                          env=environ)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command}: {proc.stdout}")
    return took


def start_up() -> float:
    """The installed wrapper's interpreter, flags and module path, importing what ADD imports."""
    python, *flags, _launch, path = command()
    start = time.monotonic()
    subprocess.run(["/bin/sh", "-c", 'exec "$@"', "sh", python, *flags, "-c",
                    f"import sys; sys.path[:0] = {path!r}.split({os.pathsep!r}); {ADD_IMPORTS}"], check=True)
    return time.monotonic() - start


def context(node) -> str:
    """The node's NATS context for the CNI plugin (its `cni` user)."""
    return str(load_config(node.config_path).credentials_path(CNI_CLIENT))


def add_times(cleanup, node, plugin_dirs: list[Path], count: int) -> tuple[list[float], list[list[float]]]:
    """COUNT ADDs (each followed by its DEL) with each plugin in PLUGIN_DIRS in turn: the
    start-up of ours, and the ADD times of each."""
    conf = {"cniVersion": "1.1.0", "name": "benchnet", "type": "capillary", "context": context(node)}
    startup: list[float] = []
    total: list[list[float]] = [[] for _ in plugin_dirs]
    for i in range(count):
        startup.append(start_up())
        for k, plugin_dir in enumerate(plugin_dirs):
            ns = f"cnib-{node.tag}-{i}-{k}"
            run(["ip", "netns", "add", ns])
            cleanup.push(f"netns {ns}", lambda ns=ns: run(["ip", "netns", "del", ns], check=False))
            env = {"CNI_CONTAINERID": f"bench{i}-{k}", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0"}
            total[k].append(plugin(plugin_dir, "ADD", conf, **env))
            plugin(plugin_dir, "DEL", conf, **env)
    return startup, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--adds", type=int, default=20)
    parser.add_argument("--plugin-dir", type=Path, help="run the plugin installed here")
    parser.add_argument("--against", type=Path, help="time ADDs of the plugin installed here too")
    args = parser.parse_args()
    with cleaned_up() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="capillary-bench-cni-"))
        cleanup.push(f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
        node = bench_node(cleanup, work / "node", POD_CIDR, "c")
        plugin_dir = args.plugin_dir or work / "cni-bin"
        if args.plugin_dir is None:
            install(plugin_dir)
        pm = Podman(work / "podman", plugin_dirs=(str(plugin_dir), "/usr/lib/cni"))
        cleanup.push("podman", pm.close)
        pm.import_busybox()
        pm.network("capnet", {"type": "capillary", "context": context(node)})
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
        startup, totals = add_times(cleanup, node, [plugin_dir, *([args.against] if args.against else [])],
                                    args.adds)
        total = totals[0]
        s = summary(times, startup, total)
        if args.against:
            s["against_add_total_ms"] = Spread.of([t * 1000 for t in totals[1]])
            s["add_ratio_to_against"] = Spread.of(ratios(total, totals[1]))
        rows = [["create -> first packet, capillary (s)", s["first_packet_s"]["capillary"].text()],
                ["create -> first packet, bridge (s)", s["first_packet_s"]["bridge"].text()],
                ["ratio capillary / bridge (p50 of pairs)", s["ratio_to_bridge"].text()],
                ["ADD total (ms)", s["add_total_ms"].text("{:.0f}")],
                ["ADD start-up (ms)", s["add_startup_ms"].text("{:.0f}")],
                ["ADD work (ms)", s["add_work_ms"].text("{:.0f}")]]
        if args.against:
            rows += [[f"ADD total, {args.against} (ms)", s["against_add_total_ms"].text("{:.0f}")],
                     ["ADD ratio ours / theirs (p50 of pairs)", s["add_ratio_to_against"].text()]]
        print(table(["measure", "p50 [min..max]"], rows))
        write_results("cni", {"benchmark": "cni", "environment": environment(),
                              "parameters": {"containers": args.containers, "adds": args.adds,
                                             "against": str(args.against or "")}, "summary": s,
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
