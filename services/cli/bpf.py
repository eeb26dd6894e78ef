"""`capillary bpf ...`: what the kernel holds, as cilium-dbg bpf shows it."""
from __future__ import annotations

import json
from pathlib import Path

from services.cli.client import Client
from services.cli.objects import split_ref
from services.cli.output import labels_text, table
from services.datapath.maps.conntrack import ConntrackMap
from services.datapath.maps.endpoints import EndpointMap
from services.datapath.numbers import POLICY_AUDIT, POLICY_DEFAULT, POLICY_DENY
from services.runtime.bus import ServiceError
from services.runtime.config import NodeConfig
from services.wire import subjects
from services.wire.messages import NOT_FOUND, EndpointPolicy, ListRequest

PROTO_NAMES = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


def _verdict(flags: int) -> str:
    word = "deny" if flags & POLICY_DENY else "allow"
    if flags & POLICY_AUDIT:
        word += " (audit)"
    return word


def _port(e: dict) -> str:
    proto = PROTO_NAMES.get(e["protocol"], str(e["protocol"]))
    if e["prefixlen"] <= 64:
        return "ANY"
    if e["prefixlen"] <= 80:
        return f"{proto}/ANY"
    span = 1 << (96 - e["prefixlen"])
    if e["protocol"] == 1:
        return f"ICMP type {e['port']}"
    return f"{proto}/{e['port']}" if span == 1 else f"{proto}/{e['port']}-{e['port'] + span - 1}"


def _rule(e: dict) -> str:
    if e["flags"] & POLICY_DEFAULT:
        return "default: deny (a policy selects it)" if e["flags"] & POLICY_DENY else "default: allow (no policy selects it)"
    r = e["rule"]
    if r is None:
        return "?"
    return f"{r['policy']} {r['direction']}{'Deny' if r['deny'] else ''}[{r['index']}]"


async def policy_get(client: Client, ref: str, output: str) -> int:
    namespace, name = split_ref(ref)
    pods = await client.call(subjects.POD_LIST, ListRequest(namespace=namespace))
    pod = next((p for p in pods if p["spec"]["name"] == name), None)
    if pod is None:
        raise ServiceError(NOT_FOUND, f'pod "{namespace}/{name}" not found')
    entries = await client.call(subjects.POLICY_ENTRIES, EndpointPolicy(pod["status"]["endpoint_id"]))
    if output == "json":
        print(json.dumps(entries, indent=2))
        return 0
    rows = []
    for e in entries:
        peer = "ANY" if e["prefixlen"] < 64 or e["identity"] == 0 else str(e["identity"])
        labels = "" if peer == "ANY" else labels_text(e["labels"]).replace("=,", ",").rstrip("=")
        rows.append([e["direction"].upper(), peer, labels[:60], _port(e), _verdict(e["flags"]),
                     str(e["packets"]), str(e["bytes"]), _rule(e)])
    print(table(["DIRECTION", "IDENTITY", "LABELS", "PORT/PROTO", "VERDICT", "PACKETS", "BYTES", "RULE"], rows))
    return 0


def ct_list(config: NodeConfig, output: str) -> int:
    conns = ConntrackMap(Path(config.datapath.bpfRoot)).all()
    if output == "json":
        print(json.dumps([c.__dict__ for c in conns], indent=2))
        return 0
    rows = [[c.protocol, f"{c.source}:{c.sport}", f"{c.destination}:{c.dport}", str(c.packets), str(c.bytes),
             f"{c.age_seconds:.0f}s", f"{c.idle_seconds:.0f}s", "yes" if c.replied else "no",
             "audit" if c.audit else ""] for c in sorted(conns, key=lambda c: -c.age_seconds)]
    print(table(["PROTO", "SOURCE", "DESTINATION", "PACKETS", "BYTES", "AGE", "IDLE", "REPLIED", "FLAGS"], rows))
    return 0


def endpoint_list(config: NodeConfig, output: str) -> int:
    eps = EndpointMap(Path(config.datapath.bpfRoot)).all()
    if output == "json":
        print(json.dumps([e.__dict__ for e in eps.values()], indent=2))
        return 0
    print(table(["IP", "ENDPOINT", "IDENTITY", "IFINDEX", "HOST MAC", "POD MAC"],
                [[e.ip, str(e.endpoint_id), str(e.identity), str(e.ifindex), e.host_mac, e.pod_mac]
                 for e in sorted(eps.values(), key=lambda e: e.endpoint_id)]))
    return 0
