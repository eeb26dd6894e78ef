"""`capillary monitor [--type drop|trace|policy-verdict] [--related-to EP] [-o text|json]`:
the raw datapath events as they happen, one line each, in the shape cilium-dbg monitor
prints them:

    <- endpoint 2 flow 0x0 , identity 257->256 state new ifindex lxc6b1a... orig-ip 10.200.0.3: 10.200.0.3:41234 -> 10.200.0.2:443 tcp SYN
    Policy verdict log: local EP ID 1, remote ID 257, proto 6, ingress, action allow, match L3-L4, 10.200.0.3:41234 -> 10.200.0.2:443 tcp SYN
    xx drop (Policy denied) flow 0x0 to endpoint 1, ifindex 4140, identity 258->256: 10.200.0.4:40559 -> 10.200.0.2:443 tcp SYN

flowd publishes the events only while a monitor holds a lease (renewed here every few
seconds), so an idle node pays nothing for it. Losses are printed as they are counted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time

from services.cli.client import Client
from services.datapath.numbers import (EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_INGRESS, POLICY_MATCH_NAMES,
                                       REASON_NAMES, TRACE_FROM_LXC, TRACE_REASON_CT_ESTABLISHED, TRACE_REASON_CT_REPLY,
                                       TRACE_FROM_NETWORK, TRACE_FROM_OVERLAY, TRACE_REASON_POLICY, TRACE_TO_LXC,
                                       TRACE_TO_NETWORK, TRACE_TO_OVERLAY, TRACE_TO_STACK, VERDICT_AUDIT,
                                       VERDICT_DROPPED)
from services.flowd import packet
from services.flowd.decode import EventError, parse_event
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import INVALID, ListRequest, MonitorAttach, MonitorEvents

LEASE = 10.0
TYPES = {"drop": EVENT_DROP, "trace": EVENT_TRACE, "policy-verdict": EVENT_POLICY_VERDICT}
STATES = {TRACE_REASON_POLICY: "new", TRACE_REASON_CT_ESTABLISHED: "established", TRACE_REASON_CT_REPLY: "reply"}
PROTOS = {packet.PROTO_TCP: "tcp", packet.PROTO_UDP: "udp", packet.PROTO_SCTP: "sctp", packet.PROTO_ICMP: "icmp"}


def add_parser(sub) -> None:
    p = sub.add_parser("monitor", help="print raw datapath events as they happen (as cilium-dbg monitor)")
    p.add_argument("-t", "--type", action="append", choices=sorted(TYPES), help="only these event types (repeatable)")
    p.add_argument("--related-to", type=int, metavar="ENDPOINT", help="only events about this endpoint id")
    p.add_argument("-n", "--count", type=int, default=0, help="exit after this many events")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")


def summary(data: bytes) -> str:
    """The packet as cilium-dbg monitor ends its lines: "10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN"."""
    pkt = packet.parse(data)
    ip = pkt.get("IP")
    if ip is None:
        eth = pkt.get("ethernet")
        return f"{eth['source']} -> {eth['destination']}" if eth else f"{len(data)} bytes"
    l4 = pkt.get("l4", {})
    for name, fields in l4.items():
        if "source_port" in fields:
            text = f"{ip['source']}:{fields['source_port']} -> {ip['destination']}:{fields['destination_port']} " \
                   f"{name.lower()}"
            flags = fields.get("flags")
            return text + (" " + ", ".join(flags) if flags else "")
        if name == "ICMPv4":
            return f"{ip['source']} -> {ip['destination']} {pkt['summary'].split(' ', 1)[1]}"
    return f"{ip['source']} -> {ip['destination']} {pkt.get('summary', '')}"


def format_text(raw: bytes, ifnames: dict[int, str]) -> str:
    hdr, data = parse_event(raw)
    ifname = ifnames.get(hdr.ifindex, str(hdr.ifindex))
    identities = f"identity {hdr.src_identity}->{hdr.dst_identity}"
    if hdr.type == EVENT_TRACE:
        state = STATES.get(hdr.reason, "unknown")
        where = {TRACE_TO_LXC: f"-> endpoint {hdr.endpoint_id}", TRACE_TO_STACK: "-> stack",
                 TRACE_FROM_LXC: f"<- endpoint {hdr.endpoint_id}", TRACE_TO_OVERLAY: "-> overlay",
                 TRACE_FROM_OVERLAY: "<- overlay", TRACE_TO_NETWORK: "-> network",
                 TRACE_FROM_NETWORK: "<- network"}.get(hdr.subtype, f"trace {hdr.subtype}")
        return f"{where}, {identities} state {state} ifindex {ifname}: {summary(data)}"
    if hdr.type == EVENT_DROP:
        reason = REASON_NAMES.get(hdr.subtype, f"reason {hdr.subtype}")
        return f"xx drop ({reason}) to endpoint {hdr.endpoint_id}, ifindex {ifname}, {identities}: " \
               f"{summary(data)}"
    action = "deny" if hdr.verdict == VERDICT_DROPPED else "audit" if hdr.verdict == VERDICT_AUDIT else "allow"
    direction = "ingress" if hdr.direction == METRIC_INGRESS else "egress"
    remote = hdr.src_identity if hdr.direction == METRIC_INGRESS else hdr.dst_identity
    proto = PROTOS.get(data[23] if len(data) > 23 else 0, "0")
    return f"Policy verdict log: local EP ID {hdr.endpoint_id}, remote ID {remote}, proto {proto}, " \
           f"{direction}, action {action}, match {POLICY_MATCH_NAMES.get(hdr.match_type, 'none')}, " \
           f"{summary(data)}"


def format_json(raw: bytes) -> str:
    hdr, data = parse_event(raw)
    fields = {name: getattr(hdr, name) for name, *_ in hdr._fields_ if name not in ("data", "pad")}
    return json.dumps({**fields, "packet": packet.parse(data)})


def wanted(raw: bytes, types: set[int], endpoint: int | None) -> bool:
    hdr, _ = parse_event(raw)
    return (not types or hdr.type in types) and (endpoint is None or hdr.endpoint_id == endpoint)


async def monitor(client: Client, args: argparse.Namespace) -> int:
    if args.count < 0:
        raise ServiceError(INVALID, f"--count: {args.count} must be 0 (no limit) or more")
    types = {TYPES[t] for t in args.type or ()}
    pods = await client.call(subjects.POD_LIST, ListRequest())
    ifnames = {p["status"]["host_ifindex"]: p["status"]["host_ifname"] for p in pods}
    queue: asyncio.Queue[MonitorEvents] = asyncio.Queue()

    async def on_batch(msg) -> None:
        queue.put_nowait(MonitorEvents.from_wire(codec.decode(msg.data)))

    me = f"cli-{os.getpid()}-{secrets.token_hex(4)}"
    reply = await client.call(subjects.OBSERVER_MONITOR, MonitorAttach(monitor=me, lease=LEASE))
    sub = await client.bus.nc.subscribe(reply["subject"], cb=on_batch)
    if args.output == "text":
        print(f"Listening for datapath events on node {reply['node']} (ring {reply['ring_bytes']} bytes, "
              f"aggregation {reply['aggregation']})\nPress Ctrl-C to quit", flush=True)
    renew = time.monotonic() + LEASE / 2
    shown, lost = 0, None
    try:
        while not args.count or shown < args.count:
            batch = await client.next(queue, timeout=max(renew - time.monotonic(), 0.01))
            if time.monotonic() >= renew:
                await client.call(subjects.OBSERVER_MONITOR, MonitorAttach(monitor=me, lease=LEASE))
                renew = time.monotonic() + LEASE / 2
            if batch is None:
                continue
            if lost is not None and batch.lost > lost and args.output == "text":
                print(f"Lost {batch.lost - lost} events (the event ring was full)")
            lost = batch.lost
            for raw in batch.events:
                try:
                    if not wanted(raw, types, args.related_to):
                        continue
                    print(format_json(raw) if args.output == "json" else format_text(raw, ifnames), flush=True)
                except (EventError, ValueError):
                    print(f"undecodable event of {len(raw)} bytes", flush=True)
                shown += 1
                if args.count and shown >= args.count:
                    break
    finally:
        if not client.bus.lost.is_set():
            await sub.unsubscribe()
            await client.call(subjects.OBSERVER_MONITOR, MonitorAttach(monitor=me, lease=0))
    return 0
