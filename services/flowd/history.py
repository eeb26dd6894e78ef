"""The most recent flows, for `capillary observe --last N`: a bounded ring in memory.

Invariant: holds at most `size` flows, oldest first; each flow pushed out to make room is
counted in `overwritten` (Hubble's lost-event source hubble_ring_buffer).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from services.flowd.filters import matches
from services.wire.messages import FlowFilter


class History:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("history size must be positive")
        self.size = size
        self._flows: deque[dict] = deque(maxlen=size)
        self.overwritten = 0

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, flow: dict) -> None:
        if len(self._flows) == self.size:
            self.overwritten += 1
        self._flows.append(flow)

    def query(self, f: FlowFilter, last: int = 0) -> list[dict]:
        """The LAST most recent flows matching F (0: all of them), oldest first."""
        out = []
        for flow in self._newest_first():
            if matches(flow, f):
                out.append(flow)
                if last and len(out) == last:
                    break
        out.reverse()
        return out

    def _newest_first(self) -> Iterator[dict]:
        return reversed(self._flows)
