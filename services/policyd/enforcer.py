"""Plans compiled policy for policyd's endpoints and writes it into a policy map, changing
only what differs.

The Enforcer is a pure planner over two things it is given: the policy map object (PolicyMap
in policyd, FakePolicyMap in unit tests) and ``endpoints``, policyd's own record of the
endpoints on this node. That record is fed only by endpointd's sync and forget requests and
persisted by policyd in its KV bucket; the Enforcer never reads another service's map. An
endpoint nobody told policyd about is unknown, not gone: only a forget (or, at start-up, its
absence from policyd's KV record) removes its entries.

The map is the record of what is enforced: at start-up it is read back once into
``self.state`` and only the difference to the newly planned state is written, so a policyd
restart changes nothing in the kernel when nothing changed (fail closed: the old entries stay
in force throughout). Invariant: ``self.state`` mirrors the map's keys and values; only
apply() writes the map, and it updates the mirror as it goes.

Locking: policyd plans under its own lock; apply() may run on two worker threads at once for
disjoint endpoints (services.policyd.inflight), so the entry count is updated under a lock.
"""
from __future__ import annotations

import itertools
import threading
from typing import Protocol

from services.datapath.maps.policy import Counted, Key, Value
from services.datapath.pinned import MapFull
from services.policyd.compiler import Diff, Endpoint, TooManyEntries, Universe, compile_endpoint, diff
from services.policyd.model import Policy


WRITE_CHUNK = 8192          # entries packed and written at once (not 100,000 packed in one buffer)


class PolicyMapFull(Exception):
    pass


class PolicyMapLike(Protocol):
    def write_many(self, entries: list[tuple[Key, Value]], present) -> None: ...
    def delete(self, key: Key) -> bool: ...
    def counted(self, keys: list[Key]) -> dict[Key, Counted]: ...
    def all(self) -> dict[Key, Counted]: ...


class Enforcer:
    def __init__(self, policy_map: PolicyMapLike, capacity: int, enforcement: str,
                 endpoints: dict[int, Endpoint] | None = None) -> None:
        self.map = policy_map
        self.capacity = capacity
        self.enforcement = enforcement
        self.endpoints: dict[int, Endpoint] = dict(endpoints or {})
        self.state: dict[int, dict[Key, Value]] = {}
        for key, counted in policy_map.all().items():
            self.state.setdefault(key.endpoint_id, {})[key] = counted.value
        self.entry_count = sum(len(e) for e in self.state.values())     # entries in the map
        self.reserved = 0           # entries committed changes will add, not written yet
        self._count_lock = threading.Lock()

    @property
    def committed(self) -> int:
        """The entries the map holds once every committed change is written (more, while
        one is being written: its additions count twice until it is done)."""
        return self.entry_count + self.reserved

    def plan(self, policies: list[Policy], universe: Universe,
             changed: list[Policy] | None = None, only: set[int] | None = None
             ) -> tuple[dict[int, Diff], int]:
        """Diffs per endpoint to reach POLICIES, and the total entries the map would hold.
        Recompiled: the endpoints CHANGED policies select, or those in ONLY (an id not in
        the record loses its entries), or (both None) every endpoint, and then the entries
        of endpoints not in the record are removed too. Costs O(recompiled endpoints).
        PolicyMapFull as soon as one endpoint's entries alone pass the map's capacity (the
        rest of what could never be written is not compiled)."""
        current, endpoints = self.state, self.endpoints
        if changed is not None:
            only = self.selected(changed, universe)
        targets = set(endpoints) | set(current) if only is None else set(only)
        diffs: dict[int, Diff] = {}
        total = self.committed
        for ep_id in targets:
            try:
                wanted = {} if ep_id not in endpoints else \
                    compile_endpoint(endpoints[ep_id], policies, universe, self.enforcement, limit=self.capacity)
            except TooManyEntries as exc:
                raise PolicyMapFull(f"{exc}, the policy map's capacity (maps.policy in the node config)") from None
            have = current.get(ep_id, {})
            total += len(wanted) - len(have)
            d = diff(have, wanted)
            if not d.empty:
                diffs[ep_id] = d
        return diffs, total

    def selected(self, policies: list[Policy], universe: Universe) -> set[int]:
        """The endpoints in the record one of POLICIES selects."""
        return {ep_id for ep_id, ep in self.endpoints.items()
                if any(p.selects(universe.identities.get(ep.identity, {})) for p in policies)}

    def check_capacity(self, total: int) -> None:
        if total > self.capacity:
            raise PolicyMapFull(f"the policy map would hold {total} entries, more than its "
                                f"{self.capacity} (maps.policy in the node config)")

    def apply(self, diffs: dict[int, Diff]) -> tuple[int, int]:
        """Write every diff: all allows, then denies and defaults, then removals, so traffic
        both the old and new state allow is never dropped, nor let through what both deny."""
        written = removed = 0
        for phase in ("allows", "denies"):
            items = (item for d in diffs.values() for item in getattr(d, phase).items())
            while batch := list(itertools.islice(items, WRITE_CHUNK)):
                self._write_chunk(batch)
                written += len(batch)
        for d in diffs.values():
            gone = 0
            for key in d.removed:
                removed += self.map.delete(key)
                entries = self.state.get(key.endpoint_id, {})
                gone += entries.pop(key, None) is not None
                if not entries:
                    self.state.pop(key.endpoint_id, None)
            with self._count_lock:
                self.entry_count -= gone
        return written, removed

    def _write_chunk(self, batch: list[tuple[Key, Value]]) -> None:
        try:
            self.map.write_many(batch, _Present(self.state))
        except OSError as exc:
            self._mirror(batch[:getattr(exc, "done", 0)])
            if isinstance(exc, MapFull):
                raise PolicyMapFull(f"{exc}: maps.policy is {self.capacity}") from None
            raise
        self._mirror(batch)

    def _mirror(self, written: list[tuple[Key, Value]]) -> None:
        new = 0
        for key, value in written:
            entries = self.state.setdefault(key.endpoint_id, {})
            new += key not in entries
            entries[key] = value
        with self._count_lock:
            self.entry_count += new

    def entries(self, endpoint_id: int) -> dict[Key, Counted]:
        """ENDPOINT_ID's entries with their counts: the keys from the mirror, each read from
        the map (a read of the whole map cost a second at 100k entries)."""
        return self.map.counted(sorted(self.state.get(endpoint_id, {})))


class _Present:
    """Is a key in the map already (by the mirror)? Without building a set of every key."""

    def __init__(self, state: dict[int, dict[Key, Value]]) -> None:
        self.state = state

    def __contains__(self, key: Key) -> bool:
        return key in self.state.get(key.endpoint_id, {})
