"""routed's shadowed ipcache claims in JetStream KV, against a real nats-server: stored by
difference, read back whole, migrated from the file earlier releases wrote, a failed write
reported and made good later, and a bad stored value refused rather than skipped."""
import asyncio
import json

import pytest

from services.routed.shadowed import ShadowStore
from services.wire import codec, subjects
from tests.support.jetstream import connect, jetstream_server

BUCKET = subjects.BUCKET_IPCACHE_SHADOWED
POD = ("10.0.0.5/32", "cidr-policy", 16777217)
REMOTE = ("10.1.0.7/32", "remote", 5, "192.168.9.2")


@pytest.fixture
def nats_url(tmp_path):
    with jetstream_server(tmp_path) as url:
        yield url


def run(coro):
    return asyncio.run(coro)


async def _store(url: str, legacy) -> tuple:
    bus = await connect(url)
    store = ShadowStore(bus, 1, legacy)
    return bus, store, await store.load()


def test_claims_round_trip_and_a_released_prefix_is_deleted(nats_url, tmp_path):
    async def body():
        bus, store, first = await _store(nats_url, tmp_path / "none.json")
        assert first == []
        assert await store.save([POD, REMOTE]) == 0
        assert await store.save([REMOTE]) == 0
        await bus.drain()
        bus, _, again = await _store(nats_url, tmp_path / "none.json")
        keys = sorted(await (await bus.kv(BUCKET)).keys())
        await bus.drain()
        return again, keys
    again, keys = run(body())
    assert again == [("10.1.0.7/32", "remote", 5, "192.168.9.2")]
    assert keys == ["10.1.0.7_32"]


def test_the_legacy_file_is_read_then_removed_once_its_claims_are_in_kv(nats_url, tmp_path):
    legacy = tmp_path / "ipcache-shadowed.json"
    legacy.write_text(json.dumps([list(POD)]))

    async def body():
        bus, store, rows = await _store(nats_url, legacy)
        assert [tuple(r) for r in rows] == [POD]
        assert legacy.exists()                   # nothing is lost before KV holds it
        assert await store.save(rows) == 0
        await bus.drain()
        bus, _, again = await _store(nats_url, legacy)
        await bus.drain()
        return again
    assert run(body()) == [(*POD, "")]
    assert not legacy.exists()


def test_a_failed_write_is_pending_and_made_good_by_a_later_save(nats_url, tmp_path):
    async def body():
        bus, store, _ = await _store(nats_url, tmp_path / "none.json")
        await bus.js.delete_key_value(BUCKET)    # the bucket is gone: every write fails
        pending = await store.save([POD, REMOTE])
        await bus.kv(BUCKET, create=True)
        healed = await store.save([POD, REMOTE])
        await bus.drain()
        bus, _, again = await _store(nats_url, tmp_path / "none.json")
        await bus.drain()
        return pending, healed, again
    pending, healed, again = run(body())
    assert pending == 2
    assert healed == 0
    assert sorted(again) == [(*POD, ""), ("10.1.0.7/32", "remote", 5, "192.168.9.2")]


@pytest.mark.parametrize("value", [{"claims": "x"}, {"claims": [["remote", "5", ""]]}, {}])
def test_a_bad_stored_value_is_refused_naming_the_prefix(nats_url, tmp_path, value):
    async def body():
        bus = await connect(nats_url)
        kv = await bus.kv(BUCKET, create=True)
        await kv.put("10.0.0.9_32", codec.encode(value))
        try:
            with pytest.raises(ValueError, match="10.0.0.9/32"):
                await ShadowStore(bus, 1, tmp_path / "none.json").load()
        finally:
            await bus.drain()
    run(body())
