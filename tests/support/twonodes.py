"""Two capillary nodes' datapaths on one machine, without services or NATS.

Each node's "host" is a network namespace with its underlay interface on a bridge (in a
third namespace, so nothing touches the machine's own network), capillary's maps and
programs compiled for it and pinned on a bpffs mount of its own, its router device, and
pods made with endpointd's Plumber. The caller writes policy and remote ipcache entries.
Used by tests/privileged/test_overlay.py and bench/encap.py. Everything made is removed on
exit, also when setting up failed half-way.

Node namespaces are entered with setns on the calling thread (services.datapath.netns),
never with `ip netns exec`, which would remount /sys and hide the bpffs mounts.
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.datapath import loader, netns
from services.datapath.maps.endpoints import EndpointMap
from services.datapath.maps.events import FlowEvent
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.maps.policy import PolicyMap
from services.datapath.mtu import pod_gso_max
from services.datapath.netlink import BIG_TCP_SIZE, Netlink, set_ipv4_gso_max
from services.datapath.ringbuf import RingBuffer
from services.datapath.numbers import IDENTITY_WORLD
from services.endpointd.plumbing import FROM_CONTAINER, TO_CONTAINER, Plumber, Wiring
from services.policyd.compiler import Endpoint, Universe, compile_endpoint
from services.policyd.model import POD_NAMESPACE, SOURCE
from services.policyd.parse import parse_policy
from services.datapath.maps.tunnel import FROM_NETDEV, TunnelPeersMap
from services.routed import netdev, tunnel
from services.routed.router import ensure_router
from services.runtime.config import DatapathConfig, NodeConfig
from services.wire.messages import PodSpec, PodStatus

UNDERLAY_MTU = 1500
RESERVED_FLAG = 1            # routed's source flag for the world entry (services.routed.service)
REMOTE_FLAG = 5              # ... and for a pod on another node


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def pod_labels(namespace: str, labels: dict[str, str]) -> dict[str, str]:
    """A pod identity's labels, as policyd keys them."""
    return {f"{SOURCE}:{k}": v for k, v in labels.items()} | {f"{SOURCE}:{POD_NAMESPACE}": namespace}


@dataclass
class Pod:
    name: str
    identity: int
    endpoint_id: int
    status: PodStatus
    netns_name: str           # for `ip netns exec` (a pod needs no bpffs)

    @property
    def ip(self) -> str:
        return self.status.pod_ip

    def run(self, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns_name, *argv], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def popen(self, *argv: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns_name, *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class DatapathNode:
    name: str
    netns: Path
    underlay_ip: str
    config: NodeConfig
    mount: Path
    pods: list[Pod] = field(default_factory=list)
    plumber: Plumber | None = None

    @property
    def root(self) -> Path:
        return Path(self.config.datapath.bpfRoot)

    def entered(self):
        return netns.entered(self.netns)

    def run(self, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """A command in the node's host namespace (the bpffs mount is not needed by it)."""
        return subprocess.run(["ip", "netns", "exec", self.netns.name, *argv], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def start(self, tunnel_mode: bool, host_routing: bool) -> None:
        """Router device, maps, programs, the world entry; in tunnel mode the VXLAN device;
        with HOST_ROUTING from_netdev at the underlay device (services.routed.netdev)."""
        with self.entered():
            nl = Netlink()
            try:
                ensure_router(nl, self.config)
                for source in ("routed_maps.c", "policyd_maps.c", "flowd_maps.c"):
                    loader.pin_maps(source, self.config)
                names = (FROM_CONTAINER, TO_CONTAINER, tunnel.FROM_OVERLAY, FROM_NETDEV)
                fds = loader.pin_programs("lxc.c", self.config, names)
                with contextlib.closing(IpcacheMap(self.root)) as ipcache:
                    ipcache.upsert("0.0.0.0/0", IDENTITY_WORLD, RESERVED_FLAG)
                mtu = tunnel.pod_mtu_on(nl, self.underlay_ip) if tunnel_mode else 0
                self.plumber = Plumber(self.config, EndpointMap(self.root), fds[FROM_CONTAINER],
                                       fds[TO_CONTAINER], default_mtu=mtu)
                self.plumber.gso_max, self.plumber.gso_restore, _ = pod_gso_max(self.config.datapath.bigTCP)
                if tunnel_mode:
                    tunnel.ensure_device(nl, self.config, fds[tunnel.FROM_OVERLAY])
                if host_routing:
                    netdev.attach(nl, nl.link_of_address(self.underlay_ip).index, fds[FROM_NETDEV])
            finally:
                nl.close()

    def add_pod(self, name: str, ip_addr: str, identity: int, endpoint_id: int, mtu: int = 0,
                gso_max: int | None = None) -> Pod:
        """A pod; MTU 0: the node's default (the underlay's less VXLAN in tunnel mode);
        GSO_MAX its veth's IPv4 GSO size, None: the node's (datapath.bigTCP)."""
        node_gso = self.plumber.gso_max
        if gso_max is not None:
            self.plumber.gso_max = gso_max
        try:
            with self.entered():
                spec = PodSpec(name=name, namespace="default", mtu=mtu)
                status = replace(self.plumber.create(spec, Wiring(pod_ip=ip_addr, endpoint_id=endpoint_id)),
                                 identity=identity)
                self.plumber.activate(status, spec)
        finally:
            self.plumber.gso_max = node_gso
        pod = Pod(name, identity, endpoint_id, status, Path(status.netns).name)
        self.pods.append(pod)
        return pod

    def learn_remote(self, pod: Pod, node_ip: str) -> None:
        """POD (on another node) into this node's ipcache, behind NODE_IP ("": native routing),
        checked as routed checks it (services.routed.tunnel.remote_entry); NODE_IP, if any,
        becomes a tunnel peer, as routed makes every alive member in tunnel mode."""
        cidr, identity, endpoint = tunnel.remote_entry(pod.ip, pod.identity, node_ip)
        with contextlib.closing(IpcacheMap(self.root)) as ipcache:
            ipcache.upsert(cidr, identity, REMOTE_FLAG, endpoint)
        if endpoint:
            with contextlib.closing(TunnelPeersMap(self.root)) as peers:
                peers.add(endpoint)

    def apply_policies(self, docs: list[dict], identities: dict[int, dict[str, str]]) -> None:
        """Compile DOCS (policy documents) for every pod here, as policyd does, and write the
        entries (replacing the pods' earlier ones)."""
        policies = [parse_policy(d).policy for d in docs]
        universe = Universe(identities)
        with contextlib.closing(PolicyMap(self.root)) as pmap:
            for key in pmap.all():
                pmap.delete(key)
            for pod in self.pods:
                for key, value in compile_endpoint(Endpoint(pod.endpoint_id, pod.identity), policies,
                                                   universe).items():
                    pmap.write(key, value)

    def stop(self) -> None:
        if self.plumber is not None:
            with self.entered():
                for pod in self.pods:
                    with contextlib.suppress(Exception):
                        self.plumber.delete(pod.status)
                self.plumber.close()
            self.plumber = None


class TwoNodes:
    """Nodes a and b, built on __enter__, removed on __exit__. TUNNEL_MODE: each has its VXLAN
    device (pods whose ipcache entry names a tunnel endpoint go through it) and pods get
    the tunnel MTU by default; ROUTES: each pod CIDR is routed via its node's underlay
    address (native routing, for pods learnt without a tunnel endpoint). Both may be on.
    LEGACY: native routing through the host stacks and the tunnel through the kernel's VXLAN
    devices both ways (datapath.hostLegacyRouting), else BPF host routing (from_netdev at
    each underlay device, which also decapsulates in tunnel mode). TAG_PREFIX starts the tag every
    name made here carries (bench runs use their own). BIG_TCP: datapath.bigTCP on both nodes,
    and the underlay (the bridge's ports, each node's device) carries 192 KiB GSO packets, as
    a NIC with that TSO size would."""

    def __init__(self, workdir: Path, tunnel_mode: bool, routes: bool = False, tag_prefix: str = "",
                 legacy: bool = False, big_tcp: bool = False) -> None:
        self.tag = (tag_prefix + secrets.token_hex(3))[:6]
        self.workdir = workdir
        self.tunnel_mode = tunnel_mode
        self.routes = routes
        self.legacy = legacy
        self.big_tcp = big_tcp
        self.underlay = netns.NETNS_RUN_DIR / f"capu-{self.tag}"
        self.nodes: list[DatapathNode] = []

    def __enter__(self) -> "TwoNodes":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def a(self) -> DatapathNode:
        return self.nodes[0]

    @property
    def b(self) -> DatapathNode:
        return self.nodes[1]

    def _build(self) -> None:
        netns.create(self.underlay.name)
        ip("-n", self.underlay.name, "link", "add", "br0", "type", "bridge")
        ip("-n", self.underlay.name, "link", "set", "br0", "up")
        for i, letter in enumerate("ab", start=1):
            self._add_node(letter, i)
        for node in self.nodes:
            node.start(self.tunnel_mode, host_routing=(self.routes or self.tunnel_mode) and not self.legacy)
        if self.routes:
            for here, there in ((self.a, self.b), (self.b, self.a)):
                ip("-n", here.netns.name, "route", "replace", there.config.podCIDR, "via", there.underlay_ip)

    def _add_node(self, letter: str, i: int) -> None:
        name = f"o{self.tag}{letter}"
        path = netns.create(f"capn-{self.tag}-{letter}")
        mount = Path(f"/sys/fs/bpf/capillary-{name}")
        node = DatapathNode(name, path, f"192.168.77.{i}", NodeConfig(
            node=name, stateDir=str(self.workdir / name), podCIDR=f"10.77.{i}.0/24",
            datapath=DatapathConfig(bpfRoot=str(mount), hostLegacyRouting=self.legacy, bigTCP=self.big_tcp)), mount)
        self.nodes.append(node)            # removed by close() from here on, whatever fails next
        mount.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(mount)], check=True, capture_output=True)
        u = self.underlay.name
        ip("-n", u, "link", "add", f"u{letter}", "type", "veth", "peer", "name", "eth0", "netns", path.name)
        ip("-n", u, "link", "set", f"u{letter}", "master", "br0", "up")
        ip("-n", path.name, "addr", "add", f"{node.underlay_ip}/24", "dev", "eth0")
        ip("-n", path.name, "link", "set", "eth0", "up", "mtu", str(UNDERLAY_MTU))
        ip("-n", path.name, "link", "set", "lo", "up")
        if self.big_tcp:
            for where, dev in ((self.underlay, f"u{letter}"), (path, "eth0")):
                with netns.entered(where):
                    set_ipv4_gso_max(socket.if_nametoindex(dev), BIG_TCP_SIZE)

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        for node in self.nodes:
            for pod_ns in netns.NETNS_RUN_DIR.glob(f"cap-{node.name}_*"):
                netns.remove(pod_ns)
            netns.remove(node.netns)
            if node.mount.exists():
                subprocess.run(["umount", str(node.mount)], capture_output=True)
                with contextlib.suppress(OSError):
                    node.mount.rmdir()
            shutil.rmtree(node.config.stateDir, ignore_errors=True)
        netns.remove(self.underlay)
        self.nodes = []


class Events:
    """The flow events one node's datapath reported since this was opened."""

    def __init__(self, node) -> None:
        self.ring = RingBuffer(node.root / "events")
        self.ring.drain(1 << 20)             # what came before is not ours

    def close(self) -> None:
        self.ring.close()

    def wait_for(self, match, deadline: float = 30.0) -> FlowEvent:
        seen = []
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for record in self.ring.poll(0.5, 1024):
                event = FlowEvent.from_buffer_copy(record[:ct.sizeof(FlowEvent)])
                seen.append((event.type, event.subtype, event.src_identity))
                if match(event):
                    return event
        raise AssertionError(f"no such event; seen (type, subtype, source identity): {seen[-20:]}")


def ping(pod, dst: str, size: int = 56) -> bool:
    return pod.run("ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(size), dst).returncode == 0


def until(predicate, deadline: float = 30.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False
