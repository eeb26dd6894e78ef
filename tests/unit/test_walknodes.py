"""The packet walk across two nodes, from flows decoded out of raw events as each node's
datapath writes them (bpf/lxc.c, bpf/lib/overlay.h); tests/e2e/test_cluster.py walks a
real cluster in both routing modes."""
from __future__ import annotations

from dataclasses import replace

from services.cli import walknodes, walkpath
from services.cli.walkpath import Pod, Probe
from services.datapath.numbers import (DROP_POLICY, EVENT_DROP, EVENT_POLICY_VERDICT, METRIC_INGRESS,
                                       POLICY_MATCH_L3_L4, POLICY_MATCH_NONE, TRACE_FROM_NETWORK, TRACE_FROM_OVERLAY,
                                       TRACE_REASON_CT_REPLY, TRACE_TO_LXC, TRACE_TO_NETWORK, TRACE_TO_OVERLAY,
                                       TRACE_TO_STACK,
                                       VERDICT_DROPPED, VERDICT_FORWARDED)
from services.flowd.decode import decode
from tests.unit.flowdata import A, B, ID_A, event, metadata, packet, tcp

META = metadata()
SRC = Pod("x/a", A, 1, ID_A, "lxca", 11, "n1")
DST = Pod("x/b", B, 2, 257, "lxcb", 12, "n2")
N1 = walknodes.Host("n1", "172.31.0.1", "10.200.0.0/24 via 172.31.0.2 dev underlay", ("FORWARD #1 -> ACCEPT",))
N2 = walknodes.Host("n2", "172.31.0.2", "10.200.0.3 dev lxcb", ())
SYN, SYNACK = 0x02, 0x12
VXLAN_IFINDEX = 7
UNDERLAY_IFINDEX = 3


def on(node: str, *raws: bytes) -> list[dict]:
    return [decode(raw, META, node, 0, new_uuid=lambda: f"{node}-{i}") for i, raw in enumerate(raws)]


def request(**kw) -> bytes:
    return event(packet(A, B, 6, tcp(40000, 80, SYN)), **kw)


def sent(point: int) -> list[dict]:
    return on("n1", request(), request(type=EVENT_POLICY_VERDICT, subtype=0, verdict=VERDICT_FORWARDED,
                                       match_type=POLICY_MATCH_NONE), request(subtype=point))


def received(first: list[bytes], verdict: int = VERDICT_FORWARDED, ifindex: int = 12) -> list[dict]:
    ingress = dict(endpoint_id=2, direction=METRIC_INGRESS, ifindex=ifindex)
    raws = [*first, request(type=EVENT_POLICY_VERDICT, subtype=0, verdict=verdict, match_type=POLICY_MATCH_L3_L4,
                            rule_id=77 if verdict == VERDICT_FORWARDED else 0, **ingress)]
    if verdict == VERDICT_FORWARDED:
        raws.append(request(subtype=TRACE_TO_LXC, **ingress))
    else:
        raws.append(request(type=EVENT_DROP, subtype=DROP_POLICY, **ingress))
    return on("n2", *raws)


def walk(fs: list[dict], routing: str, outcome: str = "answered", destination: walknodes.Host = N2) -> walkpath.Walk:
    return walknodes.build(fs, SRC, DST, Probe("tcp", 80, 40000, outcome, 0.002), f"redirect, {routing}", routing,
                           "10.200.0.3 via 10.200.0.1 dev eth0", N1, destination)


def tunnelled(ifindex: int, destination: walknodes.Host) -> walkpath.Walk:
    """A request through the overlay, decapsulated at IFINDEX of node n2, and its reply."""
    overlay = request(subtype=TRACE_FROM_OVERLAY, endpoint_id=2, direction=METRIC_INGRESS, ifindex=ifindex)
    reply = on("n2", event(packet(B, A, 6, tcp(80, 40000, SYNACK)), ifindex=12, reason=TRACE_REASON_CT_REPLY))
    return walk(sent(TRACE_TO_OVERLAY) + received([overlay], ifindex=ifindex) + reply, "tunnel",
                destination=destination)


def test_tunnel_mode_lists_each_nodes_hops_with_the_encapsulation():
    w = tunnelled(UNDERLAY_IFINDEX, replace(N2, vxlan_ifindex=VXLAN_IFINDEX))
    assert w.result == "DELIVERED"
    assert [(h.node, h.where) for h in w.hops] == [
        ("n1", "x/a eth0"), ("n1", "host lxca"), ("n1", "host lxca"), ("n1", "host lxca"), ("n1", "underlay"),
        ("n2", "host ifindex 3"), ("n2", "host ifindex 3"), ("n2", "host ifindex 3"), ("n2", "x/b eth0")]
    assert w.hops[3].what == "to-overlay: encapsulated in VXLAN for node n2"
    assert w.hops[3].details[:2] == ["VNI 256: the source's security identity",
                                     "outer packet: 172.31.0.1 -> 172.31.0.2 UDP 8472"]
    assert w.hops[5].what == "from_netdev (tc ingress of ifindex 3): VXLAN headers taken off in BPF, " \
                             "from 172.31.0.1, source identity 256 from the VNI"
    assert w.hops[6].what == "ingress policy of x/b: ALLOWED by CiliumNetworkPolicy x/only-a rule 0"
    assert w.hops[7].flows == ["n2-2"] and w.hops[7].what.startswith("bpf_redirect_peer into x/b eth0")
    assert all(hop.flows for hop in w.hops[1:4] + w.hops[5:8]), "every datapath hop rests on a flow"
    assert w.reply == ["node n2: from-endpoint at lxcb: TCP Flags: SYN, ACK"]
    text = walkpath.render(w)
    assert text.index("on node n1:") < text.index("to-overlay") < text.index("on node n2:") < text.index("from_netdev")


def test_a_packet_the_kernels_vxlan_device_decapsulated_is_walked_from_there():
    w = tunnelled(VXLAN_IFINDEX, replace(N2, vxlan_ifindex=VXLAN_IFINDEX))
    assert w.result == "DELIVERED"
    assert [h.where for h in w.hops[5:8]] == ["host cap_vxlan"] * 3
    assert w.hops[5].what == "from_overlay (tc ingress of cap_vxlan): decapsulated by the kernel's VXLAN device, " \
                             "from 172.31.0.1, source identity 256 from the VNI"


def test_without_the_destinations_vxlan_device_the_walk_does_not_guess_who_decapsulated():
    w = tunnelled(UNDERLAY_IFINDEX, N2)
    assert w.hops[5].what == "from-overlay at ifindex 3: decapsulated, from 172.31.0.1, source identity 256 " \
                             "from the VNI"


def test_legacy_native_mode_goes_through_both_stacks_and_the_destination_decides_ingress():
    w = walk(sent(TRACE_TO_STACK) + received([]), "native")
    assert w.result == "DELIVERED"
    assert [(h.node, h.where) for h in w.hops[3:]] == [("n1", "host stack"), ("n2", "host stack"),
                                                       ("n2", "host lxcb"), ("n2", "host lxcb"), ("n2", "x/b eth0")]
    assert w.hops[3].details == ["route: 10.200.0.0/24 via 172.31.0.2 dev underlay", "iptables: FORWARD #1 -> ACCEPT"]
    assert w.hops[4].details[0] == "route: 10.200.0.3 dev lxcb"
    assert w.hops[5].verdict == "ALLOWED" and "from its ipcache" in w.hops[5].details[-1]
    assert w.hops[6].what == "to_container (tc egress) into x/b" and w.hops[6].flows == ["n2-1"]


def test_native_mode_with_bpf_host_routing_skips_both_stacks():
    network = request(subtype=TRACE_FROM_NETWORK, endpoint_id=2, direction=METRIC_INGRESS, ifindex=UNDERLAY_IFINDEX)
    w = walk(sent(TRACE_TO_NETWORK) + received([network], ifindex=UNDERLAY_IFINDEX), "native")
    assert w.result == "DELIVERED"
    assert [(h.node, h.where) for h in w.hops[3:]] == [("n1", "host lxca"), ("n2", "host ifindex 3"),
                                                       ("n2", "host ifindex 3"), ("n2", "host ifindex 3"),
                                                       ("n2", "x/b eth0")]
    assert w.hops[3].what.startswith("to-network: BPF host routing sends it out of ")
    assert w.hops[3].details == ["route: 10.200.0.0/24 via 172.31.0.2 dev underlay",
                                 "the host stack (and its iptables) is not traversed"]
    assert w.hops[4].what == "from_netdev (tc ingress of ifindex 3): from 172.31.0.1, natively routed"
    assert w.hops[5].verdict == "ALLOWED" and "from its ipcache" in w.hops[5].details[-1]
    assert w.hops[6].what.startswith("bpf_redirect_peer into x/b eth0")
    assert all(hop.flows for hop in w.hops[1:7]), "every datapath hop rests on a flow"


def test_a_drop_on_the_destination_node_ends_the_walk_there():
    w = walk(sent(TRACE_TO_STACK) + received([], VERDICT_DROPPED), "native", outcome="dropped")
    assert w.result == "DROPPED" and w.reason == "POLICY_DENIED (drop reason 133) at lxcb on node n2"
    assert (w.hops[-1].node, w.hops[-2].verdict, w.hops[-2].rule["name"]) == ("n2", "DENIED", "default-deny")


def test_the_source_nodes_flows_never_stand_for_the_destination():
    """Endpoint ids and ifindexes are each node's own: without n2's flows the destination's
    hops rest on nothing, whatever n1 reported."""
    w = walk(sent(TRACE_TO_OVERLAY), "tunnel", outcome="timeout")
    assert w.result == "UNKNOWN"
    assert [h.flows for h in w.hops if h.node == "n2"] == [[], [], [], []]
    assert "no verdict reported" in w.hops[6].what


def test_host_devices_are_named_from_the_node_that_reported_them():
    """A flow at the underlay device carries only its ifindex: walk names it from the links
    of the node that reported it, not another node's, and keeps names flowd gave."""
    from services.cli.walk import _name_interfaces
    flows = [{"node_name": "n2", "interface": {"index": 2}},
             {"node_name": "n1", "interface": {"index": 2}},
             {"node_name": "n2", "interface": {"index": 6, "name": "lxcb"}},
             {"node_name": "n3", "interface": {"index": 2}}]
    _name_interfaces(flows, {"n1": {2: "eth0"}, "n2": {2: "underlay", 6: "other"}})
    assert [f["interface"].get("name") for f in flows] == ["underlay", "eth0", "lxcb", None]
