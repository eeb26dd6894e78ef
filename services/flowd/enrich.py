"""Keeps flowd's Metadata fresh from endpointd (pod.list) and policyd (identity.list,
policy.rules): a full load at start (retried until both answer: endpointd itself waits for
flowd, so flowd must not wait for it), on every endpoint event, every REFRESH_SECONDS, and
when an event names something unknown (at most every MIN_INTERVAL seconds).
"""
from __future__ import annotations

import asyncio
import time

from services.flowd.metadata import Metadata
from services.runtime.bus import Bus, RemoteError
from services.wire import subjects
from services.wire.messages import ListRequest, SchemaError

REFRESH_SECONDS = 30.0
RETRY_SECONDS = 0.5
MIN_INTERVAL = 1.0


class Enricher:
    def __init__(self, bus: Bus, meta: Metadata, log) -> None:
        self.bus = bus
        self.meta = meta
        self.log = log
        self.loaded = False                 # every table answered at least once
        self._last = 0.0
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Reload every table; True when all three answered (a failed one keeps its data)."""
        async with self._lock:
            self._last = time.monotonic()
            ok = True
            for subject, setter in ((subjects.POD_LIST, self.meta.set_pods),
                                    (subjects.IDENTITY_LIST, self.meta.set_identities),
                                    (subjects.POLICY_RULES, self.meta.set_rules)):
                try:
                    setter(await self.bus.request(subject, ListRequest(), timeout=2.0))
                except (RemoteError, SchemaError) as exc:
                    ok = False
                    self.log.debug("metadata refresh failed", subject=subject, error=str(exc))
            self.loaded = self.loaded or ok
            return ok

    async def ensure(self, identities: tuple[int, ...], endpoint_id: int, rule_id: int) -> None:
        """Refresh first if the event names something unknown and we did not just refresh."""
        if self.meta.missing(identities, endpoint_id, rule_id) and \
                time.monotonic() - self._last >= MIN_INTERVAL:
            await self.refresh()

    def poke(self) -> None:
        """Something changed (an endpoint event): refresh soon."""
        self._poke.set()

    async def on_endpoint_event(self, _event) -> None:
        self.poke()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                self.log.exception("metadata refresh crashed")
            wait = REFRESH_SECONDS if self.loaded else RETRY_SECONDS
            try:
                await asyncio.wait_for(self._poke.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
            self._poke.clear()
