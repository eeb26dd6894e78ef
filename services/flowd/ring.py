"""The event ring's reader: a thread reads the pinned BPF ring buffer and hands each batch of
raw events to the event loop with loop.call_soon_threadsafe. Waiting blocks, so it never
runs on the loop; the loop side never blocks this thread (see Pipeline.offer).
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.datapath.ringbuf import RingBuffer

POLL_SECONDS = 0.1
BATCH = 4096            # records per hand-off: bounds the loop's turn and the ring's wait for room
GATHER_SECONDS = 0.001  # after a wake-up, let records gather this long: one hand-off (a wake-up
                        # of the loop) per record would cost more than the record itself


class RingReader:
    """Invariant: `read` counts every record taken from the ring, and every one of them
    reaches ON_BATCH (unless the loop has closed). `backlog` counts the records emitted
    before EPOCH_NS (CLOCK_MONOTONIC, as their ktime): left in the pinned ring by a previous
    flowd, they are not in this one's baseline."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop,
                 on_batch: Callable[[list[bytes]], None], epoch_ns: int) -> None:
        self._ring = RingBuffer(path)
        self._loop = loop
        self._on_batch = on_batch
        self._epoch_ns = epoch_ns
        self._in_backlog = True             # every record so far predates EPOCH_NS
        self._stop = threading.Event()
        self.read = 0                       # written by the reader thread only
        self.backlog = 0                    # likewise
        self._thread = threading.Thread(target=self._run, name="flowd-ring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._ring.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._ring.poll(POLL_SECONDS, BATCH)
            if not batch:
                continue
            if len(batch) < BATCH:
                time.sleep(GATHER_SECONDS)
                batch += self._ring.drain(BATCH - len(batch))
            if self._in_backlog:            # only the first records can predate this flowd
                old = sum(1 for raw in batch if int.from_bytes(raw[:8], sys.byteorder) < self._epoch_ns)
                self.backlog += old
                self._in_backlog = old == len(batch)
            self.read += len(batch)
            try:
                self._loop.call_soon_threadsafe(self._on_batch, batch)
            except RuntimeError:            # the loop is closed: the service is stopping
                return
