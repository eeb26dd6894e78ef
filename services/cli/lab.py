"""A local cluster's machines: N host network namespaces on one underlay bridge.

Each node <lab>-<i> has for its "host" a network namespace caphost-<lab>-<i> with an interface `underlay` on the
bridge cb<tag>; this machine keeps an address on the bridge (.254) so the CLI reaches every
node's NATS. A node runs in its namespace through `nsenter --net` (not `ip netns exec`, which
unshares the mount namespace and remounts /sys), so each node's pins live on its own bpffs
mount at /sys/fs/bpf/capillary-<lab>-<i>, a host path that outlives the processes.

The plan (names, addresses, paths) is written to <dir>/lab.json before anything is made, so
`cluster down` removes exactly what `cluster up` made, even after a half-made `up`.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

BRIDGE_PREFIX = "cb"
HOST_OCTET = 254
LAB_FILE = "lab.json"


class LabError(RuntimeError):
    """The lab could not be made or removed; the message says which step."""


@dataclass(frozen=True)
class LabNode:
    name: str
    netns: str
    underlay_ip: str
    pod_cidr: str
    host_veth: str
    bpf_root: str
    workdir: str

    @property
    def config_path(self) -> Path:
        return Path(self.workdir) / "config.yaml"


@dataclass(frozen=True)
class Lab:
    name: str
    bridge: str
    subnet: str
    nodes: tuple[LabNode, ...]
    directory: str

    @property
    def host_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + HOST_OCTET)

    def save(self) -> None:
        path = Path(self.directory) / LAB_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> "Lab":
        try:
            data = json.loads((directory / LAB_FILE).read_text())
        except FileNotFoundError:
            raise LabError(f"no cluster at {directory} ({LAB_FILE} is missing)") from None
        return cls(data["name"], data["bridge"], data["subnet"],
                   tuple(LabNode(**n) for n in data["nodes"]), data["directory"])


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _used_subnets() -> set[ipaddress.IPv4Network]:
    out = set()
    for line in _run("ip", "-4", "-o", "addr").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            out.add(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return out


def plan(name: str, count: int, directory: Path) -> Lab:
    """Names and free addresses for a lab of COUNT nodes (nothing is made yet)."""
    if not 1 <= count <= 16:
        raise LabError(f"--nodes: {count} is not from 1 to 16")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name):
        raise LabError(f"--name: {name!r} is not 1-12 lowercase letters and digits (a letter first)")
    used = _used_subnets()
    for _ in range(64):
        subnet = ipaddress.IPv4Network(f"172.31.{secrets.randbelow(250)}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            break
    else:
        raise LabError("no free /24 in 172.31.0.0/16 for the underlay")
    tag = secrets.token_hex(2)
    pod_octet = 100 + secrets.randbelow(100)
    nodes = tuple(
        LabNode(name=f"{name}-{i}", netns=f"caphost-{name}-{i}", underlay_ip=str(subnet.network_address + i),
                pod_cidr=f"10.{pod_octet}.{i}.0/24", host_veth=f"{BRIDGE_PREFIX}{tag}n{i}",
                bpf_root=f"/sys/fs/bpf/capillary-{name}-{i}", workdir=str(directory / f"{name}-{i}"))
        for i in range(1, count + 1))
    return Lab(name, f"{BRIDGE_PREFIX}{tag}", str(subnet), nodes, str(directory))


def build(lab: Lab) -> None:
    """Make the bridge, the namespaces, their underlay links and bpffs mounts; on a failure,
    remove what was made and raise."""
    lab.save()
    try:
        prefix = ipaddress.IPv4Network(lab.subnet).prefixlen
        _run("ip", "link", "add", lab.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{lab.host_ip}/{prefix}", "dev", lab.bridge)
        _run("ip", "link", "set", lab.bridge, "up")
        for node in lab.nodes:
            _build_node(lab, node, prefix)
    except BaseException:
        destroy(lab)
        raise


def _build_node(lab: Lab, node: LabNode, prefix: int) -> None:
    _run("ip", "netns", "add", node.netns)
    _run("ip", "link", "add", node.host_veth, "type", "veth", "peer", "name", "underlay", "netns", node.netns)
    _run("ip", "link", "set", node.host_veth, "master", lab.bridge, "up")
    inside = ("ip", "-n", node.netns)
    _run(*inside, "addr", "add", f"{node.underlay_ip}/{prefix}", "dev", "underlay")
    _run(*inside, "link", "set", "underlay", "up")
    _run(*inside, "link", "set", "lo", "up")
    Path(node.bpf_root).mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "bpf", "bpf", node.bpf_root)
    Path(node.workdir).mkdir(parents=True, exist_ok=True)


def in_node(node: LabNode, *argv: str) -> list[str]:
    """ARGV run in NODE's host namespace (network only: /sys and the bpffs stay the machine's)."""
    return ["nsenter", f"--net=/run/netns/{node.netns}", "--", *argv]


def destroy(lab: Lab) -> list[str]:
    """Remove the namespaces, links, mounts and the bridge; what could not go is returned."""
    left = []
    for node in lab.nodes:
        _run("ip", "link", "del", node.host_veth, check=False)
        if Path(f"/run/netns/{node.netns}").exists() and _run("ip", "netns", "del", node.netns,
                                                             check=False).returncode:
            left.append(f"netns {node.netns}")
        root = Path(node.bpf_root)
        if root.exists():
            _run("umount", str(root), check=False)
            _run("rm", "-rf", str(root), check=False)
            if root.exists():
                left.append(f"bpffs {root}")
    if Path(f"/sys/class/net/{lab.bridge}").exists() and _run("ip", "link", "del", lab.bridge,
                                                               check=False).returncode:
        left.append(f"bridge {lab.bridge}")
    return left
