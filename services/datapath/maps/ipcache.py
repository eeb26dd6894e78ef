"""cap_ipcache: IPv4 prefix -> security identity (LPM trie). Owner: routed.

Must match struct ipcache_key / struct ipcache_info in bpf/lib/ipcache.h.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
from pathlib import Path

from services.datapath.pinned import PinnedMap

PIN_NAME = "ipcache"


class IpcacheKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("ip", ct.c_ubyte * 4)]


class IpcacheInfo(ct.Structure):
    _fields_ = [("identity", ct.c_uint32), ("flags", ct.c_uint32)]


def key_for(cidr: str) -> IpcacheKey:
    net = ipaddress.IPv4Network(cidr, strict=False)
    k = IpcacheKey(prefixlen=net.prefixlen)
    ct.memmove(k.ip, net.network_address.packed, 4)
    return k


class IpcacheMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, IpcacheKey, IpcacheInfo)

    def upsert(self, cidr: str, identity: int, flags: int = 0) -> None:
        self.map.update(key_for(cidr), IpcacheInfo(identity=identity, flags=flags))

    def delete(self, cidr: str) -> bool:
        return self.map.delete(key_for(cidr))

    def upsert_many(self, entries: list[tuple[str, int, int]]) -> None:
        """Write every (cidr, identity, flags) in batches, reading nothing (MapFull: no room)."""
        self.map.update_many([(key_for(c), IpcacheInfo(identity=i, flags=f)) for c, i, f in entries])

    def delete_many(self, cidrs: list[str]) -> int:
        return self.map.delete_many([key_for(c) for c in cidrs])

    def lookup_exact(self, cidr: str) -> int | None:
        v = self.map.get(key_for(cidr))
        return None if v is None else v.identity

    def all(self) -> dict[str, int]:
        out = {}
        for k, v in self.map.items():
            out[f"{ipaddress.IPv4Address(bytes(k.ip))}/{k.prefixlen}"] = v.identity
        return out

    def close(self) -> None:
        self.map.close()
