"""Conntrack garbage collection: endpointd sweeps its conntrack map every
datapath.conntrackGCInterval seconds, removing expired entries and entries of pod addresses
that no pod holds (left by a pod deleted while endpointd was down, or by a crash between a
delete and its cleanup). Each run is counted in metrics and in `capillary status`.

A full map is not an error: it is an LRU hash (see services/datapath/maps/conntrack.py),
so new connections take the places of the least recently used entries.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.datapath.maps.conntrack import ConntrackMap, Sweep
from services.datapath.netlink import Worker
from services.runtime.config import NodeConfig


class ConntrackGC:
    def __init__(self, config: NodeConfig, worker: Worker,
                 live_ips: Callable[[], frozenset[ipaddress.IPv4Address]],
                 registry: CollectorRegistry, log) -> None:
        """LIVE_IPS: every address IPAM has handed out, pods being created included. It is
        read on the event loop, and the sweep runs on WORKER after it: a pod allocated later
        is plumbed later on that same thread, so no connection of it can be taken for an
        orphan. Start the loop only once the pods are known (after the reconcile)."""
        self.config = config
        self.worker = worker
        self.live_ips = live_ips
        self.log = log
        self.map = ConntrackMap(Path(config.datapath.bpfRoot))
        self.pods = config.pod_network
        self.router = config.router_ip
        self.last = Sweep()
        self.runs = 0
        self.removed = {"expired": 0, "orphaned": 0}
        self._runs = Counter("capillary_conntrack_gc_runs", "Sweeps of the conntrack map", registry=registry)
        self._deleted = Counter("capillary_conntrack_gc_deleted", "Conntrack entries removed by sweeps",
                                ["reason"], registry=registry)
        self._entries = Gauge("capillary_conntrack_entries", "Conntrack entries alive after the last sweep",
                              registry=registry)
        Gauge("capillary_conntrack_capacity", "Size of the conntrack map (maps.conntrack)",
              registry=registry).set(config.maps.conntrack)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.map.close()

    async def sweep(self) -> Sweep:
        """One sweep now."""
        result = await self.worker.run(self.map.sweep, self.pods, self.router, set(self.live_ips()))
        self.last, self.runs = result, self.runs + 1
        self.removed["expired"] += result.expired
        self.removed["orphaned"] += result.orphaned
        self._runs.inc()
        self._deleted.labels("expired").inc(result.expired)
        self._deleted.labels("orphaned").inc(result.orphaned)
        self._entries.set(result.alive)
        if result.orphaned:
            self.log.warning("removed conntrack entries of addresses no pod holds", entries=result.orphaned)
        return result

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                self.log.exception("conntrack sweep failed")
            await asyncio.sleep(self.config.datapath.conntrackGCInterval)

    def counters(self) -> dict[str, int]:
        return {"conntrack_entries": self.last.alive, "conntrack_capacity": self.config.maps.conntrack,
                "conntrack_gc_runs": self.runs, "conntrack_gc_expired": self.removed["expired"],
                "conntrack_gc_orphaned": self.removed["orphaned"]}
