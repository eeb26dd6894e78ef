"""flowd: datapath events -> Hubble-style flows on NATS, a history for `observe --last`,
and the datapath's counters as metrics.

Data path: ring reader thread -> Pipeline (decode with Metadata, history, metrics,
publish on flows(node, verdict)). Accounting keeps `generated == published + lost`.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.datapath import loader
from services.datapath.map_metrics import MapOpsCollector
from services.datapath.maps.events import RING_PIN_NAME, EventStatsMap, Stats
from services.flowd.accounting import Accounting
from services.flowd.datapath_metrics import DatapathCollector
from services.flowd.enrich import Enricher
from services.flowd.filters import FilterError, validate
from services.flowd.history import History
from services.flowd.metadata import Metadata
from services.flowd.metrics import FlowMetrics, LostCollector
from services.flowd.pipeline import Pipeline
from services.flowd.ring import RingReader
from services.runtime.app import Service
from services.runtime.bus import ServiceError
from services.wire import subjects
from services.wire.messages import INVALID, EndpointEvent, FlowQuery, MonitorAttach


class FlowService(Service):
    NAME = "flowd"

    async def start(self) -> None:
        root = Path(self.config.datapath.bpfRoot)
        # The event ring and its stats: pinned before endpointd compiles lxc.c, which waits
        # for this service to be ready.
        # Compiled in a child process: flowd reads the ring and stats through their pins and
        # so never loads LLVM (see services/datapath/bpfsys.py).
        await asyncio.to_thread(loader.pin_maps, "flowd_maps.c", self.config)
        self.stats = EventStatsMap(root)
        # The datapath's counts outlive flowd: this one accounts from here on, plus what a
        # previous one left unread in the ring (the reader's backlog).
        epoch = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        baseline = self.stats.read()
        self.history = History(self.config.events.history)
        self.enricher = Enricher(self.bus, Metadata(), self.log)
        self.reader = RingReader(root / RING_PIN_NAME, asyncio.get_running_loop(), self._offer, epoch)
        self.accounting = Accounting(ring=lambda: self._ring_since(baseline), read=lambda: self.reader.read)
        self.pipeline = Pipeline(self.config.node, self.bus, self.enricher, self.history,
                                 FlowMetrics.create(self.registry, self.config.hubble.specs), self.accounting)
        self.registry.register(DatapathCollector(root, self._pods_by_endpoint))
        self.registry.register(MapOpsCollector())
        self.registry.register(LostCollector(
            lambda: self.accounting.lost_by_source(self.history.overwritten)))
        self.tasks = [asyncio.create_task(self.pipeline.run()), asyncio.create_task(self.enricher.run())]
        self.reader.start()
        await self.bus.serve(subjects.OBSERVER_FLOWS, FlowQuery, self.query)
        await self.bus.serve(subjects.OBSERVER_MONITOR, MonitorAttach, self.attach_monitor)
        await self.bus.listen(subjects.endpoint_event("created"), EndpointEvent, self.enricher.on_created)
        await self.bus.listen(subjects.endpoint_event("deleted"), EndpointEvent, self.enricher.on_deleted)

    def _ring_since(self, baseline: Stats) -> Stats:
        delta = self.stats.read() - baseline
        return Stats(delta.emitted + self.reader.backlog, delta.lost)

    def _pods_by_endpoint(self) -> dict[int, tuple[str, str]]:
        return {p.endpoint_id: (p.namespace, p.name) for p in self.enricher.meta.pods_by_ip.values()}

    def _offer(self, batch: list[bytes]) -> None:
        self.pipeline.offer(batch)

    async def stop(self) -> None:
        if hasattr(self, "reader"):
            await asyncio.to_thread(self.reader.stop)
        for task in getattr(self, "tasks", []):
            task.cancel()

    async def counters(self) -> dict[str, int]:
        return {**self.accounting.counters(self.history.overwritten),
                "flows_queued": self.pipeline.queued, "flows_waiting": len(self.pipeline.waiting),
                "history": len(self.history)}

    async def query(self, req: FlowQuery) -> dict:
        """observer.flows: the most recent flows in the history that match the filter."""
        try:
            validate(req.filter)
        except FilterError as exc:
            raise ServiceError(INVALID, str(exc)) from None
        return {"node": self.config.node, "flows": self.history.query(req.filter, req.last),
                "history_size": len(self.history), "history_overwritten": self.history.overwritten}

    async def attach_monitor(self, req: MonitorAttach) -> dict:
        """observer.monitor: (re)start publishing raw events for REQ.lease seconds."""
        self.pipeline.attach_monitor(req.monitor, req.lease)
        return {"node": self.config.node, "subject": subjects.monitor(self.config.node),
                "ring_bytes": self.config.events.ringBytes, "aggregation": self.config.events.aggregation}
