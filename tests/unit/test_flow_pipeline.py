"""The pipeline's bookkeeping: every record offered is counted exactly once (queued and
published, or lost to a full queue, to decoding, or to a failed publish)."""
from __future__ import annotations

import asyncio

import nats.errors
import pytest
import structlog
from prometheus_client import CollectorRegistry

from services.datapath.maps.events import Stats
from services.flowd.accounting import Accounting
from services.flowd.enrich import Enricher
from services.flowd.history import History
from services.flowd.metrics import FlowMetrics
from services.flowd.pipeline import Pipeline
from services.wire import codec
from tests.unit.flowdata import A, B, event, metadata, packet, udp


class RecordingNats:
    """Stands in for the NATS connection; publishes fail while `full` is set."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []
        self.full = False

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.full:
            raise nats.errors.OutboundBufferLimitError
        self.published.append((subject, codec.decode(payload)))


class Bus:
    """Publishes one by one (as while reconnecting) or, with `batching`, many at once."""

    def __init__(self, batching: bool = False) -> None:
        self.nc = RecordingNats()
        self.batching = batching
        self.writes = 0

    def can_publish_many(self) -> bool:
        return self.batching

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        if self.nc.full:
            raise nats.errors.OutboundBufferLimitError
        self.writes += 1
        self.nc.published += [(subject, codec.decode(payload)) for subject, payload in messages]


def make(queue_size: int, batching: bool = False) -> tuple[Pipeline, Accounting, Bus]:
    bus = Bus(batching)
    acct = Accounting(ring=lambda: Stats(0, 0), read=lambda: 0)
    enricher = Enricher(bus, metadata(), structlog.get_logger())
    pipe = Pipeline("node1", bus, enricher, History(2), FlowMetrics.create(CollectorRegistry()), acct,
                    queue_size=queue_size)
    return pipe, acct, bus


@pytest.mark.parametrize("batching", [False, True])
async def test_every_record_is_counted_once(batching):
    pipe, acct, bus = make(queue_size=3, batching=batching)
    good = event(packet(A, B, 17, udp(1, 2)))
    pipe.offer([good, b"not an event", good, good, good])      # the last two find the queue full
    assert acct.queue_full == 2
    await pipe.drain()
    bus.nc.full = True
    pipe.offer([good])
    await pipe.drain()
    assert (acct.published, acct.undecodable, acct.publish_failed, acct.queue_full) == (2, 1, 1, 2)
    assert [s for s, _ in bus.nc.published] == ["capillary.flows.node1.FORWARDED"] * 2
    assert bus.nc.published[0][1]["kind"] == "flow" and bus.nc.published[0][1]["flow"]["source"]["pod_name"] == "a"
    assert len(pipe.history) == 2 and pipe.history.overwritten == 1


async def test_offer_never_blocks_the_reader():
    pipe, acct, _ = make(queue_size=1)
    pipe.offer([b"x"] * 1000)
    assert pipe.queued == 1 and acct.queue_full == 999
    await asyncio.sleep(0)


async def test_raw_events_go_to_monitors_while_a_lease_runs():
    pipe, acct, bus = make(queue_size=100)
    good = event(packet(A, B, 17, udp(1, 2)))
    monitor_subject = "capillary.monitor.node1"

    async def one() -> list[str]:
        bus.nc.published.clear()
        pipe.offer([good, good])
        await pipe.drain()
        return [s for s, _ in bus.nc.published if s == monitor_subject]

    assert await one() == []
    pipe.attach_monitor("m1", 10)
    pipe.attach_monitor("m2", 10)
    assert await one() == [monitor_subject]                     # one message for the batch
    assert bus.nc.published[0][1]["events"] == [good, good]
    pipe.attach_monitor("m1", 0)
    assert await one() == [monitor_subject]                     # m2 still holds a lease
    pipe.attach_monitor("m2", 0)
    assert await one() == []
    assert acct.published == 8                                  # flows never depend on monitors


async def test_flows_are_written_in_chunks():
    pipe, acct, bus = make(queue_size=10_000, batching=True)
    pipe.offer([event(packet(A, B, 17, udp(1, 2)))] * 600)
    await pipe.drain()
    assert acct.published == 600 and bus.writes == 3          # 256 + 256 + 88
