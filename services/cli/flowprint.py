"""How `capillary observe` prints flows, as `hubble observe` does: compact lines, one JSON
object per line ({"flow": ..., "node_name", "time"}), or a table. Pure string functions.
"""
from __future__ import annotations

import calendar
import json
import time

from services.datapath.numbers import (EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, POLICY_MATCH_NAMES,
                                       REASON_NAMES, TRACE_NAMES)
from services.policyd.identity import RESERVED

# The verdict of a policy-verdict flow reads as the decision it was.
POLICY_VERDICT_WORDS = {"FORWARDED": "ALLOWED", "DROPPED": "DENIED", "AUDIT": "AUDITED"}
TABLE_HEADERS = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")
TABLE_WIDTHS = (19, 30, 30, 28, 9, 0)


def timestamp(flow: dict) -> str:
    """Go's time.StampMilli in UTC ("Jan _2 15:04:05.000"), as hubble prints times."""
    text = flow.get("time", "")
    whole, _, frac = text.rstrip("Z").partition(".")
    try:
        t = time.gmtime(calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return "N/A"
    day = f"{t.tm_mday:2d}"
    return time.strftime(f"%b {day} %H:%M:%S", t) + f".{(frac + '000')[:3]}"


def _ports(flow: dict) -> tuple[int, int] | None:
    for l4 in flow.get("l4", {}).values():
        if "source_port" in l4:
            return l4["source_port"], l4["destination_port"]
    return None


def host(flow: dict, side: str) -> str:
    """NS/POD or the IP, with :PORT when the flow has ports."""
    endpoint = flow.get(side, {})
    ip = flow.get("IP", {}).get(side, "")
    name = f"{endpoint['namespace']}/{endpoint['pod_name']}" if endpoint.get("pod_name") else ip
    if not name:
        name = flow.get("ethernet", {}).get(side, "")
    ports = _ports(flow)
    port = ports[0 if side == "source" else 1] if ports else 0
    return f"{name}:{port}" if port else name


def identity(flow: dict, side: str) -> str:
    number = flow.get(side, {}).get("identity", 0)
    if number in RESERVED:
        return f"({RESERVED[number].split(':', 1)[1]})"
    return f"(ID:{number})"


def flow_type(flow: dict) -> str:
    event = flow.get("event_type", {})
    kind, sub = event.get("type"), event.get("sub_type", 0)
    if kind == EVENT_TRACE:
        return TRACE_NAMES.get(sub, f"trace:{sub}")
    if kind == EVENT_DROP:
        return REASON_NAMES.get(sub, f"{sub}")
    if kind == EVENT_POLICY_VERDICT:
        match = POLICY_MATCH_NAMES.get(flow.get("policy_match_type", 0), "unknown")
        return f"policy-verdict:{match} {flow.get('traffic_direction', '')}"
    return "UNKNOWN"


def verdict(flow: dict) -> str:
    v = flow.get("verdict", "VERDICT_UNKNOWN")
    if flow.get("event_type", {}).get("type") == EVENT_POLICY_VERDICT:
        return POLICY_VERDICT_WORDS.get(v, v)
    return v


def compact(flow: dict) -> str:
    """TIME: SRC (ID) -> DST (ID) TYPE VERDICT (SUMMARY). Replies are printed from the
    connection's point of view (DST <- SRC); "<>" when it is not known which way it goes."""
    src, dst = f"{host(flow, 'source')} {identity(flow, 'source')}", \
        f"{host(flow, 'destination')} {identity(flow, 'destination')}"
    arrow = "->"
    if "is_reply" not in flow:
        arrow = "<>"
    elif flow["is_reply"]:
        src, dst, arrow = dst, src, "<-"
    return f"{timestamp(flow)}: {src} {arrow} {dst} {flow_type(flow)} {verdict(flow)} ({flow.get('Summary', '')})"


def as_json(flow: dict) -> str:
    """One object per line, as `hubble observe -o json` prints GetFlowsResponse."""
    return json.dumps({"flow": flow, "node_name": flow.get("node_name", ""), "time": flow.get("time", "")},
                      separators=(",", ":"))


def table_row(flow: dict) -> str:
    cells = (timestamp(flow), host(flow, "source"), host(flow, "destination"), flow_type(flow),
             verdict(flow), flow.get("Summary", ""))
    return _row(cells)


def table_header() -> str:
    return _row(TABLE_HEADERS)


def _row(cells) -> str:
    return "   ".join(str(c).ljust(w) for c, w in zip(cells, TABLE_WIDTHS)).rstrip()


class Printer:
    """Prints flows one at a time in one format (the table header before the first)."""

    def __init__(self, output: str, write=print) -> None:
        self.output = output
        self.write = write
        self.lines = 0

    def __call__(self, flow: dict) -> None:
        if self.output == "json":
            self.write(as_json(flow))
        elif self.output == "table":
            if self.lines == 0:
                self.write(table_header())
            self.write(table_row(flow))
        else:
            self.write(compact(flow))
        self.lines += 1
