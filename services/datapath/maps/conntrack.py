"""cap_ct: connection tracking (LRU), each entry with its connection's packet and byte counts
per direction. Owner: endpointd; read by the CLI and flowd.

Must match struct ct_key / struct ct_entry / struct ct_way in bpf/lib/conntrack.h.

The map is an LRU hash, as Cilium's CT maps: when it is full, a new connection's entry
takes the place of the least recently used one, so connections that carry packets keep
theirs and idle ones go first. An entry that went (evicted, swept or deleted) only means
the connection's next packet meets policy again. endpointd removes a pod's entries when the
pod goes, and sweeps the map (sweep()) for expired entries and entries of pod addresses no
pod holds, so a new pod given a reused address inherits no connection. Whatever removes an
entry here removes its counts with it.

Each direction of an entry (a "way") also holds a copy of what delivering its packets needs
from the endpoint map, valid while the endpoint map's generation is the one it names
(endpoints.py); an entry written here starts with none (generation 0), and the datapath
copies it on the connection's next packet.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import (CT_AUDIT, CT_CLOSING, CT_LIFETIME_CLOSING, CT_LIFETIME_OTHER,
                                       CT_LIFETIME_TCP, CT_SEEN_REPLY)
from services.datapath import bpfsys
from services.datapath.pinned import PinnedMap

PIN_NAME = "ct"
OLD_ACCT_PIN_NAME = "ct_acct"      # per-CPU connection counts, beside the entries until 2026-11
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP"}
PROTO_TCP = 6
NS = 1_000_000_000


class CtKey(ct.Structure):
    _fields_ = [("saddr", ct.c_ubyte * 4), ("daddr", ct.c_ubyte * 4), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("protocol", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class CtWay(ct.Structure):
    """One direction of a connection (0: the one it was opened in, 1: its replies)."""
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64), ("gen", ct.c_uint64),
                ("from_ifindex", ct.c_uint32), ("to_ifindex", ct.c_uint32),
                ("from_endpoint", ct.c_uint16), ("to_endpoint", ct.c_uint16),
                ("host_mac", ct.c_ubyte * 6), ("pod_mac", ct.c_ubyte * 6), ("pad", ct.c_ubyte * 16)]


class CtEntry(ct.Structure):
    _fields_ = [("created", ct.c_uint64), ("last_seen", ct.c_uint64), ("flags", ct.c_uint32),
                ("rule_id", ct.c_uint32), ("reported", ct.c_uint16 * 4), ("pad", ct.c_ubyte * 32),
                ("way", CtWay * 2)]


@dataclass(frozen=True)
class Connection:
    protocol: str
    source: str
    sport: int
    destination: str
    dport: int
    packets: int
    bytes: int
    age_seconds: float
    idle_seconds: float
    replied: bool
    audit: bool
    rule_id: int


@dataclass(frozen=True)
class Sweep:
    """What one sweep found: entries kept, and entries removed by cause."""

    alive: int = 0
    expired: int = 0
    orphaned: int = 0


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns()'s clock


def expired(protocol: int, entry: CtEntry, now_ns: int) -> bool:
    """Whether the datapath would take ENTRY as gone at NOW_NS (ct_expired in conntrack.h)."""
    lifetime = CT_LIFETIME_OTHER if protocol != PROTO_TCP else \
        CT_LIFETIME_CLOSING if entry.flags & CT_CLOSING else CT_LIFETIME_TCP
    return now_ns - entry.last_seen > lifetime * NS


def _address(raw) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(bytes(raw))


class Orphans:
    """Whether a key names an address of the pod CIDR PODS that no live pod holds (the
    router address is the host's, never an orphan). Compares raw bytes: a sweep asks this
    of every entry."""

    def __init__(self, pods: ipaddress.IPv4Network, router: ipaddress.IPv4Address,
                 live: set[ipaddress.IPv4Address]) -> None:
        self.net, self.mask = int(pods.network_address), int(pods.netmask)
        self.known = {ip.packed for ip in live} | {router.packed}

    def __call__(self, key: CtKey) -> bool:
        return any(int.from_bytes(raw, "big") & self.mask == self.net and raw not in self.known
                   for raw in (bytes(key.saddr), bytes(key.daddr)))


def drop_old_layout(bpf_root: Path) -> bool:
    """Before lxc.c compiles: unpin a conntrack map whose entries have another layout than
    struct ct_entry (a program compiled against it would not load), and the separate counts
    map older versions kept. Whether anything went. Losing the entries is what an LRU eviction
    does: each connection's next packet meets policy again and makes a new one."""
    path, removed = bpf_root / PIN_NAME, False
    if path.exists():
        fd = bpfsys.obj_get(str(path))
        try:
            size = bpfsys.map_info(fd).value_size
        finally:
            os.close(fd)
        if size != ct.sizeof(CtEntry):
            path.unlink()
            removed = True
    old_acct = bpf_root / OLD_ACCT_PIN_NAME
    if old_acct.exists():
        old_acct.unlink()
        removed = True
    return removed


class ConntrackMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, CtKey, CtEntry)

    def ways(self, key: CtKey) -> list[tuple[int, int]]:
        """(packets, bytes) of each direction of KEY's connection; [] when it has no entry."""
        entry = self.map.get(key)
        return [] if entry is None else [(w.packets, w.bytes) for w in entry.way]

    def counts(self, key: CtKey) -> tuple[int, int]:
        """(packets, bytes) of KEY's connection, both directions; (0, 0) when it has none."""
        ways = self.ways(key)
        return sum(p for p, _ in ways), sum(b for _, b in ways)

    def put(self, key: CtKey, entry: CtEntry, packets: int = 0, size: int = 0) -> None:
        """Write an entry, with PACKETS and SIZE bytes counted in its first direction, as
        ct_create does."""
        entry.way[0].packets, entry.way[0].bytes = packets, size
        self.map.update(key, entry)

    def _delete(self, key: CtKey) -> int:
        return self.map.delete(key)

    def all(self) -> list[Connection]:
        now = _monotonic_ns()
        out = []
        for k, v in self.map.items():
            packets, size = sum(w.packets for w in v.way), sum(w.bytes for w in v.way)
            out.append(Connection(
                protocol=PROTOCOLS.get(k.protocol, str(k.protocol)),
                source=str(ipaddress.IPv4Address(bytes(k.saddr))), sport=socket.ntohs(k.sport),
                destination=str(ipaddress.IPv4Address(bytes(k.daddr))), dport=socket.ntohs(k.dport),
                packets=packets, bytes=size, age_seconds=(now - v.created) / 1e9,
                idle_seconds=(now - v.last_seen) / 1e9, replied=bool(v.flags & CT_SEEN_REPLY),
                audit=bool(v.flags & CT_AUDIT), rule_id=v.rule_id))
        return out

    def delete_address(self, ip: str) -> int:
        """Remove every entry with IP at either end; how many went."""
        packed = ipaddress.IPv4Address(ip).packed
        removed = 0
        for keys, _values, n in self.map.batches():
            for k in keys[:n]:
                if packed in (bytes(k.saddr), bytes(k.daddr)):
                    removed += self._delete(k)
        return removed

    def sweep(self, pods: ipaddress.IPv4Network, router: ipaddress.IPv4Address,
              live: set[ipaddress.IPv4Address]) -> Sweep:
        """Remove expired entries and entries of pod addresses not in LIVE (see orphaned()).
        LIVE must be the complete set of pods' addresses: an address left out loses its
        connections' entries (their next packets meet policy again)."""
        now, orphaned = _monotonic_ns(), Orphans(pods, router, live)
        alive = old = orphans = 0
        for keys, values, n in self.map.batches():
            for k, v in zip(keys[:n], values[:n]):
                if orphaned(k):
                    orphans += self._delete(k)
                elif expired(k.protocol, v, now):
                    old += self._delete(k)
                else:
                    alive += 1
        return Sweep(alive=alive, expired=old, orphaned=orphans)

    def flush(self) -> int:
        keys = list(self.map.keys())
        for k in keys:
            self._delete(k)
        return len(keys)

    def close(self) -> None:
        self.map.close()
