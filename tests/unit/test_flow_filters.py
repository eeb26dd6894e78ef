"""Flow filters (shared by flowd's history and `observe -f`), the history ring, accounting."""
from __future__ import annotations

import pytest

from services.datapath.maps.events import Stats
from services.datapath.numbers import (DROP_POLICY, EVENT_DROP, EVENT_POLICY_VERDICT, METRIC_INGRESS,
                                       TRACE_TO_LXC, TRACE_TO_STACK, VERDICT_DROPPED)
from services.flowd.accounting import Accounting
from services.flowd.decode import decode
from services.flowd.filters import FilterError, flow_time, matches, validate
from services.flowd.history import History
from services.wire.messages import FlowFilter
from tests.unit.flowdata import A, B, WORLD_IP, event, icmp, metadata, packet, tcp, udp

META = metadata()


def flow(raw: bytes, ns: int = 0) -> dict:
    return decode(raw, META, "node1", clock_offset_ns=1_700_000_000_000_000_000 + ns)


TCP_AB = flow(event(packet(A, B, 6, tcp(41234, 80, 2))))                                 # x/a -> x/b trace
UDP_OUT = flow(event(packet(A, WORLD_IP, 17, udp(5000, 53)), subtype=TRACE_TO_STACK, dst_identity=2))
DROP_AB = flow(event(packet(A, B, 6, tcp(41235, 81, 2)), EVENT_DROP, DROP_POLICY, direction=METRIC_INGRESS))
VERDICT_AB = flow(event(packet(A, B, 6, tcp(41235, 81, 2)), EVENT_POLICY_VERDICT, 0,
                        direction=METRIC_INGRESS, verdict=VERDICT_DROPPED))
PING_BA = flow(event(packet(B, A, 1, icmp(8)), subtype=TRACE_TO_LXC, direction=METRIC_INGRESS, endpoint_id=1))
ALL = [TCP_AB, UDP_OUT, DROP_AB, VERDICT_AB, PING_BA]
NAMES = {id(TCP_AB): "tcp", id(UDP_OUT): "udp", id(DROP_AB): "drop", id(VERDICT_AB): "verdict", id(PING_BA): "ping"}


def selected(**kwargs) -> set[str]:
    f = validate(FlowFilter(**kwargs))
    return {NAMES[id(fl)] for fl in ALL if matches(fl, f)}


@pytest.mark.parametrize("kwargs, expected", [
    ({}, {"tcp", "udp", "drop", "verdict", "ping"}),
    ({"verdict": ["DROPPED"]}, {"drop", "verdict"}),
    ({"verdict": ["DROPPED", "FORWARDED"]}, {"tcp", "udp", "drop", "verdict", "ping"}),
    ({"from_pod": ["x/a"]}, {"tcp", "udp", "drop", "verdict"}),
    ({"to_pod": ["x/a"]}, {"ping"}),
    ({"from_pod": ["x/a"], "to_pod": ["x/b"]}, {"tcp", "drop", "verdict"}),
    ({"pod": ["x/b"]}, {"tcp", "drop", "verdict", "ping"}),
    ({"namespace": ["x"]}, {"tcp", "udp", "drop", "verdict", "ping"}),
    ({"namespace": ["y"]}, set()),
    ({"port": [53]}, {"udp"}),
    ({"port": [41234, 81]}, {"tcp", "drop", "verdict"}),
    ({"protocol": ["icmp"]}, {"ping"}),
    ({"protocol": ["tcp", "udp"]}, {"tcp", "udp", "drop", "verdict"}),
    ({"type": ["drop"]}, {"drop"}),
    ({"type": ["policy-verdict"]}, {"verdict"}),
    ({"type": ["trace"]}, {"tcp", "udp", "ping"}),
    ({"type": ["trace:to-stack"]}, {"udp"}),
    ({"type": ["trace:to-endpoint", "drop"]}, {"ping", "drop"}),
    ({"traffic_direction": ["ingress"]}, {"drop", "verdict", "ping"}),
    ({"traffic_direction": ["egress"], "protocol": ["udp"]}, {"udp"}),
])
def test_filters(kwargs, expected):
    assert selected(**kwargs) == expected


def test_since():
    old, new = flow(event(packet(A, B, 17, udp(1, 2))), ns=0), flow(event(packet(A, B, 17, udp(1, 2))), ns=10**10)
    cut = flow_time(old) + 5
    assert [matches(f, FlowFilter(since=cut)) for f in (old, new)] == [False, True]
    assert flow_time({"time": "2023-11-14T22:13:20.5Z"}) == 1_700_000_000.5


@pytest.mark.parametrize("kwargs, flag", [
    ({"verdict": ["DENIED"]}, "--verdict"), ({"type": ["trace:nowhere"]}, "--type"),
    ({"type": ["drop:to-stack"]}, "--type"), ({"protocol": ["gre"]}, "--protocol"),
    ({"traffic_direction": ["up"]}, "--traffic-direction"), ({"pod": ["a"]}, "--pod"),
    ({"from_pod": ["x/"]}, "--from-pod"),
])
def test_values_no_flow_can_have_are_refused(kwargs, flag):
    with pytest.raises(FilterError, match=flag):
        validate(FlowFilter(**kwargs))


# ---- history -----------------------------------------------------------------------------

def test_history_keeps_the_newest_and_counts_what_it_pushes_out():
    h = History(3)
    for i in range(5):
        h.add({"verdict": "FORWARDED", "n": i})
    assert len(h) == 3 and h.overwritten == 2
    assert [f["n"] for f in h.query(FlowFilter())] == [2, 3, 4]
    assert [f["n"] for f in h.query(FlowFilter(), last=2)] == [3, 4]


def test_history_query_filters_before_taking_the_last():
    h = History(10)
    for f in ALL:
        h.add(f)
    got = h.query(FlowFilter(verdict=["DROPPED"]), last=1)
    assert got == [VERDICT_AB]


# ---- accounting --------------------------------------------------------------------------

def test_accounting_adds_up():
    acct = Accounting(ring=lambda: Stats(emitted=10, lost=3), read=lambda: 10,
                      queue_full=2, undecodable=1, publish_failed=1, published=6)
    c = acct.counters(history_overwritten=4)
    assert c["flows_generated"] == 13 and c["flows_lost"] == 3 + 2 + 1 + 1
    assert c["flows_generated"] == c["flows_published"] + c["flows_lost"]
    assert acct.lost_by_source(4) == {"perf_event_ring_buffer": 3, "observer_events_queue": 3,
                                      "hubble_ring_buffer": 4}


def test_stats_relative_to_a_baseline():
    assert Stats(10, 4) - Stats(7, 1) == Stats(3, 3)
