"""The packet walk across two nodes of a cluster: the source node's hops, the underlay, then
the destination node's, each hop named with its node. Pure, as services.cli.walkpath.

What the datapath reports for a request from pod A on node 1 to pod B on node 2 (bpf/lxc.c,
bpf/lib/overlay.h); every flow carries the node_name of the node that reported it:
  node 1, lxcA from_container: trace FROM_ENDPOINT; policy verdict EGRESS (A's policy; B's
      ingress is decided on node 2); then a drop event, or
      tunnel: trace TO_OVERLAY (encapsulated, the source identity as the VNI: from_container
          writes the VXLAN headers and sends it out of the underlay device, or, without a
          resolved neighbour, sets the tunnel key and hands it to the VXLAN device)
      native: trace TO_NETWORK (BPF host routing: the kernel's route lookup from the program,
          sent out of the underlay device), or with datapath.hostLegacyRouting trace
          TO_STACK (the kernel routes it to node 2's underlay address)
  node 2, tunnel: the underlay device's from_netdev takes the headers off (or cap_vxlan's
          from_overlay, after the kernel did): trace FROM_OVERLAY at that device (the
          identity from the VNI); policy verdict INGRESS (B's policy); a drop, or trace
          TO_ENDPOINT (bpf_redirect_peer into B)
  node 2, native: the underlay device's from_netdev: trace FROM_NETWORK, then as from_overlay
          with the source identity from node 2's ipcache; with legacy host routing, lxcB's
          to_container: policy verdict INGRESS; a drop, or trace TO_ENDPOINT
Endpoint ids and interface indexes are each node's own: a node's flows are read only for
that node's hops.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.cli import walkpath
from services.cli.walkpath import Hop, Pod, Probe, Walk
from services.datapath.numbers import (TRACE_FROM_NETWORK, TRACE_FROM_OVERLAY, TRACE_TO_LXC, TRACE_TO_NETWORK,
                                      TRACE_TO_OVERLAY, TRACE_TO_STACK)
from services.routed.tunnel import DEVICE, PORT


@dataclass(frozen=True)
class Host:
    """What the walk learned of one node's host besides its flows."""
    node: str
    underlay_ip: str
    route: str                  # the host's route for the probe (`ip route get`), or why unknown
    iptables: tuple[str, ...]   # its iptables rules whose packet counters moved during the probe
    vxlan_ifindex: int = 0      # its VXLAN device's (tunnel mode, the destination); 0: unknown


def _on(node: str, hops: list[Hop]) -> list[Hop]:
    for hop in hops:
        hop.node = node
    return hops


def _uuids(flow: dict | None) -> list[str]:
    return [flow["uuid"]] if flow else []


def _device(flow: dict) -> str:
    """The device a flow was observed at (the underlay's has no pod: its ifindex)."""
    interface = flow.get("interface", {})
    return interface.get("name") or f"ifindex {interface.get('index', '?')}"


def build(flows: list[dict], src: Pod, dst: Pod, probe: Probe, mode: str, routing: str, pod_route: str,
          source: Host, destination: Host) -> Walk:
    """The walk of PROBE from SRC (on SOURCE's node) to DST (on DESTINATION's), in ROUTING
    (native | tunnel). FLOWS: every flow seen meanwhile, from any node."""
    request, reply = walkpath.split(flows, src, dst, probe)
    here = [f for f in request if f.get("node_name") == src.node]
    there = [f for f in request if f.get("node_name") == dst.node]
    replies = walkpath.reply_text(reply, nodes=True)
    hops = _on(src.node, walkpath.sending(here, src, dst, probe, pod_route))
    dropped = walkpath.drop_hop(here, src.ifname)
    if dropped is not None:
        hops += _on(src.node, [dropped[0]])
        return Walk(src, dst, probe, mode, hops, "DROPPED", f"{dropped[1]} on node {src.node}", replies)
    hops += _on(src.node, _leaving(here, src, dst, source, destination))
    hops += _on(dst.node, _entering(there, dst, routing, source, destination))
    network = walkpath.trace_of(there, TRACE_FROM_NETWORK)
    entry = _overlay_entry(there, destination)[0] if routing == "tunnel" else _device(network) if network else None
    dropped = walkpath.drop_hop(there, entry or dst.ifname)
    if dropped is not None:
        hops += _on(dst.node, [dropped[0]])
        return Walk(src, dst, probe, mode, hops, "DROPPED", f"{dropped[1]} on node {dst.node}", replies)
    hops += _on(dst.node, [_delivering(there, dst, routing, destination)])
    return walkpath.arrival(there, src, dst, probe, mode, hops, replies, node=dst.node)


def _leaving(here: list[dict], src: Pod, dst: Pod, source: Host, destination: Host) -> list[Hop]:
    """How the source node sent it on: encapsulated (tunnel) or through its stack (native)."""
    overlay = walkpath.trace_of(here, TRACE_TO_OVERLAY)
    if overlay is not None:
        vni = overlay.get("source", {}).get("identity", src.identity)
        return [Hop(f"host {src.ifname}", f"to-overlay: encapsulated in VXLAN for node {dst.node}",
                    details=[f"VNI {vni}: the source's security identity",
                             f"outer packet: {source.underlay_ip} -> {destination.underlay_ip} UDP {PORT}",
                             f"from_container writes the headers and sends it out of the underlay device; "
                             f"without a resolved neighbour, {DEVICE} does"], flows=_uuids(overlay)),
                Hop("underlay", f"the outer packet goes to node {dst.node} over the underlay",
                    details=[f"route: {source.route}"])]
    network = walkpath.trace_of(here, TRACE_TO_NETWORK)
    if network is not None:
        return [Hop(f"host {src.ifname}", f"to-network: BPF host routing sends it out of {_device(network)} to node "
                    f"{dst.node} ({destination.underlay_ip}), the next hop from the kernel's route lookup",
                    details=[f"route: {source.route}", "the host stack (and its iptables) is not traversed"],
                    flows=_uuids(network))]
    stack = walkpath.trace_of(here, TRACE_TO_STACK)
    if stack is not None:
        return [Hop("host stack", f"from_container passes the packet on (TC_ACT_OK): the kernel routes it to "
                    f"node {dst.node} ({destination.underlay_ip})",
                    details=[f"route: {source.route}"] +
                    [f"iptables: {line}" for line in source.iptables or ["no rule counter moved"]],
                    flows=_uuids(stack))]
    return [Hop("forwarding", "no forwarding decision reported (events lost? see `capillary status`)")]


def _entering(there: list[dict], dst: Pod, routing: str, source: Host, destination: Host) -> list[Hop]:
    """How the destination node took it in, and its ingress policy's verdict."""
    if routing == "tunnel":
        device, how_taken = _overlay_entry(there, destination)
        overlay = walkpath.trace_of(there, TRACE_FROM_OVERLAY)
        vni = overlay.get("source", {}).get("identity") if overlay else None
        hops = [Hop(f"host {device}", f"{how_taken}, from {source.underlay_ip}" +
                    (f", source identity {vni} from the VNI" if overlay else ""),
                    details=[] if overlay else ["no from-overlay trace reported"], flows=_uuids(overlay))]
        where, how = f"host {device}", "with the source identity the VNI carried"
    elif (network := walkpath.trace_of(there, TRACE_FROM_NETWORK)) is not None:
        hops = [Hop(f"host {_device(network)}", f"from_netdev (tc ingress of {_device(network)}): from "
                    f"{source.underlay_ip}, natively routed", flows=_uuids(network))]
        where, how = f"host {_device(network)}", "with the source identity from its ipcache (the packet carries " \
                                                 "only its address)"
    else:
        hops = [Hop("host stack", f"arrives on the underlay from {source.underlay_ip}: the kernel routes it to "
                    f"{dst.ifname}", details=[f"route: {destination.route}"] +
                    [f"iptables: {line}" for line in destination.iptables or ["no rule counter moved"]])]
        where, how = f"host {dst.ifname}", "with the source identity from its ipcache (the packet carries only " \
                                           "its address)"
    policy = walkpath.policy_hop(walkpath.verdict_of(there, "INGRESS", dst), where, dst, "ingress")
    policy.details.append(f"decided on node {dst.node}, {how}")
    return hops + [policy]


def _overlay_entry(there: list[dict], destination: Host) -> tuple[str, str]:
    """Where the destination node took the VXLAN headers off, and how: the device its
    from-overlay trace names, which is the VXLAN device's when the kernel did it."""
    overlay = walkpath.trace_of(there, TRACE_FROM_OVERLAY)
    if overlay is None:
        return DEVICE, "from the overlay"
    index = overlay.get("interface", {}).get("index")
    if destination.vxlan_ifindex and index == destination.vxlan_ifindex:
        return DEVICE, f"from_overlay (tc ingress of {DEVICE}): decapsulated by the kernel's VXLAN device"
    device = _device(overlay)
    if destination.vxlan_ifindex:
        return device, f"from_netdev (tc ingress of {device}): VXLAN headers taken off in BPF"
    return device, f"from-overlay at {device}: decapsulated"


def _delivering(there: list[dict], dst: Pod, routing: str, destination: Host) -> Hop:
    arrived = walkpath.trace_of(there, TRACE_TO_LXC)
    details = [] if arrived else ["no to-endpoint trace reported"]
    network = walkpath.trace_of(there, TRACE_FROM_NETWORK)
    if routing == "tunnel" or network is not None:
        where = _overlay_entry(there, destination)[0] if routing == "tunnel" else _device(network)
        return Hop(f"host {where}", f"bpf_redirect_peer into {dst.ref} eth0 (the peer of {dst.ifname})",
                   details=details, flows=_uuids(arrived))
    return Hop(f"host {dst.ifname}", f"to_container (tc egress) into {dst.ref}", details=details,
               flows=_uuids(arrived))
