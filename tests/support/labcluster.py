"""A local capillary cluster for tests, made and removed with the real CLI
(`capillary cluster up|down`): N host namespaces on an underlay bridge, a node in each."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from services.cli import lab as labmod
from services.datapath.maps.tunnel import TunnelPeersMap
from services.runtime.config import parse_config
from tests.support.node import REPO


class LabCluster:
    def __init__(self, workdir: Path, nodes: int = 3, routing: str = "native") -> None:
        self.name = "c" + secrets.token_hex(3)
        self.dir = workdir / "cluster"
        self.count = nodes
        self.routing = routing
        self.lab: labmod.Lab | None = None

    def run(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True,
                              text=True, input=input, timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"capillary {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self) -> None:
        self.run("cluster", "up", "--nodes", str(self.count), "--name", self.name, "--dir", str(self.dir),
                 "--routing", self.routing, "--heartbeat-timeout", "4", timeout=420)
        self.lab = labmod.Lab.load(self.dir)

    def down(self) -> None:
        if (self.dir / labmod.LAB_FILE).exists():
            self.run("cluster", "down", "--purge", "--dir", str(self.dir), check=False, timeout=300)

    def node(self, i: int) -> labmod.LabNode:
        return self.lab.nodes[i]

    def cli(self, i: int, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run("--config", str(self.node(i).config_path), *args, check=check, input=input, timeout=timeout)

    def in_host(self, i: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """ARGV in node I's host namespace (its own `capillary down` and `up` run there)."""
        return subprocess.run(labmod.in_node(self.node(i), *argv), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def node_cli(self, i: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.in_host(i, sys.executable, "-m", "services.cli.main", "--config", str(self.node(i).config_path),
                            *args, timeout=timeout)

    def nodes(self, i: int) -> dict[str, dict]:
        items = json.loads(self.cli(i, "get", "nodes", "-o", "json").stdout)["items"]
        return {n["name"]: n for n in items}

    def pods(self, i: int = 0) -> dict[str, dict]:
        items = json.loads(self.cli(i, "get", "pods", "-A", "-o", "json").stdout)["items"]
        return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items}

    def routes(self, i: int) -> str:
        return self.in_host(i, "ip", "route").stdout

    def ipcache(self, i: int) -> dict[str, dict]:
        items = json.loads(self.cli(i, "get", "ipcache", "-o", "json").stdout)
        return {e["cidr"]: e for e in items}

    def tunnel_peers(self, i: int) -> set[str]:
        """The underlay addresses whose VXLAN packets node I takes in (its cap_tunnel_peers)."""
        config = parse_config(self.node(i).config_path.read_text())
        peers = TunnelPeersMap(Path(config.datapath.bpfRoot))
        try:
            return peers.peers()
        finally:
            peers.close()

    def ping(self, i: int, ref: str, ip: str) -> bool:
        proc = self.cli(i, "exec", ref, "--", "ping", "-c", "1", "-W", "1", ip, check=False)
        return proc.returncode == 0

    def status(self, i: int) -> dict:
        return json.loads(self.cli(i, "status", "-o", "json", check=False).stdout)

    def leftovers(self) -> list[str]:
        out = []
        netns = Path("/run/netns")
        if netns.is_dir():
            out += [f"netns {p.name}" for p in netns.iterdir()
                    if p.name.startswith((f"caphost-{self.name}-", f"cap-{self.name}-"))]
        mounts = Path("/proc/mounts").read_text()
        out += [f"mount {line.split()[1]}" for line in mounts.splitlines() if f"capillary-{self.name}-" in line]
        if self.lab and Path(f"/sys/class/net/{self.lab.bridge}").exists():
            out.append(f"bridge {self.lab.bridge}")
        ps = subprocess.run(["pgrep", "-f", str(self.dir)], capture_output=True, text=True).stdout
        out += [f"process {pid}" for pid in ps.split()]
        if self.dir.exists():
            out.append(f"directory {self.dir}")
        return out
