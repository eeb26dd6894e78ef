"""cap_endpoints: local pods by IPv4 address, and cap_endpoints_gen: the map's generation.
Owner: endpointd.

Must match struct endpoint_key / struct endpoint_info in bpf/lib/endpoints.h.

The datapath keeps copies of endpoint entries in conntrack (what an established connection's
packets need to be delivered), each with the generation it was read at. So every change
here is followed by a new generation, one never used before: the copies of older ones are
then taken for stale, and the next packet of each connection reads the entries again.
"""
from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

from services.datapath.pinned import MapError, PinnedMap, filled

PIN_NAME = "endpoints"
GEN_PIN_NAME = "endpoints_gen"
GEN_KEY = 0             # the one key of cap_endpoints_gen (ENDPOINTS_GEN_KEY)
FLAG_AUDIT = 1          # endpoint_info.flags: policy audit mode for this endpoint


class EndpointKey(ct.Structure):
    _fields_ = [("ip", ct.c_ubyte * 4)]          # network byte order


class EndpointInfo(ct.Structure):
    _fields_ = [
        ("ifindex", ct.c_uint32),
        ("identity", ct.c_uint32),
        ("endpoint_id", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("host_mac", ct.c_ubyte * 6),
        ("pod_mac", ct.c_ubyte * 6),
    ]


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(raw) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


@dataclass(frozen=True)
class Endpoint:
    ip: str
    ifindex: int
    identity: int
    endpoint_id: int
    host_mac: str
    pod_mac: str
    flags: int = 0

    def key(self) -> EndpointKey:
        return key_for(self.ip)

    def value(self) -> EndpointInfo:
        v = filled(EndpointInfo, ifindex=self.ifindex, identity=self.identity,
                   endpoint_id=self.endpoint_id, flags=self.flags)
        ct.memmove(v.host_mac, mac_bytes(self.host_mac), 6)
        ct.memmove(v.pod_mac, mac_bytes(self.pod_mac), 6)
        return v


def key_for(ip: str) -> EndpointKey:
    k = EndpointKey()
    ct.memmove(k.ip, ipaddress.IPv4Address(ip).packed, 4)
    return k


def next_generation(current: int, now_ns: int) -> int:
    """A generation after CURRENT: the monotonic clock, or one more than CURRENT if the clock
    is not past it. Clock readings make it one never used before, also across processes
    (and restarts: the pinned map outlives endpointd, CLOCK_MONOTONIC lasts as long)."""
    return max(current + 1, now_ns)


class EndpointMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, EndpointKey, EndpointInfo)
        try:
            self.gen = PinnedMap(bpf_root / GEN_PIN_NAME, ct.c_uint32, ct.c_uint64)
        except MapError:
            self.map.close()
            raise

    def upsert(self, ep: Endpoint) -> None:
        self.map.update(ep.key(), ep.value())
        self._next_generation()

    def delete(self, ip: str) -> bool:
        try:
            return self.map.delete(key_for(ip))
        finally:
            self._next_generation()

    def generation(self) -> int:
        value = self.gen.get(ct.c_uint32(GEN_KEY))
        if value is None:
            raise MapError(errno.ENOENT, f"{self.gen.path} has no key {GEN_KEY}")
        return value.value

    def _next_generation(self) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.gen.update(ct.c_uint32(GEN_KEY), ct.c_uint64(next_generation(self.generation(), now)))

    def get(self, ip: str) -> Endpoint | None:
        v = self.map.get(key_for(ip))
        return None if v is None else _endpoint(ip, v)

    def all(self) -> dict[str, Endpoint]:
        out = {}
        for k, v in self.map.items():
            ip = str(ipaddress.IPv4Address(bytes(k.ip)))
            out[ip] = _endpoint(ip, v)
        return out

    def close(self) -> None:
        self.map.close()
        self.gen.close()


def _endpoint(ip: str, v: EndpointInfo) -> Endpoint:
    return Endpoint(ip=ip, ifindex=v.ifindex, identity=v.identity, endpoint_id=v.endpoint_id,
                    host_mac=mac_str(v.host_mac), pod_mac=mac_str(v.pod_mac), flags=v.flags)
