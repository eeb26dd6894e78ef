"""from_netdev at the node's underlay device: what comes from other nodes' pods.

In native cluster routing, from_container sends a packet for a pod on another node straight
out of the underlay device (bpf/lib/host_routing.h), and the receiving node's from_netdev, at
its underlay device's tc ingress, judges the pod's ingress policy and delivers the packet
into the pod (bpf/lxc.c): neither node's host stack forwards it. In tunnel mode from_netdev
also takes the VXLAN headers off what other nodes' from_container encapsulated
(bpf/lib/overlay.h), so the kernel's VXLAN receive is only the fallback. The underlay device
is the link holding cluster.underlayIP. With datapath.hostLegacyRouting (Cilium's
--enable-host-legacy-routing) the host stack forwards instead: from_container passes such
packets to it (or to the VXLAN device), and from_netdev is taken off the device, so that
to_container (or from_overlay) judges them. With datapath.bigTCP (native routing only) the
underlay device is let carry the pods' 192 KiB packets too: were it not, the kernel would
cut each one up in software on its way out.

Synchronous netlink work, for the netlink worker thread of the node's namespace.
"""
from __future__ import annotations

import os

from services.datapath.maps.tunnel import FROM_NETDEV
from services.datapath.netlink import (BIG_TCP_SIZE, TC_INGRESS, InterfaceNotFound, KernelError, Netlink,
                                       ipv4_gso_sizes, set_ipv4_gso_max)
from services.routed.tunnel import pinned_program
from services.runtime.config import NodeConfig


def ensure(nl: Netlink, config: NodeConfig) -> int:
    """from_netdev at the underlay device's ingress (none with hostLegacyRouting). The
    device's ifindex."""
    link = nl.link_of_address(config.cluster.underlayIP)
    if config.datapath.hostLegacyRouting:
        detach(nl, link.index)
        return link.index
    fd = pinned_program(config, FROM_NETDEV)
    try:
        attach(nl, link.index, fd)
    finally:
        os.close(fd)
    return link.index


def big_tcp(nl: Netlink, config: NodeConfig) -> str:
    """With datapath.bigTCP, the underlay device's IPv4 GSO/GRO size raised to BIG_TCP_SIZE
    (left as it is otherwise: the device is the host's). What stands in the way, or ""."""
    if not config.datapath.bigTCP:
        return ""
    link = nl.link_of_address(config.cluster.underlayIP)
    size, tso = ipv4_gso_sizes(link.index)
    if size >= BIG_TCP_SIZE:
        return ""
    if tso < BIG_TCP_SIZE:
        return (f"{link.name} sends at most {tso}-byte GSO packets (tso_max_size): pods' BIG TCP packets "
                "to other nodes are cut up in software there")
    try:
        set_ipv4_gso_max(link.index, BIG_TCP_SIZE)
    except KernelError as exc:
        return f"{link.name}: {exc.strerror}"
    return ""


def attach(nl: Netlink, index: int, program_fd: int) -> None:
    nl.attach_bpf(index, program_fd, FROM_NETDEV, TC_INGRESS)


def detach(nl: Netlink, index: int) -> bool:
    """from_netdev off the device INDEX (another program there is left alone). Whether it was on."""
    if FROM_NETDEV not in nl.bpf_filters(index, TC_INGRESS):
        return False
    nl.detach_bpf(index, TC_INGRESS)
    return True


def remove(nl: Netlink, config: NodeConfig) -> bool:
    """from_netdev off the underlay device, if there is one holding cluster.underlayIP (purge)."""
    if not config.cluster.enabled:
        return False
    try:
        index = nl.link_of_address(config.cluster.underlayIP).index
    except InterfaceNotFound:
        return False
    return detach(nl, index)
