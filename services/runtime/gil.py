"""Large work on a worker thread without stopping the event loop.

A thread runs Python only while it holds the GIL, and the interpreter hands the GIL over
between bytecodes: a call into C code keeps it to the end. Two such calls in big work:
- msgpack's unpackb builds a 100,000-peer policy's maps (3 MB) in one call: ~50 ms;
- the cyclic garbage collector, which the allocations of that work set off, walks every
  object of the process in its oldest generation's collections.
Another thread (policyd's event loop: its health answers and small applies) waited up to
121 ms at a time during that decode, and up to 56–72 ms during that policy's parse in a
process already holding two such policies. decode(share_gil=True) calls back into Python
at each map, where the interpreter may hand the GIL over, and paused_collection() holds
full collections off while the work runs: 13 ms and 14–16 ms. The young generations are
still collected as the work goes, a few hundred objects at a time: with every collection
off, the first one after walked everything the work had made (27–40 ms for a 100,000-peer
policy's staging). sorted_in_steps() sorts what sorted() would hold the GIL for ~20 ms.
(Measured with a thread that sleeps 0.5 ms in a loop and notes its longest gap, and with
each call's own thread CPU time.)
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pausing = 0                # threads inside paused_collection()
_thresholds = gc.get_threshold()
NO_FULL = 1 << 30           # the oldest generation's threshold while paused: never reached
SORT_STEP = 8192            # items sorted in one call by sorted_in_steps()
INLINE_MAX = 1000           # items of work (peers, entries) done right on the event loop


@contextlib.contextmanager
def paused_collection():
    """No full (oldest-generation) collection while any thread is inside this block; the
    collector's thresholds are as before when the last one leaves. Reference counting,
    and the collections of young objects, go on."""
    global _pausing, _thresholds
    with _lock:
        if _pausing == 0:
            _thresholds = gc.get_threshold()
            gc.set_threshold(_thresholds[0], _thresholds[1], NO_FULL)
        _pausing += 1
    try:
        yield
    finally:
        with _lock:
            _pausing -= 1
            if _pausing == 0:
                gc.set_threshold(*_thresholds)


def sorted_in_steps(items: Iterable[T], step: int = SORT_STEP) -> list[T]:
    """sorted(ITEMS), in runs of STEP items merged in Python, where the interpreter may
    hand the GIL over between items (sorted() of 100,000 prefixes holds it for ~20 ms)."""
    items = list(items)
    if len(items) <= step:
        return sorted(items)
    runs = [sorted(items[start:start + step]) for start in range(0, len(items), step)]
    return list(heapq.merge(*runs))


def _paused(fn: Callable[..., T], *args) -> T:
    with paused_collection():
        return fn(*args)


async def off_loop(fn: Callable[..., T], *args) -> T:
    """FN(*ARGS) on a worker thread, with full collections paused while it runs (see above)."""
    return await asyncio.to_thread(_paused, fn, *args)


async def off_loop_if_large(items: int, fn: Callable[..., T], *args) -> T:
    """FN(*ARGS) on a worker thread (off_loop) when ITEMS, the size of the work, is
    INLINE_MAX or more; else right here. Small work is quicker done on the loop while large
    work runs on another thread: a worker thread waits for the GIL with every other thread
    that wants it, and the interpreter hands it to any of them. A small policy's staging,
    0.6 ms of CPU, took 100–130 ms on a worker thread while a 100,000-peer policy staged."""
    if items < INLINE_MAX:
        return fn(*args)
    return await off_loop(fn, *args)


def size_of(document, limit: int = INLINE_MAX) -> int:
    """How many values DOCUMENT (nested dicts and lists) holds, counting no further than
    LIMIT: the size of a request's work before it is parsed."""
    pending, seen = [document], 0
    while pending and seen < limit:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            continue
        seen += len(item)
    return min(seen, limit)
