"""Large work off the event loop: full collections paused while any thread is inside the
block (and the thresholds as before once the last leaves), sorting in steps, and a decode
that calls back into Python at each map gives the same result as the plain one."""
import gc
import threading

import pytest

from services.runtime.gil import NO_FULL, off_loop, paused_collection, sorted_in_steps
from services.wire import codec


@pytest.fixture
def collecting():
    was, thresholds = gc.isenabled(), gc.get_threshold()
    gc.enable()
    yield thresholds
    gc.set_threshold(*thresholds)
    if not was:
        gc.disable()


def test_full_collections_resume_only_when_the_last_thread_leaves(collecting):
    inside, leave = threading.Event(), threading.Event()

    def other():
        with paused_collection():
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(30)
    with paused_collection():
        assert gc.get_threshold()[2] == NO_FULL
    assert gc.get_threshold()[2] == NO_FULL          # the other thread is still inside
    leave.set()
    t.join()
    assert gc.get_threshold() == collecting
    assert gc.isenabled()


def test_young_objects_are_still_collected_while_paused(collecting):
    """Nothing is left for one long collection after the block: the young generation is
    collected as it fills."""
    with paused_collection():
        junk = [[i] for i in range(20 * collecting[0])]
        assert gc.get_count()[0] < 2 * collecting[0]
    del junk


def test_sorting_in_steps_gives_what_sorted_gives():
    import random
    items = [f"10.{random.randrange(256)}.{random.randrange(256)}.0/24" for _ in range(5000)]
    assert sorted_in_steps(items, step=64) == sorted(items)
    assert sorted_in_steps(set(items)) == sorted(set(items))
    assert sorted_in_steps([]) == []


def test_a_decode_that_shares_the_gil_reads_the_same():
    body = {"a": [{"ipBlock": {"cidr": f"10.0.0.{i}/32"}} for i in range(200)], "n": {"m": {}}}
    data = codec.encode(body)
    assert codec.decode(data, share_gil=True) == codec.decode(data) == body


def test_off_loop_runs_the_function_with_full_collections_paused(collecting):
    import asyncio
    assert asyncio.run(off_loop(lambda: gc.get_threshold()[2])) == NO_FULL
    assert gc.get_threshold() == collecting


def test_small_work_runs_on_the_loop_and_large_work_on_another_thread():
    import asyncio
    from services.runtime.gil import INLINE_MAX, off_loop_if_large

    async def where() -> tuple[int, int, int]:
        return (threading.get_ident(), await off_loop_if_large(INLINE_MAX - 1, threading.get_ident),
                await off_loop_if_large(INLINE_MAX, threading.get_ident))

    loop_thread, small, large = asyncio.run(where())
    assert small == loop_thread and large != loop_thread


def test_a_document_is_counted_no_further_than_the_limit():
    from services.runtime.gil import size_of
    peers = [{"ipBlock": {"cidr": f"10.0.0.{i}/32"}} for i in range(200)]
    assert size_of({"spec": {"ingress": [{"from": peers}]}}, limit=10_000) == 1 + 1 + 1 + 1 + 200 + 200 + 200
    assert size_of({"spec": {"ingress": [{"from": peers}]}}, limit=50) == 50
    assert size_of("not a document") == 0 and size_of({}) == 0
