"""`capillary monitor` lines, from raw events laid out as the datapath writes them."""
from __future__ import annotations

import json

from services.cli.monitor import format_json, format_text, wanted
from services.datapath.numbers import (DROP_POLICY, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_INGRESS,
                                       POLICY_MATCH_L3_L4, TRACE_REASON_CT_REPLY, TRACE_TO_LXC, TRACE_TO_STACK,
                                       VERDICT_FORWARDED)
from tests.unit.flowdata import A, B, ID_A, ID_B, event, icmp, packet, tcp, udp

NAMES = {11: "lxca", 12: "lxcb"}


def test_traces_by_observation_point():
    assert format_text(event(packet(A, B, 6, tcp(41234, 80, 0x02))), NAMES) == \
        f"<- endpoint 1, identity {ID_A}->{ID_B} state new ifindex lxca: {A}:41234 -> {B}:80 tcp SYN"
    assert format_text(event(packet(B, A, 6, tcp(80, 41234, 0x12)), subtype=TRACE_TO_LXC,
                             reason=TRACE_REASON_CT_REPLY), NAMES) == \
        f"-> endpoint 1, identity {ID_A}->{ID_B} state reply ifindex lxca: {B}:80 -> {A}:41234 tcp SYN, ACK"
    assert format_text(event(packet(A, "198.18.0.9", 1, icmp(8)), subtype=TRACE_TO_STACK, ifindex=99), NAMES) == \
        f"-> stack, identity {ID_A}->{ID_B} state new ifindex 99: {A} -> 198.18.0.9 EchoRequest"


def test_policy_verdicts_and_drops():
    verdict = event(packet(A, B, 17, udp(5353, 53)), EVENT_POLICY_VERDICT, 0, endpoint_id=2,
                    direction=METRIC_INGRESS, verdict=VERDICT_FORWARDED, match_type=POLICY_MATCH_L3_L4)
    assert format_text(verdict, NAMES) == (f"Policy verdict log: local EP ID 2, remote ID {ID_A}, proto udp, "
                                           f"ingress, action allow, match L3-L4, {A}:5353 -> {B}:53 udp")
    drop = event(packet(A, B, 6, tcp(1, 2, 0x02)), EVENT_DROP, DROP_POLICY, endpoint_id=2)
    assert format_text(drop, NAMES) == (f"xx drop (Policy denied) to endpoint 2, ifindex lxca, "
                                        f"identity {ID_A}->{ID_B}: {A}:1 -> {B}:2 tcp SYN")


def test_json_and_filters():
    raw = event(packet(A, B, 17, udp(5353, 53)))
    doc = json.loads(format_json(raw))
    assert (doc["type"], doc["endpoint_id"], doc["packet"]["l4"]) == \
        (EVENT_TRACE, 1, {"UDP": {"source_port": 5353, "destination_port": 53}})
    assert wanted(raw, set(), None) and wanted(raw, {EVENT_TRACE}, 1)
    assert not wanted(raw, {EVENT_DROP}, None) and not wanted(raw, set(), 2)
