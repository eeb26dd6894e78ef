"""Large work off the event loop: collections paused while any thread is inside the block
(and back on, as before, once the last leaves), and a decode that calls back into Python
at each map gives the same result as the plain one."""
import gc
import threading

import pytest

from services.runtime.gil import off_loop, paused_collection
from services.wire import codec


@pytest.fixture
def collecting():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_collections_resume_only_when_the_last_thread_leaves(collecting):
    inside, leave = threading.Event(), threading.Event()

    def other():
        with paused_collection():
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(30)
    with paused_collection():
        assert not gc.isenabled()
    assert not gc.isenabled()          # the other thread is still inside
    leave.set()
    t.join()
    assert gc.isenabled()


def test_collections_stay_off_after_the_block_when_they_were_off(collecting):
    gc.disable()
    with paused_collection():
        pass
    assert not gc.isenabled()
    gc.enable()


def test_a_decode_that_shares_the_gil_reads_the_same():
    body = {"a": [{"ipBlock": {"cidr": f"10.0.0.{i}/32"}} for i in range(200)], "n": {"m": {}}}
    data = codec.encode(body)
    assert codec.decode(data, share_gil=True) == codec.decode(data) == body


def test_off_loop_runs_the_function_with_collections_paused(collecting):
    import asyncio
    assert asyncio.run(off_loop(gc.isenabled)) is False
    assert gc.isenabled()
