"""flowd: datapath counters as metrics now; datapath events -> flows with the flow issue."""
from __future__ import annotations

from pathlib import Path

from services.flowd.datapath_metrics import DatapathCollector
from services.runtime.app import Service


class FlowService(Service):
    NAME = "flowd"

    async def start(self) -> None:
        self.registry.register(DatapathCollector(Path(self.config.datapath.bpfRoot)))
