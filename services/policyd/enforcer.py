"""Writes compiled policy into the pinned policy map, changing only what differs.

The map itself is the record of what is enforced: at start-up it is read back once into
``self.state`` and only the difference to the newly compiled state is written, so a
policyd restart changes nothing in the kernel when nothing changed (fail closed: the old
entries stay in force throughout). Invariant: ``self.state`` mirrors the map's keys and
values; only apply() writes the map, and it updates the mirror as it goes.
"""
from __future__ import annotations

from pathlib import Path

from services.datapath.maps.endpoints import FLAG_AUDIT, EndpointMap
from services.datapath.maps.policy import Key, PolicyMap, Value
from services.datapath.pinned import MapError, MapFull
from services.policyd.compiler import Diff, Endpoint, Universe, compile_endpoint, diff
from services.policyd.model import Policy


class PolicyMapFull(Exception):
    pass


class Enforcer:
    def __init__(self, bpf_root: Path, capacity: int, enforcement: str) -> None:
        self.bpf_root = bpf_root
        self.capacity = capacity
        self.enforcement = enforcement
        self.map = PolicyMap(bpf_root)
        self.state: dict[int, dict[Key, Value]] = {}
        for key, counted in self.map.all().items():
            self.state.setdefault(key.endpoint_id, {})[key] = counted.value
        self.pending: dict[int, Endpoint] = {}  # announced by endpointd, maybe not in its map yet
        self.forgotten: set[int] = set()        # endpoint ids endpointd has removed

    def endpoints(self) -> dict[int, Endpoint]:
        """Every endpoint that has (or is about to have) entries, by endpoint id."""
        out = {}
        try:
            em = EndpointMap(self.bpf_root)
        except MapError:
            em = None                            # endpointd has not created it yet
        if em is not None:
            try:
                for ep in em.all().values():
                    out[ep.endpoint_id] = Endpoint(ep.endpoint_id, ep.identity, bool(ep.flags & FLAG_AUDIT))
            finally:
                em.close()
        out.update(self.pending)
        for ep_id in self.forgotten:
            out.pop(ep_id, None)
        return out

    def plan(self, policies: list[Policy], universe: Universe,
             changed: list[Policy] | None = None, only: set[int] | None = None
             ) -> tuple[dict[int, Diff], int]:
        """Diffs per endpoint to reach POLICIES, and the total entries the map would hold.
        Recompiled: the endpoints CHANGED policies select, or those in ONLY, or (both None)
        every endpoint. Endpoints whose entries exist but which are gone are removed."""
        current = self.state
        endpoints = self.endpoints()
        if changed is not None:
            only = {ep_id for ep_id, ep in endpoints.items()
                    if any(p.selects(universe.identities.get(ep.identity, {})) for p in changed)}
        targets = set(endpoints) if only is None else only & set(endpoints)
        targets |= set(current) - set(endpoints)
        diffs: dict[int, Diff] = {}
        total = sum(len(entries) for ep_id, entries in current.items() if ep_id not in targets)
        for ep_id in targets:
            wanted = {} if ep_id not in endpoints else \
                compile_endpoint(endpoints[ep_id], policies, universe, self.enforcement)
            total += len(wanted)
            d = diff(current.get(ep_id, {}), wanted)
            if not d.empty:
                diffs[ep_id] = d
        return diffs, total

    def check_capacity(self, total: int) -> None:
        if total > self.capacity:
            raise PolicyMapFull(f"the policy map would hold {total} entries, more than its "
                                f"{self.capacity} (maps.policy in the node config)")

    def apply(self, diffs: dict[int, Diff]) -> tuple[int, int]:
        """Write every diff: all allows, then denies and defaults, then removals, so traffic
        both the old and new state allow is never dropped, nor let through what both deny."""
        written = removed = 0
        try:
            for phase in ("allows", "denies"):
                for d in diffs.values():
                    for key, value in getattr(d, phase).items():
                        self.map.write(key, value)
                        self.state.setdefault(key.endpoint_id, {})[key] = value
                        written += 1
        except MapFull as exc:
            raise PolicyMapFull(f"{exc}: maps.policy is {self.capacity}") from None
        for d in diffs.values():
            for key in d.removed:
                removed += self.map.delete(key)
                entries = self.state.get(key.endpoint_id, {})
                entries.pop(key, None)
                if not entries:
                    self.state.pop(key.endpoint_id, None)
        return written, removed

    def entries(self, endpoint_id: int):
        return {k: c for k, c in self.map.all().items() if k.endpoint_id == endpoint_id}
