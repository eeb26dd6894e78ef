"""A verdict is attributed to the rule that made it even when flowd's rule table lags the
policy apply: the event waits for one fetch of policy.rules, and only that event waits.

Against a real nats-server, with flowd's own Bus, Enricher and Pipeline; the replies of
endpointd and policyd come from responders the test controls, so the lag is made exactly:
flowd refreshes, then the rule appears, then its packet's event arrives."""
from __future__ import annotations

import asyncio

import pytest
import structlog
from prometheus_client import CollectorRegistry

from services.datapath.maps.events import Stats
from services.datapath.numbers import EVENT_POLICY_VERDICT, METRIC_INGRESS
from services.flowd.accounting import Accounting
from services.flowd.enrich import Enricher
from services.flowd.history import History
from services.flowd.metadata import Metadata
from services.flowd.metrics import FlowMetrics
from services.flowd import waiting
from services.flowd.pipeline import Pipeline
from services.runtime.bus import Bus, Credentials
from services.wire import codec, subjects
from services.wire.messages import ListRequest
from tests.support.natsbare import BareNats
from tests.unit.flowdata import A, B, ID_A, ID_B, event, packet, pod, udp

RULE = {"rule_id": 77, "kind": "CiliumNetworkPolicy", "name": "only-a", "namespace": "x",
        "direction": "ingress", "deny": False, "index": 0}
IDENTITIES = [{"id": 2, "labels": {"reserved:world": ""}}, {"id": ID_A, "labels": {"k8s:app": "a"}},
              {"id": ID_B, "labels": {"k8s:app": "b"}}]
DEADLINE = 30.0


class Node:
    """What flowd asks of endpointd and policyd, answered from `rules` (policyd's table);
    while `hold` is clear, policy.rules replies wait for it."""

    def __init__(self) -> None:
        self.rules: list[dict] = []
        self.identities: list[dict] = list(IDENTITIES)
        self.hold = asyncio.Event()
        self.hold.set()

    async def serve(self, bus: Bus) -> None:
        async def pods(_req):
            return [pod("x", "a", A, 1, ID_A, 11), pod("x", "b", B, 2, ID_B, 12)]

        async def identities(_req):
            return list(self.identities)

        async def rules(_req):
            await self.hold.wait()
            return list(self.rules)

        await bus.serve(subjects.POD_LIST, ListRequest, pods)
        await bus.serve(subjects.IDENTITY_LIST, ListRequest, identities)
        await bus.serve(subjects.POLICY_RULES, ListRequest, rules)


@pytest.fixture
async def flowd():
    nats = BareNats()
    bus = await Bus.connect(Credentials(nats.url, "", ""), "flowd-test", retry=False)
    node = Node()
    await node.serve(bus)
    flows: asyncio.Queue[dict] = asyncio.Queue()

    async def on_flow(msg) -> None:
        flows.put_nowait(codec.decode(msg.data)["flow"])

    await bus.nc.subscribe(subjects.flows("node1"), cb=on_flow)
    enricher = Enricher(bus, Metadata(), structlog.get_logger())
    metrics = FlowMetrics.create(CollectorRegistry())
    pipe = Pipeline("node1", bus, enricher, History(100), metrics,
                    Accounting(ring=lambda: Stats(0, 0), read=lambda: 0))
    task = asyncio.create_task(pipe.run())
    try:
        yield pipe, node, flows, metrics
    finally:
        task.cancel()
        node.hold.set()
        await bus.nc.close()
        nats.close()


def verdict(sport: int, rule_id: int) -> bytes:
    return event(packet(A, B, 17, udp(sport, 80)), EVENT_POLICY_VERDICT, 0, endpoint_id=2,
                 direction=METRIC_INGRESS, rule_id=rule_id)


def trace(sport: int) -> bytes:
    return event(packet(A, B, 17, udp(sport, 80)))


def other_pair(sport: int) -> bytes:
    """A trace from pod b to an address outside (the world)."""
    return event(packet(B, "10.200.0.9", 17, udp(sport, 80)), endpoint_id=2, src_identity=ID_B, dst_identity=2)


async def next_flow(flows: asyncio.Queue) -> dict:
    return await asyncio.wait_for(flows.get(), DEADLINE)


async def test_a_rule_applied_after_the_last_refresh_attributes_its_first_flow(flowd):
    pipe, node, flows, metrics = flowd
    assert await pipe.enricher.refresh()            # flowd is up to date...
    node.rules.append(RULE)                         # ...then a policy is applied
    pipe.offer([verdict(40001, 77)])                # ...and its first packet passes
    flow = await next_flow(flows)
    assert flow["ingress_allowed_by"] == [{"name": "only-a", "namespace": "x", "kind": "CiliumNetworkPolicy",
                                           "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                                                      "k8s:io.cilium.k8s.policy.name=only-a",
                                                      "k8s:io.cilium.k8s.policy.namespace=x"],
                                           "rule_index": 0}]
    assert metrics.unattributed._value.get() == 0
    assert pipe.queued == 0 and pipe.acct.published == 1


async def test_only_the_event_that_names_an_unknown_rule_waits_for_its_fetch(flowd):
    pipe, node, flows, _ = flowd
    assert await pipe.enricher.refresh()
    node.rules.append(RULE)
    node.hold.clear()                               # policyd is slow to answer
    pipe.offer([verdict(40002, 77)])
    pipe.offer([other_pair(40003)])
    first = await next_flow(flows)                  # the known one goes out meanwhile
    assert first["l4"]["UDP"]["source_port"] == 40003
    assert pipe.queued == 1 and len(pipe.waiting) == 1      # the other is in its fetch
    node.hold.set()
    second = await next_flow(flows)
    assert second["l4"]["UDP"]["source_port"] == 40002
    assert second["ingress_allowed_by"][0]["name"] == "only-a"
    assert pipe.queued == 0


async def test_a_rule_that_stays_unknown_goes_out_once_fetched_and_is_counted(flowd):
    pipe, node, flows, metrics = flowd
    assert await pipe.enricher.refresh()
    fetches = pipe.waiting.fetches
    pipe.offer([verdict(40004, 99)])                # no policy has rule 99 (deleted since)
    flow = await next_flow(flows)
    assert flow["ingress_allowed_by"][0]["kind"] == "Unknown"
    assert pipe.waiting.fetches == fetches + 1
    assert metrics.unattributed._value.get() == 1
    pipe.offer([verdict(40004, 99)])                # the same shape again: no second wait
    await next_flow(flows)
    assert pipe.waiting.fetches == fetches + 1 and metrics.unattributed._value.get() == 2
    assert pipe.queued == 0 and pipe.acct.published == 2


async def test_events_between_the_same_pods_keep_their_order_behind_a_waiting_one(flowd):
    pipe, node, flows, _ = flowd
    assert await pipe.enricher.refresh()
    node.rules.append(RULE)
    node.hold.clear()
    pipe.offer([verdict(40005, 77), trace(40006)])  # the trace comes after the verdict
    pipe.offer([other_pair(40007)])                 # another pair of addresses: goes on
    first = await next_flow(flows)
    assert first["l4"]["UDP"]["source_port"] == 40007
    node.hold.set()
    assert [(await next_flow(flows))["l4"]["UDP"]["source_port"] for _ in range(2)] == [40005, 40006]
    assert pipe.queued == 0 and len(pipe.waiting) == 0


async def test_an_event_behind_a_waiting_one_still_fetches_the_rule_it_names(flowd):
    """A trace naming an identity flowd has not listed (another node's pod) waits for
    identity.list; the verdict of a rule applied since, between the same addresses, waits
    behind it and must get policy.rules fetched too, not only what the trace lacked."""
    pipe, node, flows, metrics = flowd
    assert await pipe.enricher.refresh()
    node.rules.append(RULE)
    remote = event(packet(A, B, 17, udp(40008, 80)), src_identity=300)    # listed by no one
    pipe.offer([remote, verdict(40009, 77)])
    got = [await next_flow(flows) for _ in range(2)]
    assert [f["l4"]["UDP"]["source_port"] for f in got] == [40008, 40009]
    assert got[1]["ingress_allowed_by"][0]["name"] == "only-a"
    assert metrics.unattributed._value.get() == 0
    assert pipe.queued == 0 and len(pipe.waiting) == 0


async def test_another_nodes_new_identity_learnt_a_moment_late_still_labels_the_flow(flowd):
    """A pod made on another node a moment ago sends before policyd here has read its
    identity from the cluster: its flow waits past the first fetch, and goes out with the
    labels once policyd lists them; the pair's next event follows it in order."""
    pipe, node, flows, metrics = flowd
    assert await pipe.enricher.refresh()
    pipe.offer([event(packet(A, B, 17, udp(40020, 80)), src_identity=301), trace(40021)])
    for _ in range(200):                    # a second fetch began: the first found it unknown
        if pipe.waiting.fetches >= 2:
            break
        await asyncio.sleep(0.05)
    assert pipe.waiting.fetches >= 2 and len(pipe.waiting) == 2
    node.identities.append({"id": 301, "labels": {"k8s:app": "new", "k8s:io.kubernetes.pod.namespace": "x"}})
    got = [await next_flow(flows) for _ in range(2)]
    assert [f["l4"]["UDP"]["source_port"] for f in got] == [40020, 40021]
    assert got[0]["source"]["identity"] == 301 and "k8s:app=new" in got[0]["source"]["labels"]
    assert pipe.queued == 0 and len(pipe.waiting) == 0


async def test_an_identity_that_never_comes_is_waited_for_once(flowd, monkeypatch):
    """An identity policyd never lists (it is cut off from the cluster, say): the first flow
    naming it waits out the patience and goes out without labels; later flows naming it
    wait for one fetch only, so a stream of them cannot fill the queue."""
    monkeypatch.setattr(waiting, "IDENTITY_PATIENCE", 0.5)
    pipe, node, flows, metrics = flowd
    assert await pipe.enricher.refresh()
    pipe.offer([event(packet(A, B, 17, udp(40030, 80)), src_identity=302)])
    first = await next_flow(flows)
    assert first["source"]["identity"] == 302 and not first["source"].get("labels")
    assert pipe.waiting.fetches >= 2                     # it was fetched again, in vain
    fetches = pipe.waiting.fetches
    pipe.offer([event(packet(A, B, 17, udp(40031, 80)), src_identity=302)])
    second = await next_flow(flows)
    assert second["l4"]["UDP"]["source_port"] == 40031
    assert pipe.waiting.fetches == fetches + 1
    assert pipe.queued == 0 and len(pipe.waiting) == 0
