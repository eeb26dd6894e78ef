"""flowd's decoder: raw datapath events -> Hubble flows, without root or a datapath."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from services.datapath import numbers
from services.datapath.numbers import (DROP_INVALID_SIP, DROP_POLICY_DENY, DROP_UNKNOWN_L3, DROP_UNKNOWN_TARGET,
                                       EVENT_DROP, EVENT_POLICY_VERDICT,
                                       METRIC_EGRESS, METRIC_INGRESS, POLICY_MATCH_L3_L4, POLICY_MATCH_NONE,
                                       TRACE_FROM_LXC, TRACE_REASON_CT_ESTABLISHED, TRACE_REASON_CT_REPLY,
                                       TRACE_REASON_UNKNOWN, TRACE_TO_LXC, TRACE_TO_STACK, VERDICT_AUDIT,
                                       VERDICT_DROPPED, VERDICT_FORWARDED)
from services.flowd.decode import DROP_REASON_DESC, EventError, decode, parse_event, rfc3339
from services.flowd.packet import icmp_name
from tests.unit.flowdata import (A, B, ID_A, ID_B, MAC_A, MAC_B, WORLD_IP, event, icmp, metadata, packet, tcp,
                                 udp)

META = metadata()
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def flow(raw: bytes) -> dict:
    return decode(raw, META, "node1", clock_offset_ns=1_700_000_000_000_000_000, new_uuid=lambda: "u-1")


def test_a_trace_from_a_pod_is_a_hubble_flow():
    f = flow(event(packet(A, B, 6, tcp(41234, 80, SYN))))
    assert f == {
        "time": "2023-11-14T22:13:25.000000000Z", "uuid": "u-1", "verdict": "FORWARDED",
        "ethernet": {"source": "0a:00:00:00:00:01", "destination": "0a:00:00:00:00:02"},
        "IP": {"source": A, "destination": B, "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 41234, "destination_port": 80, "flags": {"SYN": True}}},
        "source": {"ID": 1, "identity": ID_A, "labels": ["k8s:app=a", "k8s:io.kubernetes.pod.namespace=x"],
                   "namespace": "x", "pod_name": "a"},
        "destination": {"ID": 2, "identity": ID_B, "labels": ["k8s:app=b", "k8s:io.kubernetes.pod.namespace=x"],
                        "namespace": "x", "pod_name": "b"},
        "Type": "L3_L4", "node_name": "node1", "event_type": {"type": 4, "sub_type": 5},
        "traffic_direction": "EGRESS", "trace_observation_point": "FROM_ENDPOINT", "is_reply": False,
        "interface": {"index": 11, "name": "lxca"}, "Summary": "TCP Flags: SYN",
    }


@pytest.mark.parametrize("point, name", [(TRACE_TO_LXC, "TO_ENDPOINT"), (TRACE_TO_STACK, "TO_STACK"),
                                         (TRACE_FROM_LXC, "FROM_ENDPOINT")])
def test_observation_points(point, name):
    assert flow(event(packet(A, B, 17, udp(5, 53)), subtype=point))["trace_observation_point"] == name


@pytest.mark.parametrize("direction, reason, expected, reply", [
    (METRIC_EGRESS, TRACE_REASON_CT_ESTABLISHED, "EGRESS", False),
    (METRIC_INGRESS, TRACE_REASON_CT_ESTABLISHED, "INGRESS", False),
    (METRIC_EGRESS, TRACE_REASON_CT_REPLY, "INGRESS", True),     # a server's reply leaving it
    (METRIC_INGRESS, TRACE_REASON_CT_REPLY, "EGRESS", True),     # ... arriving at the client
])
def test_traffic_direction_is_the_connections_and_replies_flip_it(direction, reason, expected, reply):
    f = flow(event(packet(B, A, 6, tcp(80, 41234, SYN | ACK)), direction=direction, reason=reason))
    assert (f["traffic_direction"], f["is_reply"]) == (expected, reply)


def test_is_reply_is_absent_when_conntrack_was_not_consulted():
    f = flow(event(packet(A, B, 6, tcp(1, 2, SYN)), EVENT_DROP, DROP_INVALID_SIP, reason=TRACE_REASON_UNKNOWN))
    assert "is_reply" not in f
    assert (f["verdict"], f["drop_reason"], f["drop_reason_desc"]) == ("DROPPED", 132, "INVALID_SOURCE_IP")


def test_every_drop_reason_of_the_datapath_has_its_hubble_name():
    drops = {v for v in numbers.REASONS.values() if numbers.is_drop(v)}
    assert drops <= set(DROP_REASON_DESC)


def test_a_dropped_ipv6_packet_shows_its_addresses_and_reason():
    ip6 = struct.pack("!IHBB", 6 << 28, 8, 58, 255) + ipaddress.IPv6Address("fe80::1").packed + \
        ipaddress.IPv6Address("fe80::2").packed
    raw = event(MAC_B + MAC_A + struct.pack("!H", 0x86DD) + ip6 + bytes(8), EVENT_DROP, DROP_UNKNOWN_L3,
                dst_identity=0, reason=TRACE_REASON_UNKNOWN)
    f = flow(raw)
    assert (f["verdict"], f["drop_reason_desc"]) == ("DROPPED", "UNSUPPORTED_L3_PROTOCOL")
    assert f["IP"] == {"source": "fe80::1", "destination": "fe80::2", "ipVersion": "IPv6"}
    assert "l4" not in f


def test_a_packet_to_an_unknown_pod_address_is_unknown_target():
    raw = event(packet(A, B, 17, udp(4000, 53)), EVENT_DROP, DROP_UNKNOWN_TARGET, reason=TRACE_REASON_UNKNOWN)
    assert flow(raw)["drop_reason_desc"] == "UNKNOWN_L3_TARGET_ADDRESS"


def test_a_policy_drop_names_its_reason_and_rule():
    raw = event(packet(A, B, 6, tcp(41234, 80, SYN)), EVENT_DROP, DROP_POLICY_DENY, endpoint_id=2,
                direction=METRIC_INGRESS, rule_id=78)
    f = flow(raw)
    assert (f["verdict"], f["drop_reason"], f["drop_reason_desc"]) == ("DROPPED", 181, "POLICY_DENY")
    assert f["event_type"] == {"type": EVENT_DROP, "sub_type": 181}
    assert f["ingress_denied_by"] == [{
        "name": "no-b", "namespace": "", "kind": "CiliumClusterwideNetworkPolicy", "rule_index": 2,
        "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy",
                   "k8s:io.cilium.k8s.policy.name=no-b"]}]
    assert "trace_observation_point" not in f and "policy_match_type" not in f


def test_a_policy_verdict_allowed_by_a_rule():
    raw = event(packet(A, B, 6, tcp(41234, 80, SYN)), EVENT_POLICY_VERDICT, 0, endpoint_id=2,
                direction=METRIC_INGRESS, verdict=VERDICT_FORWARDED, match_type=POLICY_MATCH_L3_L4, rule_id=77)
    f = flow(raw)
    assert (f["verdict"], f["policy_match_type"], f["traffic_direction"], f["is_reply"]) == \
        ("FORWARDED", POLICY_MATCH_L3_L4, "INGRESS", False)
    assert f["ingress_allowed_by"] == [{
        "name": "only-a", "namespace": "x", "kind": "CiliumNetworkPolicy", "rule_index": 0,
        "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                   "k8s:io.cilium.k8s.policy.name=only-a", "k8s:io.cilium.k8s.policy.namespace=x"]}]


@pytest.mark.parametrize("verdict, direction, key, name", [
    (VERDICT_DROPPED, METRIC_INGRESS, "ingress_denied_by", "default-deny"),
    (VERDICT_AUDIT, METRIC_EGRESS, "egress_denied_by", "default-deny"),
    (VERDICT_FORWARDED, METRIC_EGRESS, "egress_allowed_by", "default-allow"),
])
def test_rule_zero_is_the_endpoints_default(verdict, direction, key, name):
    f = flow(event(packet(A, B, 6, tcp(1, 80, SYN)), EVENT_POLICY_VERDICT, 0, direction=direction,
                   verdict=verdict, match_type=POLICY_MATCH_NONE))
    assert f[key] == [{"kind": "Default", "name": name, "namespace": "", "labels": [], "rule_index": 0}]
    assert f["verdict"] == {VERDICT_DROPPED: "DROPPED", VERDICT_AUDIT: "AUDIT", VERDICT_FORWARDED: "FORWARDED"}[verdict]
    assert [k for k in f if k.endswith("_by")] == [key]


def test_an_unknown_rule_is_still_attributed_by_number():
    f = flow(event(packet(A, B, 6, tcp(1, 80, SYN)), EVENT_POLICY_VERDICT, 0, verdict=VERDICT_DROPPED, rule_id=999))
    assert f["egress_denied_by"][0]["name"] == "rule-999"


def test_peers_outside_the_node_are_identities_only():
    f = flow(event(packet(A, WORLD_IP, 17, udp(5000, 53)), subtype=TRACE_TO_STACK, dst_identity=2))
    assert f["destination"] == {"identity": 2, "labels": ["reserved:world"]}
    assert f["l4"] == {"UDP": {"source_port": 5000, "destination_port": 53}} and f["Summary"] == "UDP"


def test_icmp():
    f = flow(event(packet(A, B, 1, icmp(8))))
    assert f["l4"] == {"ICMPv4": {"type": 8, "code": 0}} and f["Summary"] == "ICMPv4 EchoRequest"
    assert icmp_name(3, 3) == "DestinationUnreachable(Port)" and icmp_name(42, 0) == "Type42"


def test_tcp_flags_in_hubbles_order():
    f = flow(event(packet(A, B, 6, tcp(1, 2, FIN | PSH | ACK))))
    assert f["l4"]["TCP"]["flags"] == {"ACK": True, "FIN": True, "PSH": True}
    assert f["Summary"] == "TCP Flags: ACK, FIN, PSH"


def test_a_later_fragment_has_no_l4():
    f = flow(event(packet(A, B, 6, b"\0" * 20, frag=100)))
    assert "l4" not in f and f["IP"]["source"] == A and f["Summary"] == "IPv4"


def test_a_truncated_capture_yields_what_it_holds():
    raw = event(packet(A, B, 6, tcp(1, 2, SYN)))
    short = raw[:-(20 + 20)]           # the header and Ethernet only (cap_len says more)
    f = flow(short)
    assert "ethernet" in f and "IP" not in f and f["source"] == {"identity": ID_A, "labels": META.identities[ID_A]}


@pytest.mark.parametrize("raw, message", [(b"\0" * 10, "shorter than its header"),
                                          (event(b"", type=9), "unknown event type 9")])
def test_records_that_are_not_events_are_refused(raw, message):
    with pytest.raises(EventError, match=message):
        parse_event(raw)


def test_time_is_rfc3339_with_nanoseconds():
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
