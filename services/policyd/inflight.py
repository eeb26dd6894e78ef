"""Policy map writes that run after policyd's lock is let go, and who must wait for them.

A committed policy change (services.policyd.service._change) persists its CIDR identities
and writes the policy map after the lock is released: 100,000 entries take half a second,
and health checks and small applies to other pods must not wait for them. Until such a write
is done, the mirror of the map (Enforcer.state) is half written for the endpoints it
touches. So, in this order:

1. A staged change that compiled one of those endpoints while the write was under way waits
   for it and stages again (``overlapping``); one that compiled none commits at once, and
   its own write runs beside the first (the mirror is kept per endpoint).
2. Everything else that plans under the lock (endpoint sync and forget, identities, remote
   identities, previews) first waits for every write under way (``settled``).
3. CIDR identities are persisted by one write at a time, in commit order (``persisting``).

While writes are under way, their additions are counted as made (``reserved``), so a
capacity check never lets two changes together overflow the map.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(eq=False)
class Write:
    endpoints: frozenset[int]
    added: int                       # entries the write adds, net (reserved while under way)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class InFlight:
    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.persisting = asyncio.Lock()

    @property
    def reserved(self) -> int:
        return sum(max(0, w.added) for w in self.writes)

    def start(self, endpoints: frozenset[int], added: int) -> Write:
        write = Write(endpoints, added)
        self.writes.append(write)
        return write

    def finish(self, write: Write) -> None:
        self.writes.remove(write)
        write.done.set()

    def snapshot(self) -> list[Write]:
        return list(self.writes)

    @staticmethod
    def overlapping(seen: list[Write], endpoints: frozenset[int] | None) -> list[Write]:
        """The writes of SEEN (under way when a change was staged) touching ENDPOINTS."""
        return [w for w in seen if endpoints is None or w.endpoints & endpoints]

    async def settled(self) -> None:
        """Wait until no write is under way."""
        while self.writes:
            await self.writes[0].done.wait()
