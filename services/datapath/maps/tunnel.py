"""cap_tunnel: the node's overlay (VXLAN) device, where from_container sends what it
encapsulates. One entry. cap_tunnel_peers: the other nodes' underlay addresses, the only
senders whose VXLAN packets the node takes in. Owner: routed (services/routed/tunnel.py,
services/routed/cluster.py).

Must match struct tunnel_info and cap_tunnel_peers in bpf/lib/tunnel.h.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
from pathlib import Path

from services.datapath.pinned import PinnedMap, filled

PIN_NAME = "tunnel"
PEERS_PIN_NAME = "tunnel_peers"
TUNNEL_KEY = 0            # shared with bpf/lib/tunnel.h
FROM_OVERLAY = "from_overlay"     # bpf/lxc.c's program for the device's tc ingress
FROM_NETDEV = "from_netdev"       # ... and for the underlay device's (services/routed/netdev.py)
PORT = 8472               # the overlay's UDP port, Linux's and Cilium's (IANA's is 4789); lxc.c's OVERLAY_PORT


class TunnelInfo(ct.Structure):
    _fields_ = [("ifindex", ct.c_uint32), ("flags", ct.c_uint32)]


class TunnelMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, ct.c_uint32, TunnelInfo)

    def set_device(self, ifindex: int) -> None:
        """IFINDEX is the overlay device from now on; 0: there is none (encapsulated
        packets are dropped, DROP_NO_TUNNEL_ENDPOINT)."""
        self.map.update(ct.c_uint32(TUNNEL_KEY), filled(TunnelInfo, ifindex=ifindex, flags=0))

    def device(self) -> int:
        v = self.map.get(ct.c_uint32(TUNNEL_KEY))
        if v is None:
            raise LookupError(f"{self.map.path}: no entry {TUNNEL_KEY}")
        return v.ifindex

    def close(self) -> None:
        self.map.close()


def _peer_key(ip: str) -> ct.c_uint32:
    """An underlay IPv4 address as cap_tunnel_peers' key: its bytes in network order."""
    return ct.c_uint32.from_buffer_copy(ipaddress.IPv4Address(ip).packed)


class TunnelPeersMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PEERS_PIN_NAME, ct.c_uint32, ct.c_uint32)

    def peers(self) -> set[str]:
        return {str(ipaddress.IPv4Address(bytes(key))) for key in self.map.keys()}

    def add(self, ip: str) -> None:
        self.map.update(_peer_key(ip), ct.c_uint32(1))

    def remove(self, ip: str) -> bool:
        return self.map.delete(_peer_key(ip))

    def close(self) -> None:
        self.map.close()
