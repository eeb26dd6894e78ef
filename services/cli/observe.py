"""`capillary observe`: flows from the node's history and, with -f, as they happen.

History comes from flowd (observer.flows, filtered there); live flows come straight from
NATS (flows(node, verdict)) and are filtered here with the same function
(services.flowd.filters), so a flow is shown under the same conditions either way.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

from services.cli.client import Client
from services.cli.flowprint import Printer
from services.flowd.filters import FilterError, matches, validate
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import INVALID, FlowEvent, FlowFilter, FlowQuery, SchemaError

DEFAULT_LAST = 20                   # as hubble: without -f or --since, the last 20 flows
DEFAULT_NAMESPACE = "default"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub) -> None:
    o = sub.add_parser("observe", help="show flows: what the datapath forwarded, dropped, allowed or denied")
    o.add_argument("-f", "--follow", action="store_true", help="keep printing flows as they happen")
    o.add_argument("--last", type=int, metavar="N", help=f"the last N flows (default {DEFAULT_LAST} without -f)")
    o.add_argument("--since", metavar="DURATION", help="flows since this long ago (30s, 5m, 1h) or an RFC 3339 time")
    for flag, help_text in (("--verdict", "FORWARDED, DROPPED or AUDIT"),
                            ("--from-pod", "source pod NS/NAME"), ("--to-pod", "destination pod NS/NAME"),
                            ("--pod", "either side's pod NS/NAME"), ("--namespace", "either side's namespace"),
                            ("--port", "either side's port"), ("--protocol", "tcp, udp, icmp, sctp"),
                            ("--type", "drop, trace[:to-endpoint|to-stack|from-endpoint], policy-verdict"),
                            ("--traffic-direction", "ingress or egress")):
        o.add_argument(flag, action="append", default=[], help=f"{help_text} (repeat: any of them)")
    o.add_argument("-o", "--output", choices=["compact", "json", "table"], default="compact")
    o.add_argument("--node", help="in a cluster: whose flows (default: the node whose NATS is reached)")


def parse_since(text: str, now: float) -> float:
    """DURATION ago (e.g. 90s, 5m, 1h30m) or an RFC 3339 time, as unix seconds."""
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return now - sum(float(n) * _UNITS[u] for n, u in parts)
    from services.flowd.filters import flow_time
    parsed = flow_time({"time": text})
    if not parsed:
        raise ServiceError(INVALID, f"--since: {text!r} is neither a duration (30s, 5m, 1h) nor an RFC 3339 time")
    return parsed


def _pod_ref(ref: str) -> str:
    return ref if "/" in ref else f"{DEFAULT_NAMESPACE}/{ref}"


def build_filter(args: argparse.Namespace, now: float | None = None) -> FlowFilter:
    try:
        ports = [int(p) for p in args.port]
    except ValueError:
        raise ServiceError(INVALID, f"--port: {args.port} are not all numbers") from None
    f = FlowFilter(
        verdict=[v.upper() for v in args.verdict], from_pod=[_pod_ref(p) for p in args.from_pod],
        to_pod=[_pod_ref(p) for p in args.to_pod], pod=[_pod_ref(p) for p in args.pod],
        namespace=list(args.namespace), port=ports, protocol=[p.lower() for p in args.protocol],
        type=[t.lower() for t in args.type], traffic_direction=[d.lower() for d in args.traffic_direction],
        since=parse_since(args.since, time.time() if now is None else now) if args.since else 0.0)
    try:
        return validate(f)
    except FilterError as exc:
        raise ServiceError(INVALID, str(exc)) from None


def history_size(args: argparse.Namespace) -> int | None:
    """How many flows to take from the history: None for none at all (plain -f)."""
    if args.last is not None:
        if args.last < 0:
            raise ServiceError(INVALID, "--last: must not be negative")
        return args.last
    if args.since:
        return 0                     # everything since then
    return None if args.follow else DEFAULT_LAST


async def observe(client: Client, args: argparse.Namespace) -> int:
    f = build_filter(args)
    show = Printer(args.output, write=lambda line: print(line, flush=True))
    node = getattr(args, "node", None) or client.config.node
    live: asyncio.Queue[dict] = asyncio.Queue()
    if args.follow:                  # subscribe first, so nothing falls between history and live
        await _subscribe(client, node, f, live)
    seen: set[str] = set()
    last = history_size(args)
    if last is not None:
        reply = await client.call(subjects.OBSERVER_FLOWS, FlowQuery(last=last, filter=f),
                                  node=None if node == client.config.node else node)
        for flow in reply["flows"]:
            seen.add(flow.get("uuid", ""))
            show(flow)
    while args.follow:
        flow = await client.next(live)
        if flow.get("uuid") not in seen:
            show(flow)
    return 0


async def _subscribe(client: Client, node: str, f: FlowFilter, live: asyncio.Queue) -> None:
    async def on_msg(msg) -> None:
        try:
            flow = FlowEvent.from_wire(codec.decode(msg.data)).flow
        except (SchemaError, codec.DecodeError) as exc:
            print(f"warning: bad flow on {msg.subject}: {exc}", file=sys.stderr)
            return
        if matches(flow, f):
            live.put_nowait(flow)

    verdicts = f.verdict or ["*"]    # the subject narrows by verdict already
    for verdict in verdicts:
        await client.bus.nc.subscribe(subjects.flows(node, verdict), cb=on_msg)
