"""RevertStack: undo steps run newest first, sync or async, and one failure does not stop the rest."""
from __future__ import annotations

from structlog.testing import capture_logs

from services.runtime.revert import RevertStack


async def test_unwinds_newest_first_mixing_sync_and_async_steps():
    done: list[str] = []
    stack = RevertStack()

    async def undo_veth():
        done.append("veth")

    stack.push("netns", lambda: done.append("netns"))
    stack.push("veth", undo_veth)
    stack.push("route", lambda: done.append("route"))
    await stack.unwind()
    assert done == ["route", "veth", "netns"]


async def test_a_failing_step_is_logged_and_the_rest_still_run():
    done: list[str] = []
    stack = RevertStack()

    def broken():
        raise OSError("device busy")

    async def broken_async():
        raise RuntimeError("bus gone")

    stack.push("first", lambda: done.append("first"))
    stack.push("broken", broken)
    stack.push("broken-async", broken_async)
    stack.push("last", lambda: done.append("last"))
    with capture_logs() as logs:
        await stack.unwind()
    assert done == ["last", "first"]
    failures = [(e["step"], e["error"]) for e in logs if e["event"] == "revert step failed"]
    assert failures == [("broken-async", "bus gone"), ("broken", "device busy")]


async def test_unwind_empties_the_stack():
    calls: list[int] = []
    stack = RevertStack()
    stack.push("once", lambda: calls.append(1))
    await stack.unwind()
    await stack.unwind()
    assert calls == [1]


async def test_commit_clears_the_undo_steps():
    calls: list[str] = []
    stack = RevertStack()
    stack.push("a", lambda: calls.append("a"))
    stack.commit()
    stack.push("b", lambda: calls.append("b"))
    await stack.unwind()
    assert calls == ["b"]
