"""`capillary walk NS/SRC NS/DST --port P [--protocol tcp|udp|icmp] [-o json]`: send one real
probe from SRC to DST and show every hop it took, each with what decided it.

The flows come from flowd over NATS (subscribed before the probe leaves); the probe runs
inside SRC's network namespace (services/cli/probe.py); the routes come from the kernel, and
the iptables rules from their packet counters before and after the probe. walkpath.py turns
all of it into hops. Exit status: 0 delivered, 1 dropped or not known to have arrived.

In a cluster the two pods may be on two nodes: the flows of both nodes are collected, and
walknodes.py lists each node's hops under its name. Routes and iptables counters are read
in each node's host namespace, found from its supervisor's status when that node runs on
this machine (otherwise they are reported unknown). The probe itself runs in the source
pod's namespace, so the walk runs on the source pod's machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.cli import placement, walknodes, walkpath
from services.cli.client import Client
from services.cli.objects import split_ref
from services.datapath.netlink import KernelError, Netlink, PodNetlink
from services.routed import iptables
from services.routed.tunnel import DEVICE
from services.runtime import supervisor
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import INVALID, NOT_FOUND, UNAVAILABLE, FlowEvent, ListRequest

REPO = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT = 2.0
SETTLE = 0.3            # seconds without a new flow of the probe before the walk is drawn
SETTLE_MAX = 3.0


def add_parser(sub) -> None:
    p = sub.add_parser("walk", help="send a probe from one pod to another and show every hop it took")
    p.add_argument("source", metavar="NS/SRC")
    p.add_argument("destination", metavar="NS/DST")
    p.add_argument("--port", type=int, default=0, help="destination port (TCP/UDP)")
    p.add_argument("--protocol", choices=["tcp", "udp", "icmp"], default="tcp")
    p.add_argument("--timeout", type=float, default=PROBE_TIMEOUT, help="seconds to wait for an answer")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")


async def _pod(client: Client, ref: str) -> tuple[walkpath.Pod, str]:
    namespace, name = split_ref(ref)
    for node, pod in await placement.pods_by_node(client, namespace):
        if pod["spec"]["name"] == name:
            if pod.get("phase") == placement.UNKNOWN:
                raise ServiceError(UNAVAILABLE, f'pod "{namespace}/{name}" is on node {node}, which is not ready')
            st = pod["status"]
            return walkpath.Pod(f"{namespace}/{name}", st["pod_ip"], st["endpoint_id"], st["identity"],
                                st["host_ifname"], st["host_ifindex"], node), st["netns"]
    raise ServiceError(NOT_FOUND, f'pod "{namespace}/{name}" not found')


@dataclass(frozen=True)
class Where:
    """Where a node's host namespace is, seen from here."""
    node: str
    netns: str | None           # a path; None: this process's own (a lone node)
    here: bool = True           # False: not proven to be on this machine

    @property
    def unknown(self) -> str:
        return f"unknown: node {self.node}'s host namespace is not on this machine"


async def _where(client: Client, node: str) -> Where:
    if not client.config.cluster.enabled:
        return Where(node, None)
    try:
        status = await client.call(subjects.NODE_STATUS, timeout=5.0, node=placement.target(node, client.config.node))
    except ServiceError:
        return Where(node, None, here=False)
    netns = supervisor.host_namespace(status) if isinstance(status, dict) else None
    return Where(node, netns, here=netns is not None)


def _route(where: Where, dst: str, src: str | None = None, iif: int | None = None) -> str:
    """`ip route get DST [from SRC iif IIF]` in WHERE's host namespace."""
    if not where.here:
        return where.unknown
    try:
        nl = PodNetlink(where.netns) if where.netns else Netlink()
        try:
            return nl.route_get(dst, src=src, iif=iif).text()
        finally:
            nl.close()
    except (KernelError, OSError) as exc:
        return f"none: {exc}"


def _links(where: Where) -> dict[int, str]:
    """WHERE's host links' names by ifindex; none when unknown (not on this machine)."""
    if not where.here:
        return {}
    try:
        nl = PodNetlink(where.netns) if where.netns else Netlink()
        try:
            return nl.names()
        finally:
            nl.close()
    except (KernelError, OSError):
        return {}


def _name_interfaces(flows: list[dict], links: dict[str, dict[int, str]]) -> None:
    """Name the devices flows know only by ifindex (flowd names pods' devices; the underlay's
    and the VXLAN device's are the host's), from LINKS: each node's, by ifindex."""
    for flow in flows:
        interface = flow.get("interface")
        if interface and not interface.get("name"):
            name = links.get(flow.get("node_name", ""), {}).get(interface.get("index"))
            if name:
                interface["name"] = name


def _counters(where: Where) -> dict[str, int] | None:
    return iptables.rule_counters(netns=where.netns) if where.here else None


async def _probe(netns: str, protocol: str, ip: str, port: int, timeout: float,
                 dropped: Callable[[int], bool]) -> walkpath.Probe:
    """Run the probe in NETNS. DROPPED(sport) tells whether the datapath has reported the
    request dropped: then waiting out TIMEOUT would only tell what is already known."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", "--", sys.executable, "-m", "services.cli.probe", protocol, ip, str(port),
        str(timeout), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    began = time.monotonic()
    try:
        sport = json.loads(await proc.stdout.readline() or b"{}").get("sport")
        if sport is None:
            raise ServiceError(INVALID, f"the probe failed in {netns}: {(await proc.stderr.read()).decode().strip()}")
        result = asyncio.ensure_future(proc.stdout.readline())
        while not result.done():
            await asyncio.wait([result], timeout=0.02)
            if not result.done() and dropped(sport):
                result.cancel()
                return walkpath.Probe(protocol, port, sport, "dropped", round(time.monotonic() - began, 6))
        outcome = json.loads(result.result())
        return walkpath.Probe(protocol, port, sport, outcome["outcome"], outcome["seconds"])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _pod_route(netns: str, dst: walkpath.Pod) -> str:
    """The route SRC's kernel (in NETNS) picks for DST."""
    try:
        with PodNetlink(netns) as pod:
            return pod.route_get(dst.ip).text()
    except KernelError as exc:
        return f"none: {exc}"


def _moved(before: dict[str, int] | None, after: dict[str, int] | None) -> list[str]:
    if before is None or after is None:
        return ["unknown: the node's host namespace is not on this machine"]
    return [f"{rule} (+{after[rule] - before.get(rule, 0)} packets while the probe ran)" for rule in after
            if after[rule] > before.get(rule, 0)]


async def run(client: Client, source: str, destination: str, port: int, protocol: str = "tcp",
              timeout: float = PROBE_TIMEOUT) -> walkpath.Walk:
    """Walk one probe from SOURCE to DESTINATION (NS/NAME each), on one node or across two:
    the command's work, also what the service map page runs for "walk this"."""
    if protocol not in walkpath.L4_KEYS:
        raise ServiceError(INVALID, f"protocol: {protocol!r} is not one of {', '.join(walkpath.L4_KEYS)}")
    if protocol != "icmp" and not 0 < port < 65536:
        raise ServiceError(INVALID, f"--port: {port} is not a port (1-65535); {protocol} needs one")
    (src, src_netns), (dst, _) = await _pod(client, source), await _pod(client, destination)
    if not Path(src_netns).exists():
        raise ServiceError(INVALID, f"{src.ref} runs on node {src.node}, whose pods' namespaces are not on this "
                                    f"machine ({src_netns}): run walk there")
    hosts = {node: await _where(client, node) for node in dict.fromkeys((src.node, dst.node))}
    flows, probe, moved = await _observe(client, src, dst, src_netns, walkpath.Probe(protocol, port, 0, "", 0.0),
                                         timeout, hosts)
    pod_route = await asyncio.to_thread(_pod_route, src_netns, dst)
    mode = client.config.datapath.mode
    if src.node == dst.node:
        host_route = await asyncio.to_thread(_route, hosts[src.node], dst.ip, src.ip, src.ifindex)
        return walkpath.build(flows, src, dst, probe, mode, pod_route, host_route, moved[src.node])
    members = {row["name"]: row for row in await placement.members(client)}
    routing = members.get(src.node, {}).get("routing") or client.config.cluster.routing
    under = {node: members.get(node, {}).get("underlay_ip", "?") for node in hosts}
    links = {node: await asyncio.to_thread(_links, where) for node, where in hosts.items()}
    _name_interfaces(flows, links)
    vxlan = {node: next((i for i, name in links[node].items() if name == DEVICE), 0) for node in hosts}
    if routing == "tunnel":
        routes = {src.node: await asyncio.to_thread(_route, hosts[src.node], under[dst.node]), dst.node: ""}
    else:
        routes = {src.node: await asyncio.to_thread(_route, hosts[src.node], dst.ip, src.ip, src.ifindex),
                  dst.node: await asyncio.to_thread(_route, hosts[dst.node], dst.ip)}
    side = {node: walknodes.Host(node, under[node], routes[node], tuple(moved[node]), vxlan[node]) for node in hosts}
    return walknodes.build(flows, src, dst, probe, f"{mode}, {routing} routing between nodes", routing, pod_route,
                           side[src.node], side[dst.node])


async def _observe(client: Client, src: walkpath.Pod, dst: walkpath.Pod, src_netns: str, want: walkpath.Probe,
                   timeout: float, hosts: dict[str, Where]) -> tuple[list[dict], walkpath.Probe, dict[str, list[str]]]:
    """Send the probe WANT from SRC to DST, and collect every flow the nodes of both
    publish meanwhile, and each node's iptables rules that counted packets."""
    flows: list[dict] = []
    last_flow = [time.monotonic()]

    async def collect(msg) -> None:
        flows.append(FlowEvent.from_wire(codec.decode(msg.data)).flow)
        last_flow[0] = time.monotonic()

    subs = [await client.bus.nc.subscribe(subjects.flows(node, "*"), cb=collect) for node in hosts]
    try:
        await client.bus.nc.flush()

        def dropped(sport: int) -> bool:
            probe = walkpath.Probe(want.protocol, want.port, sport, "", 0.0)
            return any(walkpath.is_drop(f) and walkpath.is_probe(f, src, dst, probe, reply=False) for f in flows)

        def arrived() -> bool:      # the destination's node has reported the probe (or it was dropped)
            return dropped(probe.sport) or any(f.get("node_name") == dst.node and
                                                walkpath.is_probe(f, src, dst, probe, reply=False) for f in flows)

        before = {node: await asyncio.to_thread(_counters, where) for node, where in hosts.items()}
        probe = await _probe(src_netns, want.protocol, dst.ip, want.port, timeout, dropped)
        moved = {node: _moved(before[node], await asyncio.to_thread(_counters, where)) for node, where in hosts.items()}
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline and (time.monotonic() - last_flow[0] < SETTLE or not arrived()):
            await asyncio.sleep(0.05)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return flows, probe, moved


async def walk(client: Client, args: argparse.Namespace) -> int:
    result = await run(client, args.source, args.destination, args.port, args.protocol, args.timeout)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(walkpath.render(result))
    return 0 if result.result == "DELIVERED" else 1
