"""The flow builder's cache gives exactly what decode gives, and payloads exactly what the
FlowEvent schema encodes."""
from __future__ import annotations

import itertools
import random
import re
import struct

import pytest
from prometheus_client import CollectorRegistry

from services.datapath.numbers import (DROP_POLICY_DENY, EVENT_DROP, EVENT_POLICY_VERDICT, METRIC_INGRESS,
                                       POLICY_MATCH_L3_L4, TRACE_REASON_CT_REPLY, TRACE_TO_LXC,
                                       VERDICT_FORWARDED)
from services.flowd import packet as pkt
from services.flowd.builder import FlowBuilder, Rfc3339, Uuid4, map_header, pack_str
from services.flowd.decode import EventError, decode, rfc3339
from services.flowd.metrics import FlowMetrics
from services.wire import codec
from services.wire.messages import FlowEvent
from tests.unit.flowdata import A, B, WORLD_IP, event, icmp, metadata, packet, pod, tcp, udp

OFFSET = 1_700_000_000_123_456_789

EVENTS = [
    event(packet(A, B, 6, tcp(41234, 80, 0x02))),
    event(packet(A, B, 6, tcp(41234, 80, 0x12)), subtype=TRACE_TO_LXC, reason=TRACE_REASON_CT_REPLY),
    event(packet(A, B, 17, udp(5353, 53))),
    event(packet(A, WORLD_IP, 1, icmp(8))),
    event(packet(B, A, 6, tcp(80, 9, 0x02)), EVENT_POLICY_VERDICT, 0, direction=METRIC_INGRESS,
          verdict=VERDICT_FORWARDED, match_type=POLICY_MATCH_L3_L4, rule_id=77),
    event(packet(A, B, 6, tcp(1, 2, 0x02)), EVENT_DROP, DROP_POLICY_DENY, rule_id=78),
    event(packet(A, B, 6, tcp(1, 2, 0x02))[:40]),                      # truncated TCP header
    event(packet(A, B, 6, tcp(1, 2, 0x02), frag=5)),                   # a later fragment
    event(b"\xff" * 10),                                               # not even Ethernet
]


def builder(meta=None, **kw) -> FlowBuilder:
    return FlowBuilder(meta or metadata(), "node1", FlowMetrics.create(CollectorRegistry()).children, **kw)


def with_ip_id(raw: bytes, ip_id: int) -> bytes:
    """RAW with another IP identification, checksum and ktime: bytes decode never reads."""
    out = bytearray(raw)
    if len(raw) >= 40 + 14 + 20:
        struct.pack_into("!H", out, 40 + 14 + 4, ip_id)
        struct.pack_into("!H", out, 40 + 14 + 10, ip_id ^ 0xFFFF)
    struct.pack_into("=Q", out, 0, 7_000_000_000 + ip_id)
    return bytes(out)


@pytest.mark.parametrize("raw", EVENTS)
def test_built_flows_equal_decoded_ones_hit_or_miss(raw):
    b = builder(new_uuid=lambda: "u-1")
    variants = [with_ip_id(raw, i) for i in range(3)]
    for variant in variants:
        flow, payload, _ = b.build(variant, OFFSET)
        assert flow == decode(variant, b.meta, "node1", OFFSET, new_uuid=lambda: "u-1")
        assert codec.decode(payload) == FlowEvent(flow).to_wire()
    shapes = len({pkt.shape(v[40:]) for v in variants})     # 1 where shape picks headers out
    assert (b.misses, b.hits) == (shapes, 3 - shapes)
    assert shapes == 1 or pkt.shape(raw[40:])[0] == 0


def test_every_header_field_and_packet_header_is_part_of_the_shape():
    b = builder()
    base = EVENTS[4]
    shapes = set()
    for offset in list(range(8, 28)) + list(range(34, 40)) + [40, 47, 54 + 12, 40 + 14 + 20 + 13]:
        raw = bytearray(base)
        raw[offset] ^= 0x01
        shapes.add(b.lookup(bytes(raw))[0])
    assert len(shapes) == 30


def test_metadata_changes_empty_the_cache():
    meta = metadata()
    b = builder(meta)
    assert b.build(EVENTS[0], OFFSET)[0]["source"]["pod_name"] == "a"
    meta.set_pods([pod("x", "renamed", A, 1, 256, 11)])
    assert b.lookup(EVENTS[0])[1] is None
    assert b.build(EVENTS[0], OFFSET)[0]["source"]["pod_name"] == "renamed"


def test_the_cache_is_bounded():
    b = builder(capacity=4)
    for port in range(10):
        b.build(event(packet(A, B, 17, udp(port, 53))), OFFSET)
    assert len(b._templates) <= 4 and b.misses == 10


def test_records_that_are_not_events_raise_decode_errors():
    with pytest.raises(EventError):
        builder().build(b"short", OFFSET)


@pytest.mark.parametrize("raw", EVENTS[:6])
def test_shape_keeps_what_parse_reads(raw):
    for a, b in itertools.combinations([with_ip_id(raw, i)[40:] for i in range(3)], 2):
        assert pkt.shape(a) == pkt.shape(b) and pkt.parse(a) == pkt.parse(b)


def test_uuids_are_random_version_4():
    ids = [Uuid4(random.Random(7))() for _ in range(1)] + [Uuid4()() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", u) for u in ids)


def test_times_match_decodes_format():
    clock = Rfc3339()
    for ns in (0, 1_700_000_000_000_000_001, 1_700_000_000_999_999_999, 1_700_000_001_000_000_000):
        assert clock(ns) == rfc3339(ns)


@pytest.mark.parametrize("size", [0, 15, 16, 65535, 65536])
def test_map_headers(size):
    import msgpack
    assert msgpack.unpackb(map_header(size) + b"\x00\x00" * size, strict_map_key=False) == \
        ({0: 0} if size else {})


@pytest.mark.parametrize("size", [0, 1, 30, 31, 32, 36, 255])
def test_short_strings_pack_as_packb_does(size):
    import msgpack
    text = "é" * (size // 2) + "x" * (size % 2)
    assert pack_str(text) == msgpack.packb(text, use_bin_type=True)
