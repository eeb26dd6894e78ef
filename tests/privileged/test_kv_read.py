"""Reading a KV bucket against a real nats-server: what is stored comes back, an empty bucket
is empty only when its stream says so, and a read that cannot be made raises."""
import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoKeysError

from services.runtime.bus import StateUnreadable, kv_items
from services.wire import codec
from tests.support.jetstream import connect, jetstream_server


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    with jetstream_server(tmp_path_factory.mktemp("nats")) as url:
        yield url


def run(coro):
    return asyncio.run(coro)


async def _bucket(url: str, name: str, items: dict, deleted: tuple = (), history: int = 1):
    bus = await connect(url)
    kv = await bus.kv(name, create=True, history=history)
    for key, value in items.items():
        await kv.put(key, codec.encode(value))
    for key in deleted:
        await kv.put(key, codec.encode({"gone": True}))
        await kv.delete(key)
    return bus, kv


def _spurious_no_keys(kv) -> None:
    """nats-py's keys() under load: its watcher's end-of-data marker overtakes the values."""
    async def keys(*_args, **_kwargs):
        raise NoKeysError
    kv.keys = keys


def test_a_spurious_no_keys_answer_does_not_empty_a_bucket(nats_url):
    async def body():
        bus, kv = await _bucket(nats_url, "spurious", {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}})
        try:
            _spurious_no_keys(kv)
            return await bus.kv_items(kv)
        finally:
            await bus.drain()
    assert run(body()) == {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}


def test_deleted_and_purged_keys_are_absent_and_live_ones_kept(nats_url):
    async def body():
        bus, kv = await _bucket(nats_url, "mixed", {"live": {"n": 1}}, deleted=("dead",), history=5)
        try:
            await kv.put("purged", codec.encode({"n": 2}))
            await kv.purge("purged")
            return await bus.kv_items(kv)
        finally:
            await bus.drain()
    assert run(body()) == {"live": {"n": 1}}


def test_a_bucket_of_only_delete_markers_is_empty(nats_url):
    async def body():
        bus, kv = await _bucket(nats_url, "alldead", {}, deleted=("x", "y"))
        try:
            return await bus.kv_items(kv)
        finally:
            await bus.drain()
    assert run(body()) == {}


def test_a_new_bucket_is_empty(nats_url):
    async def body():
        bus, kv = await _bucket(nats_url, "fresh", {})
        try:
            return await bus.kv_items(kv)
        finally:
            await bus.drain()
    assert run(body()) == {}


def test_a_stream_that_cannot_be_read_raises_never_returns_empty(nats_url):
    async def body():
        bus, kv = await _bucket(nats_url, "unreadable", {"a": {"n": 1}})

        class NoStreamInfo:
            async def stream_info(self, *_args, **_kwargs):
                raise NatsTimeout
        try:
            with pytest.raises(StateUnreadable, match="cannot read KV bucket unreadable"):
                await kv_items(NoStreamInfo(), kv, attempts=2)
        finally:
            await bus.drain()
    run(body())


def test_a_stream_whose_subjects_disagree_with_its_count_raises(nats_url):
    async def body():
        bus, kv = await _bucket(nats_url, "short", {"a": {"n": 1}, "b": {"n": 2}})
        real = bus.js

        class Truncated:
            async def stream_info(self, *args, **kwargs):
                info = await real.stream_info(*args, **kwargs)
                info.state.subjects = dict(list(info.state.subjects.items())[:1])
                return info
        try:
            with pytest.raises(StateUnreadable, match="2 messages but its subjects account for 1"):
                await kv_items(Truncated(), kv, attempts=2)
        finally:
            await bus.drain()
    run(body())


def test_a_node_reads_only_its_own_keys_of_a_shared_bucket(nats_url):
    """NodeKV: each node's keys under "<node>.", read back without the others' (which
    still count towards the stream's consistency check)."""
    from services.runtime.bus import NodeKV

    async def go():
        bus = await connect(nats_url)
        try:
            kv = await bus.kv("t_shared", create=True)
            one, two = NodeKV(kv, "n1"), NodeKV(kv, "n2")
            await one.put("a", codec.encode({"v": 1}))
            await two.put("a", codec.encode({"v": 2}))
            await two.put("b", codec.encode({"v": 3}))
            await two.delete("b")
            assert await kv_items(bus.js, one) == {"a": {"v": 1}}
            assert await kv_items(bus.js, two) == {"a": {"v": 2}}
        finally:
            await bus.close()
    run(go())
