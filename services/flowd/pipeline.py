"""Raw events -> flows -> history, metrics and NATS. Runs on the event loop.

Invariant: every record handed to offer() is counted exactly once in Accounting: queue_full,
undecodable, publish_failed or published.
"""
from __future__ import annotations

import asyncio
import struct
import time

import nats.errors

from services.flowd.accounting import Accounting
from services.flowd.decode import EventError, decode, parse_event
from services.flowd.enrich import Enricher
from services.flowd.history import History
from services.flowd.metrics import FlowMetrics
from services.runtime.bus import Bus
from services.wire import codec, subjects
from services.wire.messages import FlowEvent

QUEUE_SIZE = 16384
PUBLISH_ERRORS = (nats.errors.Error, OSError)


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
        self.metrics = metrics
        self.acct = accounting
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)

    def offer(self, batch: list[bytes]) -> None:
        """Called from the ring reader (via call_soon_threadsafe): never blocks it. When
        publishing falls behind, the queue fills and events are lost, counted."""
        for raw in batch:
            try:
                self.queue.put_nowait(raw)
            except asyncio.QueueFull:
                self.acct.queue_full += 1

    async def run(self) -> None:
        while True:
            raw = await self.queue.get()
            await self.handle(raw)

    async def handle(self, raw: bytes) -> None:
        try:
            hdr, _ = parse_event(raw)
            await self.enricher.ensure((hdr.src_identity, hdr.dst_identity), hdr.endpoint_id, hdr.rule_id)
            flow = decode(raw, self.enricher.meta, self.node, clock_offset_ns())
        except (EventError, ValueError, struct.error):
            self.acct.undecodable += 1
            return
        self.history.add(flow)
        self.metrics.observe(flow)
        payload = codec.encode(FlowEvent(flow).to_wire())
        try:
            await self.bus.nc.publish(subjects.flows(self.node, flow["verdict"]), payload)
        except PUBLISH_ERRORS:
            self.acct.publish_failed += 1
            return
        self.acct.published += 1
