"""Raw events -> flows -> history, metrics and NATS. Runs on the event loop, a batch of ring
records at a time.

Invariant: every record handed to offer() is counted exactly once in Accounting: queue_full,
undecodable, publish_failed or published. A record that names something the metadata lacks
waits for one fetch (services/flowd/waiting.py), still counted in `queued`, and comes back
settled: built then with whatever is known.
"""
from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections import deque

import nats.errors

from services.flowd.accounting import Accounting
from services.flowd.builder import FlowBuilder, Template
from services.flowd.decode import EventError, parse_event
from services.flowd.enrich import Enricher
from services.flowd.history import History
from services.flowd.metrics import FlowMetrics
from services.flowd.waiting import Waiting
from services.runtime.bus import Bus
from services.wire import codec, subjects
from services.wire.messages import MonitorEvents

QUEUE_SIZE = 65536         # raw records (~200 bytes each) between the ring reader and publishing
PUBLISH_CHUNK = 256         # flows per write to NATS
MONITOR_CHUNK = 1024        # raw events per monitor message: well inside NATS's 1 MB payload limit
MAX_LEASE = 60.0
PUBLISH_ERRORS = (nats.errors.Error, OSError)
DECODE_ERRORS = (EventError, ValueError, struct.error)


def clock_offset_ns() -> int:
    """Wall clock minus CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns)."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Pipeline:
    def __init__(self, node: str, bus: Bus, enricher: Enricher, history: History,
                 metrics: FlowMetrics, accounting: Accounting, queue_size: int = QUEUE_SIZE) -> None:
        self.node = node
        self.bus = bus
        self.enricher = enricher
        self.history = history
        self.acct = accounting
        self.metrics = metrics
        self.builder = FlowBuilder(enricher.meta, node, metrics.children)
        self.queue_size = queue_size
        self.queued = 0                         # records offered and not yet handled (waiting included)
        self._batches: deque[tuple[list[bytes], bool]] = deque()    # (records, settled)
        self.waiting = Waiting(enricher, self._settle, enricher.log, self._unknown_identities)
        self._ready = asyncio.Event()
        self.monitor_until = 0.0                # monotonic time the last monitor lease runs out
        self._leases: dict[str, float] = {}     # monitor -> when its lease runs out
        self.monitor_subject = subjects.monitor(node)

    def attach_monitor(self, monitor: str, lease: float) -> None:
        """Raw events go out while any monitor's lease runs; a lease of 0 gives one back."""
        now = time.monotonic()
        self._leases = {m: until for m, until in self._leases.items() if until > now and m != monitor}
        if lease > 0:
            self._leases[monitor] = now + min(lease, MAX_LEASE)
        self.monitor_until = max(self._leases.values(), default=0.0)

    def offer(self, batch: list[bytes]) -> None:
        """Called from the ring reader (via call_soon_threadsafe): never blocks it. When
        publishing falls behind, the queue fills and events are lost, counted."""
        room = self.queue_size - self.queued
        if len(batch) > room:
            self.acct.queue_full += len(batch) - room
            batch = batch[:room]
        if batch:
            self._batches.append((batch, False))
            self.queued += len(batch)
            self._ready.set()

    def _settle(self, batch: list[bytes]) -> None:
        """Records back from waiting (still counted in `queued`): handled as they are now."""
        self._batches.append((batch, True))
        self._ready.set()

    async def run(self) -> None:
        waiter = asyncio.create_task(self.waiting.run())
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                await self.drain()
        finally:
            waiter.cancel()

    async def drain(self) -> None:
        """Handle every batch offered so far (records that wait stay queued)."""
        while self._batches:
            batch, settled = self._batches.popleft()
            parked = self.waiting.parked
            try:
                await self.handle(batch, settled)
            finally:
                self.queued -= len(batch) - (self.waiting.parked - parked)

    async def handle(self, batch: list[bytes], settled: bool = False) -> None:
        """Build, keep and publish BATCH's flows. Unless SETTLED (back from waiting), a
        record naming something unknown is parked to wait for a fetch instead."""
        if not settled and self.monitor_until > time.monotonic():
            await self._to_monitor(batch)
        counts: dict[tuple, int] = {}
        offset = clock_offset_ns()
        lookup, build = self.builder.lookup, self.builder.flow
        out: list[tuple[str, bytes]] = []
        waiting = self.waiting
        for raw in batch:
            try:
                if settled:
                    waiting.handled(raw)
                elif waiting.holds(raw):
                    # Behind an earlier event of its pair, with what it lacks itself: parked
                    # with nothing, it would be released after a fetch of only the tables
                    # the earlier one lacked (a trace naming a remote identity, then the
                    # verdict of a rule applied since: the rule went out Unknown).
                    waiting.park(raw, self._lacking(raw))
                    continue
                key, template = lookup(raw)
                if template is None:
                    template = self._template(key, raw, settled)
                    if template is None:
                        continue
                flow, payload = build(raw, template, offset)
            except DECODE_ERRORS:
                self.acct.undecodable += 1
                continue
            self.history.add(flow)
            counts[template.counters] = counts.get(template.counters, 0) + 1
            out.append((template.subject, payload))
            if len(out) == PUBLISH_CHUNK:
                await self._publish(out)
                out = []
        await self._publish(out)
        for counters, n in counts.items():
            for counter in counters:
                counter.inc(n)
        if len(batch[0]) >= 8:
            emitted = int.from_bytes(batch[0][:8], sys.byteorder) + offset
            self.metrics.delay.observe(max(time.time_ns() - emitted, 0) / 1e9)

    async def _publish(self, out: list[tuple[str, bytes]]) -> None:
        """Publish OUT, counting each flow as published or failed."""
        if not out:
            return
        if self.bus.can_publish_many():
            try:
                await self.bus.publish_many(out)
            except PUBLISH_ERRORS:
                self.acct.publish_failed += len(out)
                return
            self.acct.published += len(out)
            return
        for subject, payload in out:            # reconnecting: publish() buffers, or refuses
            try:
                await self.bus.nc.publish(subject, payload)
            except PUBLISH_ERRORS:
                self.acct.publish_failed += 1
                continue
            self.acct.published += 1

    async def _to_monitor(self, batch: list[bytes]) -> None:
        """The raw events, for `capillary monitor`. Best effort, as Cilium's monitor is: a
        failed publish loses monitor output, never flows."""
        lost = self.acct.ring().lost
        for start in range(0, len(batch), MONITOR_CHUNK):
            message = MonitorEvents(events=batch[start:start + MONITOR_CHUNK], lost=lost)
            try:
                await self.bus.nc.publish(self.monitor_subject, codec.encode(message.to_wire()))
            except PUBLISH_ERRORS:
                return

    def _lacking(self, raw: bytes) -> frozenset[str]:
        """The metadata tables that do not know something RAW names."""
        hdr, _ = parse_event(raw)
        return self.enricher.meta.unknown((hdr.src_identity, hdr.dst_identity), hdr.endpoint_id, hdr.rule_id)

    def _unknown_identities(self, raw: bytes) -> list[int]:
        """The identities RAW names that the metadata does not know."""
        hdr, _ = parse_event(raw)
        return self.enricher.meta.unknown_identities((hdr.src_identity, hdr.dst_identity))

    def _template(self, key: bytes, raw: bytes, settled: bool) -> Template | None:
        """A new shape's template, or None when RAW has gone to wait for metadata."""
        lacking = self._lacking(raw)
        if lacking and not settled:
            self.waiting.park(raw, lacking)
            return None
        return self.builder.add(key, raw)
