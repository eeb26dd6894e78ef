"""Turns on a concurrent subject: a request waits for the start of the latest earlier one
with its order key, and for no other (a large apply to one policy, decoded on a worker
thread, held up the small applies to every other policy)."""
import asyncio

from services.runtime.bus import _Turns


def test_a_request_waits_only_for_the_last_one_with_its_key():
    async def body():
        turns = _Turns()
        big = turns.take("policy/a")
        other = turns.take("policy/b")
        again = turns.take("policy/a")
        assert other.before is None
        assert again.before is big.started
        turns.done("policy/a", big)               # not the latest of its key: kept
        assert turns.last == {"policy/a": again.started, "policy/b": other.started}
        turns.done("policy/a", again)
        turns.done("policy/b", other)
        assert turns.last == {}                   # only keys in flight are held

    asyncio.run(body())


def test_without_a_key_every_request_waits_for_the_one_before():
    async def body():
        turns = _Turns()
        first, second = turns.take(None), turns.take(None)
        assert first.before is None and second.before is first.started

    asyncio.run(body())
