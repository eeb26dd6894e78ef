"""A revert stack: multi-step changes undo the steps already done when a later one fails."""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()


class RevertStack:
    """Push an undo step after each step succeeds; unwind() on failure, commit() on success.

    An undo step may be a plain function or return an awaitable.
    """

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    async def unwind(self) -> None:
        """Run every undo step, newest first; a failing step is logged, the rest still run."""
        while self._undo:
            what, undo = self._undo.pop()
            try:
                result = undo()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.error("revert step failed", step=what, error=str(exc))

    async def together(self, *steps: tuple[str, Awaitable, Callable[[], object] | None]) -> None:
        """Await the STEPS' (what, awaitable, undo) awaitables at once; push the undo of each
        that succeeded (None: nothing to undo), in the order given; then raise the first
        failure, if any. For independent steps whose time would otherwise add up."""
        outcomes = await asyncio.gather(*(awaitable for _, awaitable, _ in steps), return_exceptions=True)
        for (what, _, undo), outcome in zip(steps, outcomes):
            if undo is not None and not isinstance(outcome, BaseException):
                self.push(what, undo)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def commit(self) -> None:
        self._undo.clear()
