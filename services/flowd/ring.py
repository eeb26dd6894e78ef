"""The event ring's reader: a thread polls the BPF ring buffer and hands each batch of raw
events to the event loop with loop.call_soon_threadsafe. Polling blocks, so it never runs
on the loop; the loop side never blocks this thread (see Pipeline.offer).
"""
from __future__ import annotations

import asyncio
import ctypes as ct
import threading
from collections.abc import Callable

from services.datapath.loader import Loaded

RING_TABLE = b"cap_events"
POLL_MS = 100


class RingReader:
    """Owns the bcc object that holds the ring. Invariant: `read` counts every record taken
    from the ring, and every one of them reaches ON_BATCH (unless the loop has closed)."""

    def __init__(self, maps: Loaded, loop: asyncio.AbstractEventLoop,
                 on_batch: Callable[[list[bytes]], None]) -> None:
        self._bpf = maps.bpf
        self._loop = loop
        self._on_batch = on_batch
        self._batch: list[bytes] = []
        self._stop = threading.Event()
        self.read = 0                       # written by the reader thread only
        self._bpf[RING_TABLE].open_ring_buffer(self._collect)
        self._thread = threading.Thread(target=self._run, name="flowd-ring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _collect(self, _ctx, data, size) -> int:
        self._batch.append(ct.string_at(data, size))
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._bpf.ring_buffer_poll(POLL_MS)
            if not self._batch:
                continue
            batch, self._batch = self._batch, []
            self.read += len(batch)
            try:
                self._loop.call_soon_threadsafe(self._on_batch, batch)
            except RuntimeError:            # the loop is closed: the service is stopping
                return
