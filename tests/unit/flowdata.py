"""Raw datapath events and flows for the flowd unit tests: packets built byte by byte, events
laid out as struct flow_event (through its ctypes mirror)."""
from __future__ import annotations

import ctypes as ct
import ipaddress
import struct

from services.datapath.maps.events import HEADER_SIZE, FlowEvent
from services.datapath.numbers import (EVENT_CAPTURE_LEN, EVENT_TRACE, METRIC_EGRESS, TRACE_FROM_LXC,
                                       TRACE_REASON_POLICY)
from services.flowd.metadata import Metadata

MAC_A, MAC_B = bytes.fromhex("0a0000000001"), bytes.fromhex("0a0000000002")
A, B, WORLD_IP = "10.200.0.2", "10.200.0.3", "198.18.0.2"
ID_A, ID_B = 256, 257


def packet(src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    eth = MAC_B + MAC_A + struct.pack("!H", 0x0800)
    total = 20 + len(l4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return eth + ip + l4


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"ping"


def icmp(icmp_type: int, code: int = 0) -> bytes:
    return struct.pack("!BBHHH", icmp_type, code, 0, 7, 1)


def event(pkt: bytes, type: int = EVENT_TRACE, subtype: int = TRACE_FROM_LXC, *,
          endpoint_id: int = 1, src_identity: int = ID_A, dst_identity: int = ID_B,
          direction: int = METRIC_EGRESS, reason: int = TRACE_REASON_POLICY, verdict: int = 0,
          match_type: int = 0, rule_id: int = 0, ktime: int = 5_000_000_000, ifindex: int = 11) -> bytes:
    e = FlowEvent(ktime=ktime, type=type, subtype=subtype, endpoint_id=endpoint_id, ifindex=ifindex,
                  src_identity=src_identity, dst_identity=dst_identity, rule_id=rule_id,
                  orig_len=len(pkt), cap_len=min(len(pkt), EVENT_CAPTURE_LEN),
                  direction=direction, reason=reason, verdict=verdict, match_type=match_type)
    ct.memmove(e.data, pkt, e.cap_len)
    return bytes(e)[:HEADER_SIZE + e.cap_len]


def pod(namespace: str, name: str, ip: str, endpoint_id: int, identity: int, ifindex: int) -> dict:
    return {"spec": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "status": {"pod_ip": ip, "host_ifname": f"lxc{name}", "host_ifindex": ifindex,
                       "host_mac": "0a:00:00:00:00:09", "pod_mac": "0a:00:00:00:00:01",
                       "netns": f"/run/netns/{name}", "netns_owned": True,
                       "endpoint_id": endpoint_id, "identity": identity, "created": 1.0}}


def metadata() -> Metadata:
    meta = Metadata()
    meta.set_pods([pod("x", "a", A, 1, ID_A, 11), pod("x", "b", B, 2, ID_B, 12)])
    meta.set_identities([
        {"id": 1, "labels": {"reserved:host": ""}}, {"id": 2, "labels": {"reserved:world": ""}},
        {"id": ID_A, "labels": {"k8s:app": "a", "k8s:io.kubernetes.pod.namespace": "x"}},
        {"id": ID_B, "labels": {"k8s:app": "b", "k8s:io.kubernetes.pod.namespace": "x"}},
    ])
    meta.set_rules([{"rule_id": 77, "kind": "CiliumNetworkPolicy", "name": "only-a", "namespace": "x",
                     "direction": "ingress", "deny": False, "index": 0},
                    {"rule_id": 78, "kind": "CiliumClusterwideNetworkPolicy", "name": "no-b", "namespace": "",
                     "direction": "egress", "deny": True, "index": 2}])
    return meta
