"""Pod MTU in tunnel mode: room for the VXLAN encapsulation on the underlay; and the size of
the GSO packets pods' veths build (datapath.bigTCP).

endpointd gives pods without spec.mtu this MTU when the node routes to other nodes through
its VXLAN device (cluster.routing: tunnel); routed's tunnel module uses the same figures.
"""
from __future__ import annotations

from services.datapath.netlink import BIG_TCP_SIZE, Netlink, ipv4_gso_sizes

GSO_DEFAULT_SIZE = 65536     # the kernel's GSO size without BIG TCP
OVERHEAD = 50                # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def pod_mtu(underlay_mtu: int) -> int:
    """The MTU a pod's eth0 needs so that its packets, encapsulated, fit the underlay."""
    if underlay_mtu - OVERHEAD < 576:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves no room for {OVERHEAD} bytes of VXLAN")
    return underlay_mtu - OVERHEAD


def pod_mtu_on(nl: Netlink, underlay_ip: str) -> int:
    """pod_mtu() of the link that holds UNDERLAY_IP (this node's address on the underlay):
    what endpointd gives pods without spec.mtu in tunnel mode (Plumber's default_mtu)."""
    return pod_mtu(nl.mtu(nl.link_of_address(underlay_ip).index))


LOOPBACK_INDEX = 1


def pod_gso_max(big_tcp: bool) -> tuple[int, int, str]:
    """(new, restore, why) for pods' veths: NEW, the IPv4 GSO/GRO size endpointd sets on both
    ends of a new pod's veth (BIG_TCP_SIZE with datapath.bigTCP, else 0: the kernel's 64 KiB
    left alone); RESTORE, what a pod found at start-up gets without BIG_TCP (64 KiB, taking it
    back after a restart with the option switched off; 0 on a kernel without IPv4 BIG TCP,
    before 6.3); WHY, the reason BIG_TCP was asked for and cannot be had, or ""."""
    if not ipv4_gso_sizes(LOOPBACK_INDEX)[0]:
        why = "this kernel has no IPv4 BIG TCP (Linux 6.3 or later): pods keep 64 KiB packets" if big_tcp else ""
        return 0, 0, why
    return (BIG_TCP_SIZE if big_tcp else 0), GSO_DEFAULT_SIZE, ""
