"""The router device pair (cilium_host / cilium_net roles) and the routes pods need."""
from __future__ import annotations

from pathlib import Path

from services.datapath.netlink import Netlink, RT_SCOPE_LINK, set_rp_filter
from services.runtime.config import NodeConfig


def _sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys") / path
    if p.read_text().strip() != value:
        p.write_text(value)


def ensure_router(nl: Netlink, config: NodeConfig) -> int:
    """Router device up with the router IP, the pod CIDR routed to it, forwarding on, and
    strict reverse-path filtering on both ends of the pair (nothing may arrive there from a
    source that is not routed back through them). Returns the router device's ifindex."""
    dp = config.datapath
    host, _peer = nl.ensure_veth_pair(dp.routerDevice, dp.routerPeer)
    for name in (dp.routerDevice, dp.routerPeer):
        set_rp_filter(name)
    nl.ensure_address(host.index, str(config.router_ip), 32)
    nl.replace_route(config.podCIDR, host.index, prefsrc=str(config.router_ip), scope=RT_SCOPE_LINK)
    _sysctl("net/ipv4/ip_forward", "1")
    return host.index
