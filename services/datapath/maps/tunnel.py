"""cap_tunnel: the node's overlay (VXLAN) device, where from_container sends what it
encapsulates. One entry. Owner: routed (services/routed/tunnel.py).

Must match struct tunnel_info in bpf/lib/tunnel.h.
"""
from __future__ import annotations

import ctypes as ct
from pathlib import Path

from services.datapath.pinned import PinnedMap, filled

PIN_NAME = "tunnel"
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
