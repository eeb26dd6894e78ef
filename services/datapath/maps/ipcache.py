"""cap_ipcache: IPv4 prefix -> security identity (LPM trie), and for a pod on another node
reached through the overlay, that node's underlay address. Owner: routed.

Must match struct ipcache_key / struct ipcache_info in bpf/lib/ipcache.h.

Upgrades: a map pinned by an older capillary, whose values lack tunnel_endpoint, cannot be
used by the programs of this one (the kernel fixes a map's value size at creation). routed
moves it aside before compiling its maps (set_aside_old_layout) and copies every entry into
the new map afterwards (restore_old_layout), so nothing is lost, even across a crash in
between: the moved map stays pinned until its entries are all in the new one.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import struct
from pathlib import Path

from services.datapath import bpfsys
from services.datapath.pinned import MapError, PinnedMap
from services.wire import prefix

PIN_NAME = "ipcache"
OLD_LAYOUT_PIN = "ipcache_v1"     # an older map, moved aside until its entries are copied (bpffs refuses dots)


class IpcacheKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("ip", ct.c_ubyte * 4)]


class IpcacheInfo(ct.Structure):
    _fields_ = [("identity", ct.c_uint32), ("flags", ct.c_uint32), ("tunnel_endpoint", ct.c_ubyte * 4)]


class IpcacheInfoV1(ct.Structure):
    """The value before tunnel_endpoint (capillary before tunnel mode)."""
    _fields_ = [("identity", ct.c_uint32), ("flags", ct.c_uint32)]


# struct ipcache_key and struct ipcache_info as bytes: a prefix in its plain spelling is read
# as numbers (ipaddress costs microseconds a prefix), and many entries are written at once
_KEY_BYTES = struct.Struct("=I4s")
_INFO_BYTES = struct.Struct("=II4s")
assert _KEY_BYTES.size == ct.sizeof(IpcacheKey) and _INFO_BYTES.size == ct.sizeof(IpcacheInfo)


def _packed(cidr: str, identity: int, flags: int, tunnel_endpoint: str) -> tuple[bytes, bytes]:
    """One entry's key and value bytes, without a value struct for the common entry."""
    if tunnel_endpoint or not 0 <= identity <= 0xFFFFFFFF or not 0 <= flags <= 0xFFFFFFFF:
        return bytes(key_for(cidr)), bytes(info_for(identity, flags, tunnel_endpoint))
    return bytes(key_for(cidr)), _INFO_BYTES.pack(identity, flags, bytes(4))


def key_for(cidr: str) -> IpcacheKey:
    plain = prefix.parse(cidr)
    if plain is not None:
        address, plen = plain
        address &= ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
        return IpcacheKey.from_buffer_copy(_KEY_BYTES.pack(plen, address.to_bytes(4, "big")))
    net = ipaddress.IPv4Network(cidr, strict=False)
    k = IpcacheKey(prefixlen=net.prefixlen)
    ct.memmove(k.ip, net.network_address.packed, 4)
    return k


def cidr_of(key: IpcacheKey) -> str:
    return f"{ipaddress.IPv4Address(bytes(key.ip))}/{key.prefixlen}"


def info_for(identity: int, flags: int = 0, tunnel_endpoint: str = "") -> IpcacheInfo:
    """A value; TUNNEL_ENDPOINT is an IPv4 address, "" for none (a local or unrouted prefix)."""
    info = IpcacheInfo(identity=identity, flags=flags)
    if tunnel_endpoint:
        try:
            packed = ipaddress.IPv4Address(tunnel_endpoint).packed
        except ValueError as exc:
            raise ValueError(f"tunnel_endpoint: {exc}") from None
        if packed == bytes(4):
            raise ValueError("tunnel_endpoint: 0.0.0.0 is not a node address")
        ct.memmove(info.tunnel_endpoint, packed, 4)
    return info


def tunnel_endpoint_of(info: IpcacheInfo) -> str:
    raw = bytes(info.tunnel_endpoint)
    return "" if raw == bytes(4) else str(ipaddress.IPv4Address(raw))


class IpcacheMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, IpcacheKey, IpcacheInfo)

    def upsert(self, cidr: str, identity: int, flags: int = 0, tunnel_endpoint: str = "") -> None:
        self.map.update(key_for(cidr), info_for(identity, flags, tunnel_endpoint))

    def delete(self, cidr: str) -> bool:
        return self.map.delete(key_for(cidr))

    def upsert_many(self, entries: list[tuple[str, int, int, str]]) -> None:
        """Write every (cidr, identity, flags, tunnel_endpoint) in batches, reading nothing
        (MapFull: no room)."""
        packed = [_packed(*entry) for entry in entries]
        self.map.update_packed(b"".join(k for k, _ in packed), b"".join(v for _, v in packed))

    def delete_many(self, cidrs: list[str]) -> int:
        return self.map.delete_many([key_for(c) for c in cidrs])

    def lookup_exact(self, cidr: str) -> int | None:
        v = self.map.get(key_for(cidr))
        return None if v is None else v.identity

    def tunnel_endpoint(self, cidr: str) -> str | None:
        """CIDR's tunnel endpoint ("" for none), or None when CIDR has no entry."""
        v = self.map.get(key_for(cidr))
        return None if v is None else tunnel_endpoint_of(v)

    def all(self) -> dict[str, int]:
        return {cidr_of(k): v.identity for k, v in self.map.items()}

    def close(self) -> None:
        self.map.close()


def _value_size(path: Path) -> int:
    fd = bpfsys.obj_get(str(path))
    try:
        return bpfsys.map_info(fd).value_size
    finally:
        os.close(fd)


def check_layout(bpf_root: Path) -> None:
    """MapError unless the pinned ipcache (if any) has this capillary's layout: a program
    compiled against another would fail the verifier with nothing to say why."""
    path = bpf_root / PIN_NAME
    if path.exists() and (size := _value_size(path)) != ct.sizeof(IpcacheInfo):
        raise MapError(0, f"{path} holds {size}-byte values, not the {ct.sizeof(IpcacheInfo)} of "
                          "struct ipcache_info: pinned by another capillary version (routed upgrades "
                          "an older one when it starts)")


def set_aside_old_layout(bpf_root: Path) -> bool:
    """Before routed_maps.c is compiled: move an ipcache of the old layout aside (the compile
    then makes a new one). True when an old map waits for restore_old_layout (moved now, or
    by a start that crashed before copying). A pinned ipcache of any other layout is a
    MapError: nothing here knows how to read it, and nothing is touched."""
    path, old = bpf_root / PIN_NAME, bpf_root / OLD_LAYOUT_PIN
    if path.exists():
        size = _value_size(path)
        if size == ct.sizeof(IpcacheInfoV1) and not old.exists():
            os.rename(path, old)
        elif size != ct.sizeof(IpcacheInfo):
            raise MapError(0, f"{path} holds {size}-byte values; this capillary reads "
                              f"{ct.sizeof(IpcacheInfo)}-byte ipcache values (struct ipcache_info) "
                              f"and upgrades only from {ct.sizeof(IpcacheInfoV1)}: remove the pin to start afresh")
    return old.exists()


def restore_old_layout(bpf_root: Path) -> int:
    """Copy every entry of the old map moved aside into the new ipcache (no tunnel endpoint),
    then unpin the old one. Entries the new map already holds are kept. Returns how many
    were copied."""
    old_path = bpf_root / OLD_LAYOUT_PIN
    copied = 0
    with PinnedMap(old_path, IpcacheKey, IpcacheInfoV1) as old:
        new = IpcacheMap(bpf_root)
        try:
            for key, value in old.items():
                if new.map.get(key) is None:
                    new.map.update(key, info_for(value.identity, value.flags))
                    copied += 1
        finally:
            new.close()
    old_path.unlink()
    return copied


class FakeIpcacheMap:
    """A dict-backed stand-in for IpcacheMap in unit tests: the same operations, and .map
    with items() of raw keys and values as the pinned map gives them."""

    def __init__(self) -> None:
        self.entries: dict[str, IpcacheInfo] = {}
        self.map = self

    def upsert(self, cidr: str, identity: int, flags: int = 0, tunnel_endpoint: str = "") -> None:
        self.entries[cidr_of(key_for(cidr))] = info_for(identity, flags, tunnel_endpoint)

    def delete(self, cidr: str) -> bool:
        return self.entries.pop(cidr_of(key_for(cidr)), None) is not None

    def upsert_many(self, entries: list[tuple[str, int, int, str]]) -> None:
        for cidr, identity, flags, tunnel in entries:
            self.upsert(cidr, identity, flags, tunnel)

    def delete_many(self, cidrs: list[str]) -> int:
        return sum(self.delete(c) for c in cidrs)

    def lookup_exact(self, cidr: str) -> int | None:
        v = self.entries.get(cidr)
        return None if v is None else v.identity

    def tunnel_endpoint(self, cidr: str) -> str | None:
        v = self.entries.get(cidr)
        return None if v is None else tunnel_endpoint_of(v)

    def all(self) -> dict[str, int]:
        return {cidr: v.identity for cidr, v in self.entries.items()}

    def items(self):
        return [(key_for(cidr), v) for cidr, v in self.entries.items()]

    def close(self) -> None:
        pass
