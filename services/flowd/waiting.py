"""Events that name something flowd's metadata does not know yet (a rule applied a moment
ago, a pod just created) wait here for one fetch of the lacking tables, then go on with
what it found. A rule written to the policy map before a packet is known to policyd before
that packet, so a fetch begun after the event arrived attributes it; a rule that is still
unknown then (its policy deleted since, policyd unreachable) goes out as kind Unknown,
counted (capillary_flows_unattributed_total).

Invariants: every event parked is released exactly once, after one fetch that began after
it was parked (or that fetch's failure), so it waits at most ROUND_GAP plus one request
timeout per lacking table (services/flowd/enrich.py). Events between the same two addresses keep their order: while one waits, the
later ones wait behind it (`holds`), released with it in the order they came, and what each
of them lacks is fetched too (not only what the first lacked). Every other event goes on
meanwhile.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.datapath.maps.events import HEADER_SIZE
from services.flowd import packet
from services.flowd.enrich import Enricher

ROUND_GAP = 0.05        # seconds between fetches: a flood of unknown names costs a few a second


class Waiting:
    def __init__(self, enricher: Enricher, release: Callable[[list[bytes]], None], log) -> None:
        self.enricher = enricher
        self.release = release
        self.log = log
        self._parked: list[bytes] = []
        self._tables: set[str] = set()
        self._wake = asyncio.Event()
        self._held: dict[bytes, int] = {}   # address pair -> its events parked and not yet handled
        self.parked = 0                     # events ever parked
        self.fetches = 0

    def __len__(self) -> int:
        """Events parked and not yet handled."""
        return sum(self._held.values())

    def holds(self, raw: bytes) -> bool:
        """Whether an earlier event between RAW's addresses waits: RAW must follow it."""
        return bool(self._held) and _pair(raw) in self._held

    def park(self, raw: bytes, tables: frozenset[str]) -> None:
        pair = _pair(raw)
        self._held[pair] = self._held.get(pair, 0) + 1
        self._parked.append(raw)
        self._tables |= tables
        self.parked += 1
        self._wake.set()

    def handled(self, raw: bytes) -> None:
        """RAW, released, has been handled: events after it go on."""
        pair = _pair(raw)
        left = self._held.get(pair, 0) - 1
        if left > 0:
            self._held[pair] = left
        else:
            self._held.pop(pair, None)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.round()
            await asyncio.sleep(ROUND_GAP)

    async def round(self) -> None:
        """Fetch what the events parked so far lack, then release them."""
        parked, tables = self._parked, self._tables
        self._parked, self._tables = [], set()
        if not parked:
            return
        try:
            if tables:
                self.fetches += 1
                await self.enricher.refresh(tables)
        except Exception:
            self.log.exception("metadata fetch for waiting flows crashed")
        finally:
            self.release(parked)


def _pair(raw: bytes) -> bytes:
    return packet.peers(raw[HEADER_SIZE:])
