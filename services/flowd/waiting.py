"""Events that name something flowd's metadata does not know yet (a rule applied a moment
ago, a pod just created) wait here for one fetch of the lacking tables, then go on with
what it found. A rule written to the policy map before a packet is known to policyd before
that packet, so a fetch begun after the event arrived attributes it; a rule that is still
unknown then (its policy deleted since, policyd unreachable) goes out as kind Unknown,
counted (capillary_flows_unattributed_total).

An identity is the exception: a pod just made on another node can send before this node's
policyd has read its identity from the cluster (it does within a second, services/policyd/
clustersync.py). An event still naming an unknown identity after its fetch waits for
another, RETRY_GAP later, until IDENTITY_PATIENCE has passed since it was parked; then it
goes out with what is known, and that identity is not waited for again for GIVE_UP_SECONDS
(an identity that never comes, policyd cut off from the cluster, must not hold every flow
naming it, and fill the queue behind them).

Invariants: every event parked is released exactly once, after a fetch that began after it
was parked (or that fetch's failure), so it waits at most ROUND_GAP plus one request
timeout per lacking table (services/flowd/enrich.py), or IDENTITY_PATIENCE plus one round
for an identity. Events between the same two addresses keep their order: while one waits, the
later ones wait behind it (`holds`), released with it in the order they came, and what each
of them lacks is fetched too (not only what the first lacked). Every other event goes on
meanwhile.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.datapath.maps.events import HEADER_SIZE
from services.flowd import packet
from services.flowd.enrich import Enricher
from services.flowd.metadata import IDENTITIES

ROUND_GAP = 0.05        # seconds between fetches: a flood of unknown names costs a few a second
RETRY_GAP = 0.2         # ... while an event waits for an identity fetched once already
IDENTITY_PATIENCE = 2.0     # seconds an event waits, at most, for an identity to be known
GIVE_UP_SECONDS = 30.0      # ... and then no event waits for that identity for this long
GIVEN_UP_MAX = 4096         # identities given up on, at most (expired ones go first)


class Waiting:
    def __init__(self, enricher: Enricher, release: Callable[[list[bytes]], None], log,
                 unknown_identities: Callable[[bytes], list[int]]) -> None:
        self.enricher = enricher
        self.release = release
        self.log = log
        self.unknown_identities = unknown_identities    # the identities an event names unknown
        self._given_up: dict[int, float] = {}           # identity -> monotonic time to hope again
        self._parked: list[tuple[bytes, float]] = []    # (event, monotonic time first parked)
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
        self._parked.append((raw, time.monotonic()))
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
            kept = await self.round()
            await asyncio.sleep(RETRY_GAP if kept else ROUND_GAP)

    async def round(self) -> int:
        """Fetch what the events parked so far lack, then release them, except those whose
        identity is still unknown and may yet come (with the later events of their address
        pairs): they wait for the next round. Returns how many wait on."""
        parked, tables = self._parked, self._tables
        self._parked, self._tables = [], set()
        if not parked:
            return 0
        kept: list[tuple[bytes, float]] = []
        try:
            if tables:
                self.fetches += 1
                await self.enricher.refresh(tables)
            kept = self._still_waiting(parked)
        except Exception:
            self.log.exception("metadata fetch for waiting flows crashed")
        finally:
            if kept:
                self._parked = kept + self._parked        # before what was parked since
                self._tables.add(IDENTITIES)
                self._wake.set()
                waiting = {_pair(raw) for raw, _ in kept}
                parked = [(raw, since) for raw, since in parked if _pair(raw) not in waiting]
            if parked:
                self.release([raw for raw, _ in parked])
        return len(kept)

    def _still_waiting(self, parked: list[tuple[bytes, float]]) -> list[tuple[bytes, float]]:
        """PARKED's events that name an identity still unknown (and not given up on), with
        IDENTITY_PATIENCE not yet up, and every event of their address pairs, in order. The
        identities of the events whose patience is up are given up on."""
        now = time.monotonic()
        lacking = [(raw, since, [i for i in self.unknown_identities(raw) if self._given_up.get(i, 0.0) <= now])
                   for raw, since in parked]
        for _, since, ids in lacking:
            if ids and now - since >= IDENTITY_PATIENCE:
                self._give_up(ids, now)
        pairs = {_pair(raw) for raw, since, ids in lacking
                 if now - since < IDENTITY_PATIENCE and any(self._given_up.get(i, 0.0) <= now for i in ids)}
        return [(raw, since) for raw, since in parked if _pair(raw) in pairs] if pairs else []

    def _give_up(self, identities: list[int], now: float) -> None:
        if len(self._given_up) >= GIVEN_UP_MAX:
            self._given_up = {i: t for i, t in self._given_up.items() if t > now}
        if len(self._given_up) < GIVEN_UP_MAX:
            self._given_up.update((i, now + GIVE_UP_SECONDS) for i in identities)
        self.log.info("flows go out without the labels of identities unknown after a wait",
                      identities=identities[:8], seconds=IDENTITY_PATIENCE)


def _pair(raw: bytes) -> bytes:
    return packet.peers(raw[HEADER_SIZE:])
