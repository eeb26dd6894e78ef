"""The event ring's reader: a thread polls the BPF ring buffer and hands each batch of raw
events to the event loop with loop.call_soon_threadsafe. Polling blocks, so it never runs
on the loop; the loop side never blocks this thread (see Pipeline.offer).
"""
from __future__ import annotations

import asyncio
import ctypes as ct
import sys
import threading
from collections.abc import Callable

from services.datapath.loader import Loaded

RING_TABLE = b"cap_events"
POLL_MS = 100


class RingReader:
    """Owns the bcc object that holds the ring. Invariant: `read` counts every record taken
    from the ring, and every one of them reaches ON_BATCH (unless the loop has closed).
    `backlog` counts the records emitted before EPOCH_NS (CLOCK_MONOTONIC, as their ktime):
    left in the pinned ring by a previous flowd, they are not in this one's baseline."""

    def __init__(self, maps: Loaded, loop: asyncio.AbstractEventLoop,
                 on_batch: Callable[[list[bytes]], None], epoch_ns: int) -> None:
        self._bpf = maps.bpf
        self._loop = loop
        self._on_batch = on_batch
        self._epoch_ns = epoch_ns
        self._batch: list[bytes] = []
        self._stop = threading.Event()
        self.read = 0                       # written by the reader thread only
        self.backlog = 0                    # likewise
        self._bpf[RING_TABLE].open_ring_buffer(self._collect)
        self._thread = threading.Thread(target=self._run, name="flowd-ring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _collect(self, _ctx, data, size) -> int:
        raw = ct.string_at(data, size)
        if int.from_bytes(raw[:8], sys.byteorder) < self._epoch_ns:     # struct flow_event.ktime
            self.backlog += 1
        self._batch.append(raw)
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
