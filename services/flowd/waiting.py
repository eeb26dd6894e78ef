"""Events that name something flowd's metadata does not know yet (a rule applied a moment
ago, a pod just created) wait here for one fetch of the lacking tables, then go on with
what it found. A rule written to the policy map before a packet is known to policyd before
that packet, so a fetch begun after the event arrived attributes it; a rule that is still
unknown then (its policy deleted since, policyd unreachable) goes out as kind Unknown,
counted (capillary_flows_unattributed_total).

Invariants: every event parked is released exactly once, after one fetch that began after
it was parked (or that fetch's failure), so it waits at most a request timeout plus
ROUND_GAP. Only these events wait: the pipeline handles every other event meanwhile.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

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
        self.fetches = 0

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, raw: bytes, tables: frozenset[str]) -> None:
        self._parked.append(raw)
        self._tables |= tables
        self._wake.set()

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
            self.fetches += 1
            await self.enricher.refresh(tables)
        except Exception:
            self.log.exception("metadata fetch for waiting flows crashed")
        finally:
            self.release(parked)
