"""Pod MTU in tunnel mode: room for the VXLAN encapsulation on the underlay.

endpointd gives pods without spec.mtu this MTU when the node routes to other nodes through
its VXLAN device (cluster.routing: tunnel); routed's tunnel module uses the same figures.
"""
from __future__ import annotations

from services.datapath.netlink import Netlink

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
