"""cap_policy: every endpoint's policy entries in one LPM trie. Owner: policyd.

Must match struct policy_key / struct policy_entry in bpf/lib/policy.h (see the key layout
there). Keys are written in network byte order so that LPM prefixes run from the endpoint
id through the peer identity to the protocol and port.
"""
from __future__ import annotations

import ctypes as ct
import struct
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from services.datapath.numbers import (POLICY_AUDIT, POLICY_DEFAULT, POLICY_DENY, POLICY_EGRESS,
                                       POLICY_INGRESS, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED)
from services.datapath.pinned import PinnedMap, filled

PIN_NAME = "policy"


class PolicyKey(ct.BigEndianStructure):
    _fields_ = [("prefixlen", ct.c_uint32), ("endpoint_id", ct.c_uint16), ("egress", ct.c_uint8),
                ("pad1", ct.c_uint8), ("identity", ct.c_uint32), ("protocol", ct.c_uint8),
                ("pad2", ct.c_uint8), ("dport", ct.c_uint16)]


class PolicyEntry(ct.Structure):
    _fields_ = [("flags", ct.c_uint16), ("match_type", ct.c_uint8), ("pad", ct.c_uint8),
                ("rule_id", ct.c_uint32), ("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


# The same layouts for packing many entries at once (write_many): struct policy_key with its
# prefixlen in host order given as the byte-swapped big-endian number (prefixlen < 256, so
# prefixlen << 24), and struct policy_entry in host order.
_KEY_BYTES = struct.Struct(">IHBBIBBH")
_ENTRY_BYTES = struct.Struct("=HBBIQQ")
assert _KEY_BYTES.size == ct.sizeof(PolicyKey) and _ENTRY_BYTES.size == ct.sizeof(PolicyEntry)

# prefixlen counts the bits after the prefixlen field itself
PREFIX_DEFAULT = 32          # endpoint + direction
PREFIX_PEER = 64             # + identity
PREFIX_PROTO = 72            # + protocol
PREFIX_PORT_BASE = 80        # + port bits


class Key(NamedTuple):
    """One entry's key, in host terms. prefixlen as in the map (see PREFIX_*). A tuple: the
    compiler and the mirror of the map hash and compare hundreds of thousands of them, and a
    tuple does both in C."""

    endpoint_id: int
    egress: bool
    identity: int
    protocol: int
    port: int
    prefixlen: int

    def raw(self) -> PolicyKey:
        # The kernel's LPM trie keeps prefixlen in host byte order; everything after it is
        # compared bytewise, so it is stored big-endian.
        k = filled(PolicyKey, prefixlen=0, endpoint_id=self.endpoint_id,
                   egress=POLICY_EGRESS if self.egress else POLICY_INGRESS,
                   identity=self.identity, protocol=self.protocol, dport=self.port)
        raw = bytearray(bytes(k))
        raw[0:4] = self.prefixlen.to_bytes(4, "little")
        return PolicyKey.from_buffer_copy(bytes(raw))

    @classmethod
    def from_raw(cls, k: PolicyKey) -> "Key":
        prefixlen = int.from_bytes(bytes(k)[0:4], "little")
        return cls(k.endpoint_id, k.egress == POLICY_EGRESS, k.identity, k.protocol, k.dport, prefixlen)


def _key_bytes(key: Key) -> bytes:
    """KEY as the bytes of its PolicyKey (as Key.raw(), without a struct per field)."""
    try:
        return _KEY_BYTES.pack(key.prefixlen << 24, key.endpoint_id, POLICY_EGRESS if key.egress else POLICY_INGRESS,
                               0, key.identity, key.protocol, 0, key.port)
    except struct.error:
        key.raw()                          # the ValueError that names the field
        raise


class Value(NamedTuple):
    flags: int
    rule_id: int
    match_type: int = 0       # POLICY_MATCH_*: what kind of rule made the entry


@dataclass(frozen=True, slots=True)
class Counted:
    value: Value
    packets: int
    bytes: int


# The prefix lengths policyd's compiler writes, longest first: what a lookup must try.
PREFIXES = (*range(PREFIX_PORT_BASE + 16, PREFIX_PORT_BASE - 1, -1), PREFIX_PROTO, PREFIX_PEER, PREFIX_DEFAULT)


def longest_match(entries: dict[Key, Value], endpoint_id: int, egress: bool, identity: int,
                  protocol: int, port: int) -> Value | None:
    """What the kernel's LPM trie answers for a full-length key, over ENTRIES holding keys
    of the PREFIXES lengths (as the compiler makes them: bits past the prefix are zero)."""
    for prefixlen in PREFIXES:
        if prefixlen >= PREFIX_PORT_BASE:
            shift = 16 - (prefixlen - PREFIX_PORT_BASE)
            key = Key(endpoint_id, egress, identity, protocol, port >> shift << shift, prefixlen)
        elif prefixlen == PREFIX_PROTO:
            key = Key(endpoint_id, egress, identity, protocol, 0, prefixlen)
        elif prefixlen == PREFIX_PEER:
            key = Key(endpoint_id, egress, identity, 0, 0, prefixlen)
        else:
            key = Key(endpoint_id, egress, 0, 0, 0, prefixlen)
        value = entries.get(key)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Decision:
    verdict: int              # VERDICT_*
    entry: Value | None       # the deciding entry; None: the endpoint has no entries


def decide(entries: dict[Key, Value], endpoint_id: int, egress: bool, peer: int, protocol: int,
           port: int) -> Decision:
    """The datapath's verdict for a new connection (policy_check in bpf/lib/policy.h, step
    for step): look up the peer's identity and identity 0; a deny from either wins, then an
    allow, then the direction's default; no entry at all fails closed."""
    exact = longest_match(entries, endpoint_id, egress, peer, protocol, port)
    any_ = longest_match(entries, endpoint_id, egress, 0, protocol, port)
    hit = next((e for e in (exact, any_) if e and e.flags & (POLICY_DENY | POLICY_DEFAULT) == POLICY_DENY), None)
    if hit is None:
        hit = next((e for e in (exact, any_) if e and not e.flags & POLICY_DEFAULT), exact or any_)
        if hit is None:
            return Decision(VERDICT_DROPPED, None)
        if not hit.flags & POLICY_DENY:
            return Decision(VERDICT_FORWARDED, hit)
    return Decision(VERDICT_AUDIT if hit.flags & POLICY_AUDIT else VERDICT_DROPPED, hit)


class PolicyMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, PolicyKey, PolicyEntry)

    def write(self, key: Key, value: Value) -> None:
        """Set flags and rule; an existing entry keeps its packet and byte counts."""
        raw = key.raw()
        current = self.map.get(raw)
        entry = PolicyEntry(flags=value.flags, match_type=value.match_type, rule_id=value.rule_id,
                            packets=current.packets if current else 0,
                            bytes=current.bytes if current else 0)
        self.map.update(raw, entry)

    def write_many(self, entries: list[tuple[Key, Value]], present: Container[Key]) -> None:
        """Write ENTRIES in map batches. Keys in PRESENT are in the map already: their packet
        and byte counts are read and kept; the others start at zero, unread. On an error the
        exception's ``done`` counts the entries written, from the first."""
        keys = bytearray()
        values = bytearray()
        pack_entry = _ENTRY_BYTES.pack
        for key, value in entries:
            raw = _key_bytes(key)
            keys += raw
            current = self.map.get(PolicyKey.from_buffer_copy(raw)) if key in present else None
            values += pack_entry(value.flags, value.match_type, 0, value.rule_id,
                                 current.packets if current else 0, current.bytes if current else 0)
        self.map.update_packed(bytes(keys), bytes(values))

    def delete(self, key: Key) -> bool:
        return self.map.delete(PolicyKey.from_buffer_copy(_key_bytes(key)))

    def counted(self, keys: list[Key]) -> dict[Key, Counted]:
        """KEYS' entries as the map holds them now (the missing ones left out)."""
        out = {}
        for key in keys:
            v = self.map.get(PolicyKey.from_buffer_copy(_key_bytes(key)))
            if v is not None:
                out[key] = Counted(Value(v.flags, v.rule_id, v.match_type), v.packets, v.bytes)
        return out

    def all(self) -> dict[Key, Counted]:
        out = {}
        for k, v in self.map.items():
            out[Key.from_raw(k)] = Counted(Value(v.flags, v.rule_id, v.match_type), v.packets, v.bytes)
        return out

    def close(self) -> None:
        self.map.close()


class FakePolicyMap:
    """A dict-backed stand-in for PolicyMap in unit tests: the same operations, no kernel.
    ``fail_after`` makes the Nth write from now raise, as a full or failing map would."""

    def __init__(self, entries: dict[Key, Value] | None = None) -> None:
        self.entries: dict[Key, Counted] = {k: Counted(v, 0, 0) for k, v in (entries or {}).items()}
        self.ops: list[tuple[str, Key]] = []
        self.fail_after: int | None = None

    def write(self, key: Key, value: Value) -> None:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise OSError("injected map write failure")
            self.fail_after -= 1
        current = self.entries.get(key)
        self.entries[key] = Counted(value, current.packets if current else 0, current.bytes if current else 0)
        self.ops.append(("write", key))

    def write_many(self, entries: list[tuple[Key, Value]], present: Container[Key]) -> None:
        for done, (key, value) in enumerate(entries):
            try:
                self.write(key, value)
            except OSError as exc:
                exc.done = done
                raise

    def counted(self, keys: list[Key]) -> dict[Key, Counted]:
        return {k: self.entries[k] for k in keys if k in self.entries}

    def delete(self, key: Key) -> bool:
        self.ops.append(("delete", key))
        return self.entries.pop(key, None) is not None

    def all(self) -> dict[Key, Counted]:
        return dict(self.entries)

    def close(self) -> None:
        pass
