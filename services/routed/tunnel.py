"""Tunnel mode: the node's VXLAN device, its program, and pods on other nodes behind it.

One collect-metadata VXLAN device per node (cap_vxlan, UDP 8472 as Cilium's vxlan tunnel).
from_container encapsulates a packet for a pod whose ipcache entry names a tunnel endpoint
(bpf/lib/overlay.h), with the source identity as the VNI: it writes the VXLAN headers
itself and sends the packet out of the underlay device when the kernel's FIB has a resolved
neighbour for that node, and hands it to this device otherwise. The receiving node's
from_netdev, at its underlay device (services/routed/netdev.py), takes the headers off and
delivers the packet into the pod after its ingress policy; what it leaves (and everything
with datapath.hostLegacyRouting) reaches from_overlay at this device's tc ingress, which does
the same. Either way the kernel's own VXLAN path, which gives every received packet a
metadata dst freed through RCU, is the fallback, not the way (docs/benchmarks.md section 8).
The device's ifindex is handed to the datapath through cap_tunnel
(services/datapath/maps/tunnel.py): without it, tunnelled packets are dropped. The overlay's
UDP port is exempt from the host's connection tracking while the device is ours
(services.routed.iptables.ensure_notrack).

Everything here is synchronous netlink or map work, for the netlink worker thread of
whichever namespace is the node's (services/datapath/netlink.py). Setting up is undone on
failure; removing treats already-gone pieces as success.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from services.datapath import bpfsys, loader
from services.datapath.maps.tunnel import FROM_OVERLAY, PORT, TunnelMap  # noqa: F401 - PORT: this module's API too
from services.datapath.mtu import OVERHEAD, pod_mtu, pod_mtu_on  # noqa: F401 - this module's API too
from services.datapath.netlink import TC_INGRESS, Netlink
from services.routed import iptables
from services.runtime.bus import ServiceError
from services.runtime.config import NodeConfig
from services.wire.messages import INVALID

DEVICE = "cap_vxlan"
REMOTE_SOURCE = "remote"     # the ipcache claim source of a pod on another node
MAX_VNI = (1 << 24) - 1      # the VNI carries the source identity


def pinned_program(config: NodeConfig, name: str) -> int:
    """An fd of lxc.c's program NAME (from_overlay, from_netdev): the copy endpointd pinned
    with its programs (it compiles lxc.c once its maps' owners are ready), else compiled and
    pinned now, in a child process."""
    try:
        return bpfsys.obj_get(str(Path(config.datapath.bpfRoot) / loader.PROGRAMS_DIR / name))
    except FileNotFoundError:
        return loader.pin_programs("lxc.c", config, (name,))[name]


def overlay_program(config: NodeConfig) -> int:
    """An fd of from_overlay (pinned_program)."""
    return pinned_program(config, FROM_OVERLAY)


def ensure(nl: Netlink, config: NodeConfig, name: str = DEVICE) -> int:
    """Tunnel mode on this node: the device, its program, the datapath told. The ifindex."""
    fd = overlay_program(config)
    try:
        return ensure_device(nl, config, fd, name)
    finally:
        os.close(fd)


def ensure_device(nl: Netlink, config: NodeConfig, program_fd: int, name: str = DEVICE) -> int:
    """The VXLAN device NAME up, from_overlay (PROGRAM_FD) at its ingress, its traffic
    untracked, and the datapath told its ifindex; returns the ifindex. On failure the device
    and the no-track rule are removed again."""
    link = nl.ensure_vxlan(name, PORT)
    tunnels = TunnelMap(Path(config.datapath.bpfRoot))
    try:
        nl.attach_bpf(link.index, program_fd, FROM_OVERLAY, TC_INGRESS)
        iptables.ensure_notrack(PORT)
        tunnels.set_device(link.index)
    except BaseException:
        iptables.remove_notrack(PORT)
        nl.delete_link(name)
        raise
    finally:
        tunnels.close()
    return link.index


def remove_device(nl: Netlink, config: NodeConfig, name: str = DEVICE) -> None:
    """The datapath told there is no overlay (what it would encapsulate is dropped, with
    DROP_NO_TUNNEL_ENDPOINT), then the device deleted and the no-track rule removed."""
    tunnels = TunnelMap(Path(config.datapath.bpfRoot))
    try:
        tunnels.set_device(0)
    finally:
        tunnels.close()
    nl.delete_link(name)
    iptables.remove_notrack(PORT)


def remote_cidr(pod_ip: str) -> str:
    """POD_IP (an IPv4 address or /32) as the ipcache prefix of a remote pod."""
    try:
        net = ipaddress.IPv4Network(pod_ip, strict=True)
    except ValueError as exc:
        raise ServiceError(INVALID, f"pod_ip: {exc}") from None
    if net.prefixlen != 32:
        raise ServiceError(INVALID, f"pod_ip: {pod_ip} is not one address")
    return str(net)


def remote_entry(pod_ip: str, identity: int, node_ip: str) -> tuple[str, int, str]:
    """A remote pod's ipcache claim, checked: (prefix, identity, tunnel endpoint). NODE_IP is
    its node's underlay address in tunnel mode, "" in native routing."""
    cidr = remote_cidr(pod_ip)
    if isinstance(identity, bool) or not isinstance(identity, int) or not 0 < identity <= MAX_VNI:
        raise ServiceError(INVALID, f"identity: {identity!r} is not a pod identity (1..{MAX_VNI})")
    if node_ip:
        try:
            addr = ipaddress.IPv4Address(node_ip)
        except ValueError as exc:
            raise ServiceError(INVALID, f"node_ip: {exc}") from None
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
            raise ServiceError(INVALID, f"node_ip: {node_ip} is not a node's underlay address")
        node_ip = str(addr)
    return cidr, identity, node_ip
