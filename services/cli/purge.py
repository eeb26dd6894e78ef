"""Remove every trace of a node: pods' links and namespaces, the router device, from_netdev on
the underlay device, iptables chains (the overlay's no-track rule too), pinned maps and the
state directory."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from services.datapath import netns
from services.datapath.netlink import Netlink
from services.endpointd.plumbing import is_host_ifname, netns_prefix
from services.routed import iptables, netdev, tunnel
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
        if netdev.remove(nl, config):
            removed.append(f"{netdev.FROM_NETDEV} on the underlay device")
    finally:
        nl.close()
    if netns.NETNS_RUN_DIR.is_dir():
        for path in sorted(netns.NETNS_RUN_DIR.glob(f"{netns_prefix(config)}*")):
            netns.remove(path)
            removed.append(f"netns {path}")
    iptables.remove(config.podCIDR, config.datapath.routerDevice)
    iptables.remove_notrack(tunnel.PORT)
    root = Path(config.datapath.bpfRoot)
    if root.exists():
        shutil.rmtree(root)
        removed.append(f"pinned maps {root}")
    if config.state_path.exists():
        _remove_state(config.state_path)
        removed.append(f"state {config.state_path}")
    return removed


def _remove_state(path: Path) -> None:
    """Remove the state directory. One that is a mount point (in a container, the host's
    directory bind-mounted) cannot be removed from inside the mount and is left empty."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
