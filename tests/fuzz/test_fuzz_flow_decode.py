"""Fuzz target for flowd's decoder: any ring record (a garbage one, or a struct flow_event
with random fields around a random, possibly truncated packet) is a Hubble flow or an
EventError, and every flow it makes goes on the bus as a valid FlowEvent."""
from __future__ import annotations

import ctypes as ct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.datapath.maps.events import HEADER_SIZE, FlowEvent as RawEvent
from services.datapath.numbers import EVENT_CAPTURE_LEN, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE
from services.flowd.decode import EventError, decode
from services.wire import codec
from services.wire.messages import FlowEvent
from tests.fuzz.conftest import budget, count
from tests.unit.flowdata import A, B, WORLD_IP, icmp, metadata, packet, tcp, udp

META = metadata()


def _check(raw: bytes) -> None:
    try:
        flow = decode(raw, META, "node1", clock_offset_ns=1_700_000_000_000_000_000, new_uuid=lambda: "u")
    except EventError:
        return
    assert FlowEvent.from_wire(codec.decode(codec.encode(FlowEvent(flow).to_wire()))).flow == flow


@settings(max_examples=budget(500))
@given(st.binary(max_size=HEADER_SIZE + 80))
@example(b"")
@example(b"\x00" * HEADER_SIZE)
def test_any_bytes_are_a_flow_or_an_event_error(raw):
    count("flowd.decode(bytes)")
    _check(raw)


def _packets():
    addrs = st.sampled_from([A, B, WORLD_IP, "0.0.0.0", "255.255.255.255"])
    l4 = st.one_of(st.builds(tcp, st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 255)),
                   st.builds(udp, st.integers(0, 65535), st.integers(0, 65535)),
                   st.builds(icmp, st.integers(0, 255), st.integers(0, 255)),
                   st.binary(max_size=40))
    whole = st.builds(packet, addrs, addrs, st.sampled_from([1, 6, 17, 132, 47, 0, 255]), l4,
                      st.integers(0, 65535))
    return st.one_of(whole, st.binary(max_size=80)).flatmap(
        lambda pkt: st.integers(0, len(pkt)).map(lambda n: pkt[:n]))


@settings(max_examples=budget(500))
@given(pkt=_packets(), fields=st.fixed_dictionaries({
    "type": st.sampled_from([EVENT_DROP, EVENT_TRACE, EVENT_POLICY_VERDICT, 0, 255]),
    "subtype": st.integers(0, 255), "endpoint_id": st.integers(0, 65535),
    "ifindex": st.integers(0, 2 ** 32 - 1), "src_identity": st.integers(0, 2 ** 32 - 1),
    "dst_identity": st.sampled_from([0, 1, 2, 256, 257, 2 ** 32 - 1]),
    "rule_id": st.sampled_from([0, 77, 78, 5, 2 ** 32 - 1]), "direction": st.integers(0, 255),
    "reason": st.integers(0, 255), "verdict": st.integers(0, 255), "match_type": st.integers(0, 255),
    "ktime": st.integers(0, 2 ** 64 - 1), "cap_len": st.integers(0, 65535)}))
def test_any_flow_event_is_a_flow_or_an_event_error(pkt, fields):
    count("flowd.decode(flow_event)")
    e = RawEvent(orig_len=len(pkt), **fields)
    ct.memmove(e.data, pkt, min(len(pkt), EVENT_CAPTURE_LEN))
    _check(bytes(e)[:HEADER_SIZE + min(len(pkt), EVENT_CAPTURE_LEN)])
