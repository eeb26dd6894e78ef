"""Waiting on a condition in tests: poll with a generous deadline, never sleep-and-hope."""
from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], what: str, patience: float = 60) -> None:
    """Return once PREDICATE() is true; fail naming WHAT after PATIENCE seconds."""
    deadline = time.monotonic() + patience
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {patience}s: {what}")
        time.sleep(0.1)
