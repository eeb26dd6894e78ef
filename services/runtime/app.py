"""The life of one service process: connect, serve health, start, wait for a signal, drain."""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

import structlog
from prometheus_client import CollectorRegistry

from services.runtime.bus import Bus, Credentials
from services.runtime.config import NodeConfig, load_config
from services.runtime.logging import setup_logging
from services.runtime.memory import hand_back_freed_memory
from services.runtime.metrics import BusMetrics, serve_metrics
from services.wire import subjects
from services.wire.messages import Health

SWITCH_INTERVAL = 0.001     # seconds a thread may hold the GIL while another waits for it


class Service:
    """Base for the four services. Subclasses set NAME and implement start()/stop().

    Invariant: ``ready`` turns true only after start() has returned, i.e. after the service
    has reconciled its slice of kernel state with KV; the supervisor waits on it.
    """

    NAME = ""

    def __init__(self, config: NodeConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.bus_metrics = BusMetrics.create(self.registry)
        self.log = structlog.get_logger().bind(service=self.NAME)
        self.started = time.time()
        self.ready = False
        self.detail = "starting"
        self.bus: Bus | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Reconcile state and register handlers on self.bus."""

    async def stop(self) -> None:
        """Release what start() acquired (kernel state stays: it outlives the process)."""

    async def stopping(self) -> None:
        """Last work on the bus as the service stops, before the bus drains."""

    async def counters(self) -> dict[str, int]:
        """What this service reports in `capillary status` (maps filled, programs attached)."""
        return {}

    async def _health(self, _request) -> Health:
        counters = await self.counters() if self.ready else {}
        return Health(service=self.NAME, pid=os.getpid(), started=self.started, ready=self.ready,
                      detail=self.detail, metrics_port=self.config.metrics.port(self.NAME),
                      counters=counters)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        serve_metrics(self.registry, self.config.metrics.host, self.config.metrics.port(self.NAME))
        creds = Credentials.load(self.config.credentials_path(self.NAME))
        self.bus = await Bus.connect(creds, name=f"{self.NAME}@{self.config.node}", metrics=self.bus_metrics,
                                     node=self.config.node if self.config.cluster.enabled else None)
        await self.bus.serve(subjects.health(self.NAME), None, self._health)
        self.log.info("starting", node=self.config.node, pid=os.getpid())
        try:
            await self.start()
            self.ready, self.detail = True, "ok"
            self.log.info("ready", seconds=round(time.time() - self.started, 3))
            await self._stop.wait()
            self.log.info("stopping")
            await self.stopping()
        finally:
            self.ready = False
            await self.bus.drain()
            await self.stop()


def main(service_cls: type[Service]) -> None:
    parser = argparse.ArgumentParser(prog=f"capillary-{service_cls.NAME}")
    parser.add_argument("--config", help="node config file (default: $CAPILLARY_CONFIG)")
    args = parser.parse_args()
    hand_back_freed_memory()
    # A worker thread compiling a large policy holds the GIL for up to the switch interval
    # each time the event loop asks for it: 5 ms by default, and a request takes several turns.
    sys.setswitchinterval(SWITCH_INTERVAL)
    setup_logging(service_cls.NAME)
    config = load_config(args.config)
    asyncio.run(service_cls(config).run())
