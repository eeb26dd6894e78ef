"""cap_ct: connection tracking (LRU). Owner: endpointd; read by the CLI and flowd.

Must match struct ct_key / struct ct_entry in bpf/lib/conntrack.h.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import CT_AUDIT, CT_SEEN_REPLY
from services.datapath.pinned import PinnedMap

PIN_NAME = "ct"
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP"}


class CtKey(ct.Structure):
    _fields_ = [("saddr", ct.c_ubyte * 4), ("daddr", ct.c_ubyte * 4), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("protocol", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class CtEntry(ct.Structure):
    _fields_ = [("created", ct.c_uint64), ("last_seen", ct.c_uint64), ("packets", ct.c_uint64),
                ("bytes", ct.c_uint64), ("flags", ct.c_uint32), ("rule_id", ct.c_uint32),
                ("reported", ct.c_uint16 * 4)]


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


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns()'s clock


class ConntrackMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, CtKey, CtEntry)

    def all(self) -> list[Connection]:
        now = _monotonic_ns()
        out = []
        for k, v in self.map.items():
            out.append(Connection(
                protocol=PROTOCOLS.get(k.protocol, str(k.protocol)),
                source=str(ipaddress.IPv4Address(bytes(k.saddr))), sport=socket.ntohs(k.sport),
                destination=str(ipaddress.IPv4Address(bytes(k.daddr))), dport=socket.ntohs(k.dport),
                packets=v.packets, bytes=v.bytes, age_seconds=(now - v.created) / 1e9,
                idle_seconds=(now - v.last_seen) / 1e9, replied=bool(v.flags & CT_SEEN_REPLY),
                audit=bool(v.flags & CT_AUDIT), rule_id=v.rule_id))
        return out

    def flush(self) -> int:
        keys = list(self.map.keys())
        for k in keys:
            self.map.delete(k)
        return len(keys)

    def close(self) -> None:
        self.map.close()
