"""One raw datapath event (struct flow_event, bpf/lib/events.h) -> one Hubble flow. Pure.

Field names and meanings follow Hubble's flow (flow.proto, as `hubble observe -o json`
prints it): verdict, drop_reason(_desc), ethernet, IP, l4, source/destination endpoints,
Type, node_name, event_type, traffic_direction, trace_observation_point, is_reply,
policy_match_type, {ingress,egress}_{allowed,denied}_by, Summary.

Invariants: traffic_direction is the direction of the *connection* as the event's endpoint
sees it: the packet's direction (into or out of that endpoint), flipped for replies.
is_reply is present only when the datapath knew the packet's conntrack state.
"""
from __future__ import annotations

import ctypes as ct
import time
import uuid
from collections.abc import Callable

from services.datapath.maps.events import HEADER_SIZE, FlowEvent
from services.datapath.numbers import (DROP_INVALID, DROP_INVALID_SIP, DROP_POLICY, DROP_POLICY_DENY,
                                       DROP_NO_TUNNEL_ENDPOINT, DROP_UNKNOWN_L3, DROP_UNKNOWN_SENDER,
                                       DROP_UNKNOWN_TARGET, DROP_WRITE_ERROR,
                                       EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_EGRESS,
                                       METRIC_INGRESS, TRACE_POINTS,
                                       TRACE_REASON_CT_ESTABLISHED, TRACE_REASON_CT_REPLY,
                                       TRACE_REASON_POLICY, VERDICT_AUDIT, VERDICT_DROPPED,
                                       VERDICT_FORWARDED)
from services.flowd import packet
from services.flowd.metadata import UNKNOWN_RULE_KIND, Metadata, policy_labels

# Hubble's DropReason names for Cilium's drop codes.
DROP_REASON_DESC = {DROP_INVALID_SIP: "INVALID_SOURCE_IP", DROP_POLICY: "POLICY_DENIED",
                    DROP_INVALID: "INVALID_PACKET_DROPPED", DROP_POLICY_DENY: "POLICY_DENY",
                    DROP_UNKNOWN_L3: "UNSUPPORTED_L3_PROTOCOL", DROP_UNKNOWN_TARGET: "UNKNOWN_L3_TARGET_ADDRESS",
                    DROP_WRITE_ERROR: "ERROR_WRITING_TO_PACKET",
                    DROP_NO_TUNNEL_ENDPOINT: "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
                    DROP_UNKNOWN_SENDER: "UNKNOWN_SENDER"}
POLICY_DROPS = (DROP_POLICY, DROP_POLICY_DENY)
VERDICTS = {VERDICT_FORWARDED: "FORWARDED", VERDICT_DROPPED: "DROPPED", VERDICT_AUDIT: "AUDIT"}
DIRECTIONS = {METRIC_INGRESS: "INGRESS", METRIC_EGRESS: "EGRESS"}
FLIPPED = {"INGRESS": "EGRESS", "EGRESS": "INGRESS"}
# Attribution for entries no policy rule made (rule_id 0): the endpoint's default.
DEFAULT_DENY = {"kind": "Default", "name": "default-deny", "namespace": "", "labels": [],
                "rule_index": 0}
DEFAULT_ALLOW = {"kind": "Default", "name": "default-allow", "namespace": "", "labels": [],
                 "rule_index": 0}


class EventError(ValueError):
    """A ring record that is not a flow_event."""


def parse_event(raw: bytes) -> tuple[FlowEvent, bytes]:
    """The header and the captured packet bytes of one ring record."""
    if len(raw) < HEADER_SIZE:
        raise EventError(f"event of {len(raw)} bytes is shorter than its header ({HEADER_SIZE})")
    hdr = FlowEvent.from_buffer_copy(raw.ljust(ct.sizeof(FlowEvent), b"\0")[:ct.sizeof(FlowEvent)])
    if hdr.type not in (EVENT_DROP, EVENT_TRACE, EVENT_POLICY_VERDICT):
        raise EventError(f"unknown event type {hdr.type}")
    return hdr, raw[HEADER_SIZE:HEADER_SIZE + hdr.cap_len]


def rfc3339(ns: int) -> str:
    """Unix nanoseconds as Hubble prints times: 2024-05-01T12:00:00.123456789Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + \
        f".{ns % 1_000_000_000:09d}Z"


def decode(raw: bytes, meta: Metadata, node: str, clock_offset_ns: int,
           new_uuid: Callable[[], str] = lambda: str(uuid.uuid4())) -> dict:
    """The flow for RAW. CLOCK_OFFSET_NS: wall clock minus CLOCK_MONOTONIC (bpf_ktime)."""
    hdr, data = parse_event(raw)
    pkt = packet.parse(data)
    flow: dict = {"time": rfc3339(hdr.ktime + clock_offset_ns), "uuid": new_uuid(),
                  "verdict": _verdict(hdr)}
    if hdr.type == EVENT_DROP:
        flow["drop_reason"] = hdr.subtype
        flow["drop_reason_desc"] = DROP_REASON_DESC.get(hdr.subtype, "DROP_REASON_UNKNOWN")
    for key in ("ethernet", "IP", "l4"):
        if key in pkt:
            flow[key] = pkt[key]
    ip = pkt.get("IP", {})
    flow["source"] = _endpoint(meta, ip.get("source"), hdr.src_identity)
    flow["destination"] = _endpoint(meta, ip.get("destination"), hdr.dst_identity)
    flow["Type"] = "L3_L4"
    flow["node_name"] = node
    flow["event_type"] = {"type": hdr.type, "sub_type": hdr.subtype}
    is_reply = _is_reply(hdr)
    flow["traffic_direction"] = _traffic_direction(hdr, is_reply)
    if hdr.type == EVENT_TRACE:
        flow["trace_observation_point"] = TRACE_POINTS.get(hdr.subtype, "UNKNOWN_POINT")
    if is_reply is not None:
        flow["is_reply"] = is_reply
    iface = meta.pods_by_ifindex.get(hdr.ifindex)
    flow["interface"] = {"index": hdr.ifindex, "name": iface.ifname if iface else ""}
    if hdr.type == EVENT_POLICY_VERDICT:
        flow["policy_match_type"] = hdr.match_type
    if hdr.type == EVENT_POLICY_VERDICT or (hdr.type == EVENT_DROP and hdr.subtype in POLICY_DROPS):
        flow.update(attribution(hdr, flow["verdict"], meta))
    flow["Summary"] = pkt.get("summary", "")
    return flow


def _verdict(hdr: FlowEvent) -> str:
    if hdr.type == EVENT_DROP:
        return "DROPPED"
    if hdr.type == EVENT_POLICY_VERDICT:
        return VERDICTS.get(hdr.verdict, "VERDICT_UNKNOWN")
    return "FORWARDED"


def _is_reply(hdr: FlowEvent) -> bool | None:
    """Known only when the datapath looked the packet up in conntrack."""
    if hdr.reason in (TRACE_REASON_POLICY, TRACE_REASON_CT_ESTABLISHED):
        return False
    if hdr.reason == TRACE_REASON_CT_REPLY:
        return True
    return None


def _traffic_direction(hdr: FlowEvent, is_reply: bool | None) -> str:
    direction = DIRECTIONS.get(hdr.direction, "TRAFFIC_DIRECTION_UNKNOWN")
    return FLIPPED.get(direction, direction) if is_reply else direction


def _endpoint(meta: Metadata, ip: str | None, identity: int) -> dict:
    """Hubble's Endpoint: a local pod (ID, namespace, pod_name) or just an identity."""
    pod = meta.pods_by_ip.get(ip) if ip else None
    if pod is not None:
        identity = identity or pod.identity
    out: dict = {"identity": identity, "labels": list(meta.identities.get(identity, []))}
    if pod is not None:
        out = {"ID": pod.endpoint_id, **out, "namespace": pod.namespace, "pod_name": pod.name}
    return out


def attribution(hdr: FlowEvent, verdict: str, meta: Metadata) -> dict[str, list[dict]]:
    """{direction}_{allowed|denied}_by: the rule behind a policy decision, as Hubble's Policy
    (name, namespace, kind, labels) plus its index in the rule list; rule_id 0 is the
    endpoint's default (DEFAULT_DENY / DEFAULT_ALLOW)."""
    direction = DIRECTIONS.get(hdr.direction, "").lower()
    if not direction:
        return {}
    allowed = verdict == "FORWARDED"
    key = f"{direction}_{'allowed' if allowed else 'denied'}_by"
    if hdr.rule_id == 0:
        return {key: [dict(DEFAULT_ALLOW if allowed else DEFAULT_DENY)]}
    rule = meta.rules.get(hdr.rule_id)
    if rule is None:
        return {key: [{"kind": UNKNOWN_RULE_KIND, "name": f"rule-{hdr.rule_id}", "namespace": "",
                       "labels": [], "rule_index": 0}]}
    return {key: [{"name": rule.name, "namespace": rule.namespace, "kind": rule.kind,
                   "labels": policy_labels(rule), "rule_index": rule.index}]}
