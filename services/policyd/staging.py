"""Policy changes staged off the event loop: what one holds, and when one staged against
older state may still be committed. Pure logic.

A change is staged (identities resolved, endpoints compiled, diffs taken) without policyd's
lock, so other requests go on meanwhile. When it comes to be committed, other changes may
have been committed since. Its plan still holds when each of those touched only endpoints
its plan did not compile and left the identities as they were: then it is committed as it
is, with the policies in force now. Anything else (an identity allocated or released, CIDR
identities made or dropped, the endpoint record changed, a change touching one of its
endpoints) makes it stage again. So small applies to other pods go on committing while a
100,000-peer policy compiles, and the large one does not compile again because of them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from services.policyd.compiler import Diff, Universe
from services.policyd.identity import Entry, IdentityAllocator, cidr_label
from services.policyd.model import Policy
from services.wire import prefix


@dataclass(frozen=True)
class Staged:
    """A planned policy change, checked and not yet in force."""

    policies: dict[str, Policy]
    identities: IdentityAllocator
    released: list[Entry]
    created: list[Entry]
    diffs: dict[int, Diff]
    endpoints: frozenset[int] | None       # the endpoints its plan compiled; None: every one
    total: int                             # entries the policy map would hold after it
    base: int                              # entries the map held when it was planned
    universe: tuple[dict, Universe]        # (the remote identities, the Universe) it was planned in


class ChangeLog:
    """A version number that goes up with every change a staged policy change depends on,
    and what each of the last KEEP changes touched: a set of endpoints, or None (anything)."""

    KEEP = 4096

    def __init__(self) -> None:
        self.version = 0
        self._touched: dict[int, frozenset[int] | None] = {}

    def bump(self, touched: frozenset[int] | None = None) -> None:
        self.version += 1
        self._touched[self.version] = touched
        self._touched.pop(self.version - self.KEEP, None)

    def untouched_since(self, version: int, endpoints: frozenset[int] | None) -> bool:
        """Did every change after VERSION leave ENDPOINTS (None: every endpoint) and the
        identities alone?"""
        if version == self.version:
            return True
        if endpoints is None:
            return False
        for v in range(version + 1, self.version + 1):
            touched = self._touched.get(v)
            if touched is None or touched & endpoints:
                return False
        return True


class PrefixSet:
    """Prefixes, to ask whether one of them lies inside a given prefix."""

    def __init__(self, cidrs) -> None:
        self._items = sorted((first, plen) for first, _, plen in map(prefix.bounds, cidrs))
        self._starts = [first for first, _ in self._items]

    def any_within(self, cidr: str) -> bool:
        first, last, plen = prefix.bounds(cidr)
        lo, hi = bisect.bisect_left(self._starts, first), bisect.bisect_right(self._starts, last)
        return any(p >= plen for _, p in self._items[lo:hi])


def widen(changed: list[Policy], policies: dict[str, Policy], gone: list[Entry],
          made: list[Entry]) -> list[Policy]:
    """CHANGED, plus the POLICIES whose entries change when the CIDR identities GONE go and
    MADE come: those with a CIDR peer that contains one of them (its resolution changes),
    or with the world entity (which selects every CIDR identity). Nothing else resolves to
    a CIDR identity, so every other endpoint keeps its entries."""
    if not gone and not made:
        return changed
    index = PrefixSet(cidr_label(e.labels) for e in [*gone, *made])
    seen = {id(p) for p in changed}
    out = list(changed)
    for policy in policies.values():
        if id(policy) not in seen and _names_any(policy, index):
            out.append(policy)
    return out


def _names_any(policy: Policy, index: PrefixSet) -> bool:
    return any(peer.entity == "world" or (peer.cidr is not None and index.any_within(peer.cidr))
               for rule in policy.rules for peer in rule.peers)
