"""The kernel side of a pod: netns, veth pair, addresses, routes, program, endpoint entry.

Everything here is synchronous and runs on the netlink worker thread. create() either
finishes or removes what it made, and leaves the host side down: nothing passes until
activate() has written the endpoint entry and brought it up, so the control plane can do its
part (identity, policy entries, ipcache) while create() runs. ensure() brings an existing pod
back in line with its record without tearing anything down (restart safety); delete()
removes everything and treats already-gone pieces as success.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from services.datapath import netns
from services.datapath.maps.conntrack import ConntrackMap
from services.datapath.maps.endpoints import FLAG_AUDIT, Endpoint, EndpointMap
from services.datapath.maps.metrics import EndpointMetricsMap
from services.datapath.netlink import (RT_SCOPE_LINK, TC_EGRESS, TC_INGRESS, InterfaceNotFound,
                                       Netlink, PodNetlink, set_ipv4_gso_max)
from services.runtime.config import NodeConfig
from services.wire.messages import PodSpec, PodStatus

FROM_CONTAINER = "from_container"     # tc ingress of the lxc device: what the pod sends
TO_CONTAINER = "to_container"         # tc egress of the lxc device: what the host sends in


def host_ifname(config: NodeConfig, namespace: str, name: str) -> str:
    digest = hashlib.sha256(f"{config.node}/{namespace}/{name}".encode()).hexdigest()
    prefix = config.datapath.lxcPrefix
    return prefix + digest[: 15 - len(prefix)]


def is_host_ifname(config: NodeConfig, name: str) -> bool:
    """Whether NAME has the shape host_ifname() gives: the prefix, then hex to 15 chars."""
    prefix = config.datapath.lxcPrefix
    rest = name[len(prefix):]
    return name.startswith(prefix) and len(name) == 15 and all(c in "0123456789abcdef" for c in rest)


def netns_prefix(config: NodeConfig) -> str:
    """Every namespace this node creates is /run/netns/<prefix><namespace>.<pod>."""
    return f"cap-{config.node}_"


def netns_name(config: NodeConfig, namespace: str, name: str) -> str:
    # Node and namespace names are DNS labels (no '_' or '.'), so the name is unambiguous.
    return f"{netns_prefix(config)}{namespace}.{name}"


class NetnsInvalid(ValueError):
    pass


class PodHasInterface(ValueError):
    pass


@dataclass(frozen=True)
class Wiring:
    """What create() needs besides the spec: decided by the control plane beforehand."""

    pod_ip: str
    endpoint_id: int
    peer: str = ""          # set: the pod side stays here under this name, for a runtime
                            # that moves it into the netns itself (Docker's libnetwork)


class Plumber:
    def __init__(self, config: NodeConfig, endpoints: EndpointMap, from_fd: int, to_fd: int,
                 default_mtu: int = 0) -> None:
        self.config = config
        # A pod without spec.mtu gets this (0: the kernel's); in tunnel mode the underlay's
        # less the encapsulation (services.datapath.mtu.pod_mtu).
        self.default_mtu = default_mtu
        # IPv4 GSO/GRO size of both ends of a pod's veth (services.datapath.mtu.pod_gso_max):
        # BIG_TCP_SIZE with datapath.bigTCP (0: the kernel's 64 KiB), and what a pod found at
        # start-up gets back when the option is off (0 on a kernel without BIG TCP).
        self.gso_max = self.gso_restore = 0
        self.router_ip = str(config.router_ip)
        self.endpoints = endpoints
        self.ep_metrics = EndpointMetricsMap(Path(config.datapath.bpfRoot))
        self.conntrack = ConntrackMap(Path(config.datapath.bpfRoot))
        self.from_fd = from_fd
        self.to_fd = to_fd
        self.nl = Netlink()

    def close(self) -> None:
        self.nl.close()
        self.ep_metrics.close()
        self.conntrack.close()

    def create(self, spec: PodSpec, wiring: Wiring) -> PodStatus:
        """The veth pair, the pod side configured, our programs on the host side, which stays
        down; the status's identity is 0 until the caller sets it for activate()."""
        ifname = host_ifname(self.config, spec.namespace, spec.name)
        owned = spec.netns is None
        path = netns.NETNS_RUN_DIR / netns_name(self.config, spec.namespace, spec.name) if owned else Path(spec.netns)
        # With a peer left here, the runtime makes the netns and moves the peer in later.
        if not owned and not wiring.peer:
            return self._create_in(spec, wiring, ifname, path)
        made_netns = False
        try:
            if owned:
                netns.create(path.name)
                made_netns = True
            status = self._wire(spec, wiring, ifname, path, path, owned)
        except BaseException:
            self._remove(ifname, wiring.pod_ip, wiring.endpoint_id, path if made_netns else None)
            raise
        return status

    def _create_in(self, spec: PodSpec, wiring: Wiring, ifname: str, path: Path) -> PodStatus:
        """Wire a pod into the namespace a runtime made at PATH: checked once, then every step
        goes through the checked namespace itself, so swapping PATH meanwhile changes nothing."""
        try:
            with netns.pinned_pod_netns(path) as pinned:
                with PodNetlink(pinned) as pod:
                    if pod.has_link(spec.interface):
                        raise PodHasInterface(f"spec.netns: {spec.netns} already has an {spec.interface}")
                try:
                    return self._wire(spec, wiring, ifname, pinned, path, owned=False)
                except BaseException:
                    self._remove(ifname, wiring.pod_ip, wiring.endpoint_id, None)
                    raise
        except netns.NotAPodNetns as exc:
            raise NetnsInvalid(f"spec.netns: {exc}") from None

    def _wire(self, spec: PodSpec, wiring: Wiring, ifname: str, pinned: Path, path: Path,
              owned: bool) -> PodStatus:
        """PINNED is where the work happens; PATH is what the pod records as its netns."""
        if wiring.peer:
            host, eth0 = self.nl.create_veth(ifname, wiring.peer)
            if self.gso_max:            # kept when the runtime moves it into the pod
                set_ipv4_gso_max(eth0.index, self.gso_max)
        else:
            host = self.nl.create_veth_into(ifname, spec.interface, pinned)
            with PodNetlink(pinned) as pod:
                eth0 = pod.configure(spec.interface, wiring.pod_ip, self.router_ip, self._mtu(spec), self.gso_max)
        if self.gso_max:
            set_ipv4_gso_max(host.index, self.gso_max)
        status = PodStatus(pod_ip=wiring.pod_ip, host_ifname=ifname, host_ifindex=host.index,
                           host_mac=host.mac, pod_mac=eth0.mac, netns=str(path), netns_owned=owned,
                           endpoint_id=wiring.endpoint_id, identity=0, created=time.time())
        self.attach(status)
        return status

    def attach(self, status: PodStatus) -> None:
        """Our programs on the pod's host device (each replaces the one there, atomically)."""
        self.nl.attach_bpf(status.host_ifindex, self.to_fd, TO_CONTAINER, TC_EGRESS)
        self.nl.attach_bpf(status.host_ifindex, self.from_fd, FROM_CONTAINER, TC_INGRESS)

    def activate(self, status: PodStatus, spec: PodSpec) -> None:
        """Endpoint entry and counters, link up, route: the programs are attached already
        (create, ensure), so the first packet the pod can send meets them and a complete
        endpoint entry. The caller has the pod's policy entries written before this."""
        self.endpoints.upsert(Endpoint(ip=status.pod_ip, ifindex=status.host_ifindex,
                                       identity=status.identity, endpoint_id=status.endpoint_id,
                                       host_mac=status.host_mac, pod_mac=status.pod_mac,
                                       flags=FLAG_AUDIT if spec.audit else 0))
        self.ep_metrics.create(status.endpoint_id)
        self.nl.set_up(status.host_ifindex, self._mtu(spec))
        self.nl.replace_route(f"{status.pod_ip}/32", status.host_ifindex, prefsrc=self.router_ip,
                              scope=RT_SCOPE_LINK)

    def ensure(self, spec: PodSpec, status: PodStatus) -> PodStatus:
        """Bring a recorded pod back in line with the kernel. Existing pieces are kept (traffic
        keeps flowing); missing pieces are recreated. A pod rebuilt here has our programs; a
        live one's are replaced by the caller with attach(), atomically, after this."""
        path = Path(status.netns)
        try:
            host = self.nl.link(status.host_ifname)
        except InterfaceNotFound:
            host = None
        if host is None or not path.exists():
            self._remove(status.host_ifname, status.pod_ip, status.endpoint_id, None)
            if status.netns_owned and not path.exists():
                netns.create(path.name)
            elif not status.netns_owned and not netns.is_netns(path):
                raise NetnsInvalid(f"adopted netns {status.netns} is gone")
            fresh = self._wire(spec, Wiring(status.pod_ip, status.endpoint_id), status.host_ifname, path, path,
                               status.netns_owned)
            fresh = dataclasses.replace(fresh, identity=status.identity, created=status.created)
            self.activate(fresh, spec)
            return fresh
        gso = self.gso_max or self.gso_restore
        with PodNetlink(path) as pod:
            eth0 = pod.configure(spec.interface, status.pod_ip, self.router_ip, self._mtu(spec), gso)
        if gso:
            set_ipv4_gso_max(host.index, gso)
        current = dataclasses.replace(status, host_ifindex=host.index, host_mac=host.mac, pod_mac=eth0.mac)
        # The pod is live and its old programs keep serving it: the caller replaces them
        # (attach) once every restored pod's entry is in, since after a bpffs loss the new
        # maps start empty and a new program would not find the peers restored after it.
        self.activate(current, spec)
        return current

    def _mtu(self, spec: PodSpec) -> int:
        return spec.mtu or self.default_mtu

    def delete(self, status: PodStatus) -> None:
        self._remove(status.host_ifname, status.pod_ip, status.endpoint_id,
                     Path(status.netns) if status.netns_owned else None)

    def _remove(self, ifname: str, pod_ip: str, endpoint_id: int, owned_netns: Path | None) -> None:
        self.endpoints.delete(pod_ip)
        self.ep_metrics.delete(endpoint_id)
        self.nl.delete_link(ifname)          # takes the peer and the /32 route with it
        # Last: with no endpoint entry and no link, no new entry can name the address (the
        # datapath drops what is sent to it), so a pod given it later starts with none.
        self.conntrack.delete_address(pod_ip)
        if owned_netns is not None:
            netns.remove(owned_netns)

    def orphans(self, known_ifnames: set[str], known_ips: set[str], known_netns: set[str],
                known_endpoint_ids: set[int]) -> list[str]:
        """Remove lxc links, endpoint entries and counters, and our netns files that no pod
        record owns (left by a crash between making them and recording the pod)."""
        removed = []
        if netns.NETNS_RUN_DIR.is_dir():
            for path in netns.NETNS_RUN_DIR.glob(f"{netns_prefix(self.config)}*"):
                if str(path) not in known_netns:
                    netns.remove(path)
                    removed.append(str(path))
        for name in self.nl.links_with_prefix(self.config.datapath.lxcPrefix):
            if name not in known_ifnames and is_host_ifname(self.config, name) and self.nl.delete_veth(name):
                removed.append(name)
        for ip in self.endpoints.all():
            if ip not in known_ips:
                self.endpoints.delete(ip)
                removed.append(f"endpoint {ip}")
        for counter in self.ep_metrics.all():
            if counter.endpoint_id not in known_endpoint_ids:
                self.ep_metrics.delete(counter.endpoint_id)
                removed.append(f"endpoint counters {counter.endpoint_id}")
        return removed

    def attached(self, ifindex: int) -> int:
        """How many of our two programs are attached to the lxc device at IFINDEX."""
        return (FROM_CONTAINER in self.nl.bpf_filters(ifindex, TC_INGRESS)) + \
            (TO_CONTAINER in self.nl.bpf_filters(ifindex, TC_EGRESS))
