"""The ipcache claims no map entry shows, kept in JetStream KV (subjects.BUCKET_IPCACHE_SHADOWED).

The map holds one claim per prefix, the winner (services.routed.claims); the others ("shadowed",
e.g. a policy's toCIDR naming a pod's address) exist only in routed's memory, and must outlive
a restart so that releasing the winner later brings them back. Each prefix with shadowed
claims is one key of this node's part of the bucket, its value the list of those claims:

    "10.0.0.5_32" -> {"claims": [["cidr-policy", 16777217, ""], ...]}   (source, identity, tunnel endpoint)

Writes go by difference from what was last stored. A write that fails leaves the map (what is
in force) as it is and is tried again at the next save: `pending` says how many prefixes wait.
"""
from __future__ import annotations

import json
from pathlib import Path

from services.runtime.bus import Bus
from services.wire import codec, subjects

Shadowed = dict[str, list[tuple[str, int, str]]]      # prefix -> its claims not in force


def by_prefix(rows: list[tuple]) -> Shadowed:
    """Claims.shadowed()'s rows, (cidr, source, identity[, tunnel endpoint]), by prefix."""
    out: Shadowed = {}
    for cidr, source, identity, *tunnel in rows:
        out.setdefault(cidr, []).append((source, int(identity), tunnel[0] if tunnel else ""))
    return out


def _key(cidr: str) -> str:
    return cidr.replace("/", "_")          # 10.0.0.5/32 is stored as 10.0.0.5_32


def _cidr(key: str) -> str:
    return key.replace("_", "/")


class ShadowStore:
    def __init__(self, bus: Bus, replicas: int, legacy_file: Path) -> None:
        self.bus = bus
        self.replicas = replicas
        self.legacy_file = legacy_file       # where earlier releases kept them, as JSON rows
        self.saved: Shadowed = {}
        self.kv = None

    async def load(self) -> list[tuple]:
        """Every stored shadowed claim as Claims.shadowed() rows. Raises StateUnreadable (the
        bucket) or ValueError (a bad stored value or legacy file): routed must not start on
        claims it could not read."""
        self.kv = await self.bus.node_kv(subjects.BUCKET_IPCACHE_SHADOWED, replicas=self.replicas)
        stored = await self.bus.kv_items(self.kv)
        self.saved = {_cidr(key): [_claim(c, key) for c in _rows(value, key)] for key, value in stored.items()}
        rows = [(cidr, *claim) for cidr, claims in self.saved.items() for claim in claims]
        if self.legacy_file.exists():
            rows += json.loads(self.legacy_file.read_text())
        return rows

    async def save(self, rows: list[tuple]) -> int:
        """Store ROWS (Claims.shadowed()) by difference; returns the prefixes still unsaved
        (0 when the bucket holds exactly ROWS). The legacy file goes once its rows are in KV."""
        now = by_prefix(rows)
        if await self._write(now) and not self._unsaved(now) and self.legacy_file.exists():
            self.legacy_file.unlink()
        return self._unsaved(now)

    async def _write(self, now: Shadowed) -> bool:
        """Deletes, then puts, stopping at the first that fails; False when one did."""
        for cidr in [c for c in self.saved if c not in now]:
            if not await self._try(self.kv.delete(_key(cidr))):
                return False
            del self.saved[cidr]
        for cidr, claims in now.items():
            if self.saved.get(cidr) != claims:
                if not await self._try(self.kv.put(_key(cidr), _encode(claims))):
                    return False
                self.saved[cidr] = claims
        return True

    def _unsaved(self, now: Shadowed) -> int:
        return sum(self.saved.get(c) != now.get(c) for c in set(self.saved) | set(now))

    async def _try(self, write) -> bool:
        try:
            await write
            return True
        except Exception:                   # the bus is down or slow: the caller reports pending
            return False


def _rows(value: dict, key: str) -> list:
    rows = value.get("claims")
    if not isinstance(rows, list):
        raise ValueError(f"shadowed claims of {_cidr(key)}: claims is not a list")
    return rows


def _claim(row, key: str) -> tuple[str, int, str]:
    if not (isinstance(row, (list, tuple)) and len(row) == 3 and isinstance(row[0], str)
            and isinstance(row[1], int) and isinstance(row[2], str)):
        raise ValueError(f"shadowed claims of {_cidr(key)}: bad claim {row!r}")
    return row[0], row[1], row[2]


def _encode(claims: list[tuple[str, int, str]]) -> bytes:
    return codec.encode({"claims": [list(c) for c in claims]})
