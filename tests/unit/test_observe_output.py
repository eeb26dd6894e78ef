"""`capillary observe`: compact / JSON / table printing, and turning flags into a filter."""
from __future__ import annotations

import json

import pytest

from services.cli import flowprint
from services.cli.main import build_parser
from services.cli.observe import build_filter, history_size, parse_since
from services.datapath.numbers import (DROP_INVALID_SIP, DROP_POLICY, EVENT_DROP, EVENT_POLICY_VERDICT,
                                       METRIC_INGRESS, POLICY_MATCH_L3_L4, TRACE_REASON_CT_REPLY,
                                       TRACE_REASON_UNKNOWN, TRACE_TO_LXC, TRACE_TO_STACK, VERDICT_AUDIT,
                                       VERDICT_DROPPED)
from services.flowd.decode import decode
from services.runtime.bus import ServiceError
from services.wire.messages import FlowFilter
from tests.unit.flowdata import A, B, ID_A, ID_B, WORLD_IP, event, icmp, metadata, packet, tcp, udp

META = metadata()
SYN, ACK = 0x02, 0x10


def flow(raw: bytes) -> dict:
    # 2023-11-14T22:13:25.000Z (the events' ktime is 5 s)
    return decode(raw, META, "node1", clock_offset_ns=1_700_000_000_000_000_000, new_uuid=lambda: "u")


def test_compact_policy_verdict_reads_like_hubble():
    f = flow(event(packet(A, B, 6, tcp(41234, 80, SYN)), EVENT_POLICY_VERDICT, 0, endpoint_id=2,
                   direction=METRIC_INGRESS, verdict=VERDICT_DROPPED, match_type=POLICY_MATCH_L3_L4))
    assert flowprint.compact(f) == ("Nov 14 22:13:25.000: x/a:41234 (ID:256) -> x/b:80 (ID:257) "
                                    "policy-verdict:L3-L4 INGRESS DENIED (TCP Flags: SYN)")


def test_compact_drop_and_audit():
    drop = flow(event(packet(A, B, 6, tcp(41234, 80, SYN)), EVENT_DROP, DROP_POLICY, direction=METRIC_INGRESS))
    assert flowprint.compact(drop).endswith("x/a:41234 (ID:256) -> x/b:80 (ID:257) Policy denied DROPPED (TCP Flags: SYN)")
    audit = flow(event(packet(A, B, 17, udp(5, 81)), EVENT_POLICY_VERDICT, 0, verdict=VERDICT_AUDIT))
    assert "policy-verdict:none EGRESS AUDITED (UDP)" in flowprint.compact(audit)


def test_compact_reply_is_printed_from_the_connections_side():
    f = flow(event(packet(B, A, 6, tcp(80, 41234, SYN | ACK)), subtype=TRACE_TO_LXC, reason=TRACE_REASON_CT_REPLY,
                   src_identity=ID_B, dst_identity=ID_A))
    assert ": x/a:41234 (ID:256) <- x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN, ACK)" in flowprint.compact(f)


def test_compact_unknown_direction_reserved_identities_and_no_ports():
    f = flow(event(packet(A, WORLD_IP, 1, icmp(8)), EVENT_DROP, DROP_INVALID_SIP, src_identity=0,
                   dst_identity=2, reason=TRACE_REASON_UNKNOWN))
    assert "x/a (ID:256) <> 198.18.0.2 (world) Invalid source ip DROPPED (ICMPv4 EchoRequest)" in flowprint.compact(f)
    host = flow(event(packet(A, "10.200.0.1", 17, udp(5, 53)), subtype=TRACE_TO_STACK, dst_identity=1))
    assert "-> 10.200.0.1:53 (host) to-stack FORWARDED (UDP)" in flowprint.compact(host)


def test_timestamp_is_stamp_milli_in_utc():
    assert flowprint.timestamp({"time": "2024-03-05T07:08:09.123456789Z"}) == "Mar  5 07:08:09.123"
    assert flowprint.timestamp({"time": "garbage"}) == "N/A"


def test_json_is_one_get_flows_response_per_line():
    f = flow(event(packet(A, B, 6, tcp(1, 80, SYN))))
    line = flowprint.as_json(f)
    assert "\n" not in line
    assert json.loads(line) == {"flow": f, "node_name": "node1", "time": f["time"]}


def test_table_has_a_header_once():
    lines = []
    show = flowprint.Printer("table", write=lines.append)
    f = flow(event(packet(A, B, 6, tcp(1, 80, SYN))))
    show(f)
    show(f)
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 3 and "x/a:1" in lines[1] and "from-endpoint" in lines[1] and lines[1].endswith("TCP Flags: SYN")


# ---- flags -> filter ----------------------------------------------------------------------

def args(*argv: str):
    return build_parser().parse_args(["observe", *argv])


def test_flags_become_a_filter():
    f = build_filter(args("--verdict", "dropped", "--pod", "x/a", "--from-pod", "web", "--port", "80",
                          "--port", "81", "--protocol", "TCP", "--type", "policy-verdict",
                          "--traffic-direction", "Ingress", "--namespace", "x"))
    assert f == FlowFilter(verdict=["DROPPED"], pod=["x/a"], from_pod=["default/web"], port=[80, 81],
                           protocol=["tcp"], type=["policy-verdict"], traffic_direction=["ingress"],
                           namespace=["x"])


@pytest.mark.parametrize("argv, message", [(("--verdict", "nope"), "--verdict"), (("--port", "http"), "--port"),
                                           (("--type", "trace:sideways"), "--type"), (("--since", "yesterday"), "--since")])
def test_bad_flags_are_one_line_errors(argv, message):
    with pytest.raises(ServiceError, match=message):
        build_filter(args(*argv))


def test_since_takes_durations_and_times():
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("1h30m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("2023-11-14T22:13:20Z", now=0) == 1_700_000_000


@pytest.mark.parametrize("argv, expected", [((), 20), (("-f",), None), (("--last", "5"), 5),
                                            (("-f", "--last", "3"), 3), (("--since", "5m"), 0)])
def test_how_much_history(argv, expected):
    assert history_size(args(*argv)) == expected
