"""Keeps flowd's Metadata fresh from endpointd (pod.list) and policyd (identity.list,
policy.rules): a full load at start (retried until both answer: endpointd itself waits for
flowd, so flowd must not wait for it), every REFRESH_SECONDS, and on demand for the tables an
event finds lacking (services/flowd/waiting.py). An endpoint event puts its pod in (or takes
it out) at once, then asks for the pods and identities to be listed again, at most once every
EVENT_GAP: creating 1,000 pods in one apply listed every pod and identity after each pod,
1,000 times, on the CPUs the pods were being made with. Endpoint events never put off the
full load: one is due REFRESH_SECONDS after the last began, however many pods came since.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from services.flowd.metadata import IDENTITIES, PODS, RULES, TABLES, Metadata
from services.runtime.bus import Bus, RemoteError
from services.wire import subjects
from services.wire.messages import EndpointEvent, ListRequest, SchemaError

REFRESH_SECONDS = 30.0
RETRY_SECONDS = 0.5
REQUEST_TIMEOUT = 2.0
EVENT_GAP = 1.0             # seconds at least between the refreshes endpoint events ask for
SOURCES = {PODS: subjects.POD_LIST, IDENTITIES: subjects.IDENTITY_LIST, RULES: subjects.POLICY_RULES}


class Enricher:
    def __init__(self, bus: Bus, meta: Metadata, log) -> None:
        self.bus = bus
        self.meta = meta
        self.log = log
        self.loaded = False                 # every table answered at least once
        self.last = 0.0                     # monotonic time the last refresh started
        self.last_full = 0.0                # ... and the last refresh of every table
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._setters = {PODS: meta.set_pods, IDENTITIES: meta.set_identities, RULES: meta.set_rules}

    async def refresh(self, tables: Iterable[str] = TABLES) -> bool:
        """Reload TABLES (default: all); True when each answered (a failed one keeps its
        data: unknown is not empty)."""
        async with self._lock:
            self.last = time.monotonic()
            if set(tables) >= set(TABLES):
                self.last_full = self.last
            ok = True
            for table in TABLES:
                if table not in tables:
                    continue
                try:
                    self._setters[table](await self.bus.request(SOURCES[table], ListRequest(),
                                                                timeout=REQUEST_TIMEOUT))
                except (RemoteError, SchemaError) as exc:
                    ok = False
                    self.log.debug("metadata refresh failed", table=table, error=str(exc))
            self.loaded = self.loaded or (ok and set(tables) >= set(TABLES))
            return ok

    def poke(self) -> None:
        """Something changed (an endpoint event): refresh soon."""
        self._poke.set()

    async def on_created(self, event: EndpointEvent) -> None:
        self.meta.put_pod(event.pod)
        self.poke()

    async def on_deleted(self, event: EndpointEvent) -> None:
        self.meta.drop_pod(event.pod)
        self.poke()

    async def run(self) -> None:
        tables = TABLES
        while True:
            try:
                await self.refresh(tables)
            except Exception:
                self.log.exception("metadata refresh crashed")
            wait = self.last_full + REFRESH_SECONDS - time.monotonic() if self.loaded else RETRY_SECONDS
            try:
                await asyncio.wait_for(self._poke.wait(), timeout=max(0.0, wait))
                poked = self.loaded
            except asyncio.TimeoutError:
                poked = False
            if poked:       # the events of a burst, one refresh
                await asyncio.sleep(max(0.0, self.last + EVENT_GAP - time.monotonic()))
            self._poke.clear()
            due = time.monotonic() - self.last_full >= REFRESH_SECONDS
            tables = (PODS, IDENTITIES) if poked and not due else TABLES
