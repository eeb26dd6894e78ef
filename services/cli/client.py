"""The CLI's connection to a node: admin credentials from the node's context file."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from services.runtime.bus import Bus, Credentials
from services.runtime.config import NodeConfig
from services.runtime.natsserver import ADMIN

CONTEXT_ENV = "CAPILLARY_CONTEXT"


def context_path(config: NodeConfig) -> Path:
    """$CAPILLARY_CONTEXT (e.g. a copy on another machine) or the node's admin context."""
    env = os.environ.get(CONTEXT_ENV)
    return Path(env) if env else config.credentials_path(ADMIN)


class Client:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.bus: Bus | None = None

    async def __aenter__(self) -> "Client":
        creds = Credentials.load(context_path(self.config))
        self.bus = await Bus.connect(creds, name="capillary-cli", retry=False)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.bus:
            await self.bus.nc.close()

    async def call(self, subject: str, message=None, timeout: float = 10.0) -> Any:
        return await self.bus.request(subject, message, timeout=timeout)


def run(coro):
    return asyncio.run(coro)
