"""The CLI's connection to a node: admin credentials from the node's context file."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from services.runtime.bus import Bus, Credentials, ServiceError
from services.runtime.config import ADMIN, NodeConfig
from services.wire.messages import UNAVAILABLE

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
        self.bus = await Bus.connect(creds, name="capillary-cli", retry=False,
                                     node=self.config.node if self.config.cluster.enabled else None)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.bus:
            await self.bus.close()

    async def call(self, subject: str, message=None, timeout: float = 10.0, node: str | None = None) -> Any:
        """SUBJECT on this node, or in a cluster on NODE."""
        return await self.bus.request(subject, message, timeout=timeout, node=node)

    async def next(self, queue: asyncio.Queue, timeout: float | None = None) -> Any:
        """QUEUE's next item (None after TIMEOUT seconds); raises once the connection to NATS
        is lost: a command that follows ends with an error, never waits on in silence."""
        get = asyncio.ensure_future(queue.get())
        lost = asyncio.ensure_future(self.bus.lost.wait())
        try:
            await asyncio.wait({get, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        if self.bus.lost.is_set():
            raise ServiceError(UNAVAILABLE, "lost the connection to NATS: is the node up?")
        return None


def run(coro):
    return asyncio.run(coro)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE = 5.0        # seconds a stopped command has to clean up (unsubscribe, close)


def follow(coro, interrupted: int = 0) -> int:
    """Run a command that goes on until stopped (observe -f, monitor, walk): SIGINT (Ctrl-C)
    or SIGTERM ends it with status INTERRUPTED.

    The handlers are the event loop's own (a wake-up fd), installed whatever the signal's
    disposition was: a job a non-interactive shell starts in the background inherits SIGINT
    ignored, and then neither Python nor asyncio.run would ever act on it. The command is
    cancelled, again while it swallows the cancellation (nats-py's flush does, so a
    cancellation landing in a publish is lost), until it ends or STOP_GRACE runs out."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.ensure_future(coro)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            deadline = loop.time() + STOP_GRACE
            while not work.done() and loop.time() < deadline:
                work.cancel()
                await asyncio.wait({work}, timeout=0.2)
            return interrupted
        finally:
            stopping.cancel()
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
