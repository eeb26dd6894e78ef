"""cap_ct: connection tracking (LRU), and cap_ct_acct: each connection's packet and byte
counts, per CPU, under the same key. Owner: endpointd; read by the CLI and flowd.

Must match struct ct_key / struct ct_entry / struct ct_acct in bpf/lib/conntrack.h.

The map is an LRU hash, as Cilium's CT maps: when it is full, a new connection's entry
takes the place of the least recently used one, so connections that carry packets keep
theirs and idle ones go first. An entry that went (evicted, swept or deleted) only means
the connection's next packet meets policy again. endpointd removes a pod's entries when the
pod goes, and sweeps the map (sweep()) for expired entries and entries of pod addresses no
pod holds, so a new pod given a reused address inherits no connection. Whatever removes an
entry here removes its counts with it.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import (CT_AUDIT, CT_CLOSING, CT_LIFETIME_CLOSING, CT_LIFETIME_OTHER,
                                       CT_LIFETIME_TCP, CT_SEEN_REPLY)
from services.datapath.pinned import MapError, PinnedMap, possible_cpus

PIN_NAME = "ct"
ACCT_PIN_NAME = "ct_acct"
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP"}
PROTO_TCP = 6
NS = 1_000_000_000


class CtKey(ct.Structure):
    _fields_ = [("saddr", ct.c_ubyte * 4), ("daddr", ct.c_ubyte * 4), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("protocol", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class CtEntry(ct.Structure):
    _fields_ = [("created", ct.c_uint64), ("last_seen", ct.c_uint64), ("flags", ct.c_uint32),
                ("rule_id", ct.c_uint32), ("reported", ct.c_uint16 * 4)]


class CtAcct(ct.Structure):
    """One CPU's share of a connection's counts (both directions)."""
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


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


class ConntrackMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, CtKey, CtEntry)
        try:
            self.acct = PinnedMap(bpf_root / ACCT_PIN_NAME, CtKey, CtAcct, percpu=True)
        except MapError:
            self.map.close()
            raise

    def counts(self, key: CtKey) -> tuple[int, int]:
        """(packets, bytes) of KEY's connection, summed over the CPUs; (0, 0) when it has none."""
        shares = self.acct.get_percpu(key)
        return sum(s.packets for s in shares), sum(s.bytes for s in shares)

    def put(self, key: CtKey, entry: CtEntry, packets: int = 0, size: int = 0) -> None:
        """Write an entry and its counts (all on the first CPU), as ct_create does."""
        shares = (CtAcct * possible_cpus())(CtAcct(packets, size))
        self.acct.update(key, shares)
        self.map.update(key, entry)

    def _delete(self, key: CtKey) -> int:
        self.acct.delete(key)
        return self.map.delete(key)

    def all(self) -> list[Connection]:
        now = _monotonic_ns()
        out = []
        for k, v in self.map.items():
            packets, size = self.counts(k)
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
        for k in list(self.acct.keys()):
            self.acct.delete(k)
        return len(keys)

    def close(self) -> None:
        self.map.close()
        self.acct.close()
