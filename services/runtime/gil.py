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
collections off while the work runs (what it leaves is collected after): 13 ms and 14–16 ms.
(Measured with a thread that sleeps 0.5 ms in a loop and notes its longest gap.)
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pausing = 0                # threads inside paused_collection()
_was_enabled = False


@contextlib.contextmanager
def paused_collection():
    """No cyclic garbage collection while any thread is inside this block (reference
    counting still frees what it can); collections resume, if they were on, when the last
    one leaves."""
    global _pausing, _was_enabled
    with _lock:
        if _pausing == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausing += 1
    try:
        yield
    finally:
        with _lock:
            _pausing -= 1
            if _pausing == 0 and _was_enabled:
                gc.enable()


def _paused(fn: Callable[..., T], *args) -> T:
    with paused_collection():
        return fn(*args)


async def off_loop(fn: Callable[..., T], *args) -> T:
    """FN(*ARGS) on a worker thread, with collections paused while it runs (see above)."""
    return await asyncio.to_thread(_paused, fn, *args)
