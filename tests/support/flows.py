"""Flows as they arrive on NATS, for end-to-end tests: a subscriber on its own thread and
event loop, collecting every flow a node publishes, with the subject it came on."""
from __future__ import annotations

import asyncio
import threading
import time

from services.runtime.bus import Bus, Credentials
from services.wire import codec, subjects
from services.wire.messages import FlowEvent


class FlowCollector:
    def __init__(self, node) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._items: list[tuple[str, dict]] = []
        self._taken = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(15), "could not subscribe to flows"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._subscribe())
        self._loop.run_forever()

    async def _subscribe(self) -> None:
        # the read-only flows user: subscribing to flows is all it may do
        creds = Credentials.load(self.node.state_dir / "nats" / f"{subjects.FLOWS_READER}.context.json")
        self.bus = await Bus.connect(creds, name="flow-collector")

        async def on_msg(msg) -> None:
            flow = FlowEvent.from_wire(codec.decode(msg.data)).flow
            with self._lock:
                self._items.append((msg.subject, flow))

        await self.bus.nc.subscribe(subjects.flows(self.node.name, "*"), cb=on_msg)
        await self.bus.nc.flush()
        self._ready.set()

    def all(self) -> list[tuple[str, dict]]:
        with self._lock:
            return list(self._items)

    def take(self, quiet: float = 0.8, timeout: float = 15) -> list[dict]:
        """Flows that arrived since the last take(), once none arrived for QUIET seconds."""
        deadline = time.monotonic() + timeout
        count, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                n = len(self._items)
            if n != count:
                count, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.1)
        with self._lock:
            new = [flow for _, flow in self._items[self._taken:]]
            self._taken = len(self._items)
        return new

    def close(self) -> None:
        async def stop() -> None:
            await self.bus.nc.close()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
