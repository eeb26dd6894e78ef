"""Remove every trace of a node: pods' links and namespaces, the router device, iptables
chains, pinned maps and the state directory."""
from __future__ import annotations

import shutil
from pathlib import Path

from services.datapath import netns
from services.datapath.netlink import Netlink
from services.endpointd.plumbing import is_host_ifname, netns_prefix
from services.routed import iptables
from services.runtime.config import NodeConfig


def purge_node(config: NodeConfig) -> list[str]:
    removed = []
    nl = Netlink()
    try:
        for name in nl.links_with_prefix(config.datapath.lxcPrefix):
            if is_host_ifname(config, name) and nl.delete_veth(name):
                removed.append(f"link {name}")
        for name in (config.datapath.routerDevice, config.datapath.routerPeer):
            if nl.delete_veth(name):
                removed.append(f"link {name}")
    finally:
        nl.close()
    if netns.NETNS_RUN_DIR.is_dir():
        for path in sorted(netns.NETNS_RUN_DIR.glob(f"{netns_prefix(config)}*")):
            netns.remove(path)
            removed.append(f"netns {path}")
    iptables.remove(config.podCIDR, config.datapath.routerDevice)
    root = Path(config.datapath.bpfRoot)
    if root.exists():
        shutil.rmtree(root)
        removed.append(f"pinned maps {root}")
    if config.state_path.exists():
        shutil.rmtree(config.state_path)
        removed.append(f"state {config.state_path}")
    return removed

