"""flowd: datapath counters as metrics; datapath events -> flows."""
from __future__ import annotations

import asyncio
from pathlib import Path

from services.datapath import loader
from services.flowd.datapath_metrics import DatapathCollector
from services.runtime.app import Service


class FlowService(Service):
    NAME = "flowd"

    async def start(self) -> None:
        # The event ring and its stats: pinned before endpointd compiles lxc.c, which waits
        # for this service to be ready.
        self.maps = await asyncio.to_thread(loader.compile_source, "flowd_maps.c", self.config)
        self.registry.register(DatapathCollector(Path(self.config.datapath.bpfRoot)))
