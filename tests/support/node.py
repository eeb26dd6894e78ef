"""A whole capillary node for tests: its own config (state dir, NATS port, pod CIDR, bpffs
root, device names), started with the real CLI and purged afterwards."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    workdir: Path
    pod_cidr: str = ""                  # default: a /24 derived from the tag, unique per node
    mode: str = "redirect"
    maps: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)
    datapath: dict = field(default_factory=dict)    # more datapath keys (e.g. conntrackGCInterval)
    nats: dict = field(default_factory=dict)
    docker: dict = field(default_factory=dict)
    hubble: dict = field(default_factory=dict)
    tag: str = field(default_factory=lambda: secrets.token_hex(2))

    def __post_init__(self) -> None:
        self.name = f"t{self.tag}"
        if not self.pod_cidr:
            a, b = int(self.tag[:2], 16), int(self.tag[2:], 16)
            self.pod_cidr = f"10.{100 + a % 100}.{b}.0/24"
        # Host-side veths are <lxc_prefix><hash>: a prefix per node keeps concurrent nodes apart.
        self.lxc_prefix = "l" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3))
        self.bpf_root = f"/sys/fs/bpf/capillary-{self.name}"
        self.router_device = f"ct{self.tag}h"
        self.config_path = self.workdir / "config.yaml"
        self.state_dir = self.workdir / "state"
        self.nats_port = free_port()
        self.web_port = free_port()
        config = {
            "kind": "NodeConfig", "node": self.name, "stateDir": str(self.state_dir),
            "podCIDR": self.pod_cidr,
            "datapath": {"mode": self.mode, "bpfRoot": self.bpf_root,
                         "routerDevice": self.router_device, "routerPeer": f"ct{self.tag}n",
                         "lxcPrefix": self.lxc_prefix, **self.datapath},
            "nats": {"port": self.nats_port, **self.nats},
            "maps": self.maps,
            "events": self.events,
            **({"docker": self.docker} if self.docker else {}),
            **({"hubble": self.hubble} if self.hubble else {}),
            "metrics": {s: free_port() for s in ("endpointd", "policyd", "routed", "flowd")},
            "web": {"port": self.web_port},
        }
        self.config_path.write_text(yaml.safe_dump(config))

    # ---- the CLI ---------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "services.cli.main", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, input=input, timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"capillary {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def apply(self, text: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.cli("apply", "-f", "-", input=text, check=check)

    def up(self) -> None:
        # generous: on a loaded machine compiling the datapath alone can take a minute
        self.cli("up", "--detach", "--timeout", "240", timeout=300)

    def down(self) -> None:
        self.cli("down", timeout=60)

    def purge(self) -> None:
        """`down --purge`, and once more if that could not finish: on a busy machine a node
        may take longer to stop than `down` waits (30 s), and `down` then leaves the purge
        undone. Raises if the second fails too."""
        if self.cli("down", "--purge", timeout=90, check=False).returncode != 0:
            self.cli("down", "--purge", timeout=90)

    def status(self) -> dict:
        return json.loads(self.cli("status", "-o", "json", check=False).stdout)

    def pods(self) -> dict[str, dict]:
        items = json.loads(self.cli("get", "pods", "-A", "-o", "json").stdout)["items"]
        return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items}

    def pod_ip(self, ref: str) -> str:
        return self.pods()[ref]["status"]["podIP"]

    def netns(self, ref: str) -> str:
        return self.pods()[ref]["spec"]["netns"]

    def run_in(self, ref: str, *argv: str, timeout: float = 20, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net={self.netns(ref)}", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=check)

    def metrics(self, service: str) -> str:
        import urllib.request
        port = self.status()["services"][service]["metrics_port"]
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    def service_pid(self, service: str) -> int:
        return self.status()["services"][service]["pid"]

    @property
    def router_ip(self) -> str:
        import ipaddress
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)

    def wait_healthy(self, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        last = {}
        while time.monotonic() < deadline:
            last = self.status()
            if last.get("healthy"):
                return last
            time.sleep(0.3)
        raise AssertionError(f"node not healthy within {timeout}s: {json.dumps(last, indent=1)}")

    def leftovers(self) -> list[str]:
        """Anything of this node still in the kernel or on disk."""
        out = []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        for line in links.splitlines():
            name = line.split(": ")[1].split("@")[0]
            if name.startswith(self.lxc_prefix) or name.startswith(f"ct{self.tag}"):
                out.append(f"link {name}")
        netns_dir = Path("/run/netns")
        if netns_dir.is_dir():
            out += [f"netns {p}" for p in netns_dir.glob(f"cap-{self.name}_*")]
        if Path(self.bpf_root).exists():
            out.append(f"bpffs {self.bpf_root}")
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        if self.pod_cidr in rules:
            out.append("iptables rules for the pod CIDR")
        ps = subprocess.run(["pgrep", "-f", str(self.config_path)], capture_output=True, text=True).stdout
        out += [f"process {pid}" for pid in ps.split()]
        return out


def namespace_doc(name: str, labels: dict | None = None) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "labels": labels or {}}})


def pod_doc(namespace: str, name: str, labels: dict | None = None, netns: str | None = None) -> str:
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}}}
    if netns:
        doc["spec"] = {"netns": netns}
    return yaml.safe_dump(doc)


def docs(*parts: str) -> str:
    return "---\n".join(parts)
