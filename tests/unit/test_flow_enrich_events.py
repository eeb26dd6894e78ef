"""flowd's metadata follows endpoint events: the event's pod goes in (or out) at once, and a
burst of events asks for one listing of the pods and identities, not one per event (1,000
pods created in one apply made flowd list every pod and identity 1,000 times). A fake bus
counts the listings; tests/e2e/test_flows.py enriches new pods' flows on a real node."""
from __future__ import annotations

import asyncio

import structlog

from services.flowd import enrich
from services.flowd.enrich import Enricher
from services.flowd.metadata import IDENTITIES, PODS, Metadata
from services.wire import subjects
from services.wire.messages import EndpointEvent, Pod
from tests.unit.flowdata import pod


def pods(count: int) -> list[dict]:
    return [pod("x", f"p{i}", f"10.1.{i // 250}.{i % 250 + 1}", i + 1, 300 + i, 100 + i) for i in range(count)]


class FakeBus:
    def __init__(self) -> None:
        self.listed = {subjects.POD_LIST: 0, subjects.IDENTITY_LIST: 0, subjects.POLICY_RULES: 0}

    async def request(self, subject: str, message=None, timeout: float = 5.0):
        self.listed[subject] += 1
        return []


async def until(condition) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_a_burst_of_events_is_applied_at_once_and_listed_again_once(monkeypatch):
    monkeypatch.setattr(enrich, "EVENT_GAP", 3600.0)     # the burst's listing is not due in this test

    async def scenario() -> tuple[Metadata, FakeBus]:
        bus, meta = FakeBus(), Metadata()
        enricher = Enricher(bus, meta, structlog.get_logger())
        task = asyncio.create_task(enricher.run())
        try:
            await until(lambda: enricher.loaded)
            for raw in pods(200):
                await enricher.on_created(EndpointEvent(Pod.from_wire(raw)))
                await asyncio.sleep(0)
            await enricher.on_deleted(EndpointEvent(Pod.from_wire(pods(200)[7])))
            await asyncio.sleep(0.05)
        finally:
            task.cancel()
        return meta, bus

    meta, bus = asyncio.run(scenario())
    assert len(meta.pods_by_ip) == 199 and "10.1.0.8" not in meta.pods_by_ip
    assert 8 not in meta.endpoint_ids and 107 not in meta.pods_by_ifindex
    assert bus.listed == {subjects.POD_LIST: 1, subjects.IDENTITY_LIST: 1, subjects.POLICY_RULES: 1}


def test_a_deleted_pods_identity_leaves_unless_another_pod_has_it():
    meta = Metadata()
    a, b, c = pods(3)
    c["status"]["identity"] = b["status"]["identity"]          # b and c share an identity
    meta.set_pods([a, b, c])
    meta.set_identities([{"id": 300, "labels": {"k8s:app": "p0"}}, {"id": 301, "labels": {"k8s:app": "p1"}}])
    meta.drop_pod(Pod.from_wire(a))
    meta.drop_pod(Pod.from_wire(b))
    assert set(meta.identities) == {301}
    # A flow naming 300 now waits for a fetch (the number may come back with other labels).
    assert meta.unknown((300,), 0, 0) == frozenset({IDENTITIES})
    assert meta.unknown((0,), 1, 0) == frozenset({PODS})


def test_pods_coming_all_the_time_do_not_put_off_the_full_refresh(monkeypatch):
    """Endpoint events that never stop (pod churn) each ask for the pods and identities; the
    rule table is still listed every REFRESH_SECONDS."""
    monkeypatch.setattr(enrich, "EVENT_GAP", 0.01)
    monkeypatch.setattr(enrich, "REFRESH_SECONDS", 0.2)

    async def scenario() -> FakeBus:
        bus, meta = FakeBus(), Metadata()
        enricher = Enricher(bus, meta, structlog.get_logger())
        task = asyncio.create_task(enricher.run())
        try:
            await until(lambda: enricher.loaded)
            for raw in pods(200):                        # one pod every 5 ms for a second
                await enricher.on_created(EndpointEvent(Pod.from_wire(raw)))
                await asyncio.sleep(0.005)
        finally:
            task.cancel()
        return bus

    bus = asyncio.run(scenario())
    assert bus.listed[subjects.POD_LIST] > 10             # the events' own listings
    assert bus.listed[subjects.POLICY_RULES] >= 3         # the first load, then one per 0.2 s
