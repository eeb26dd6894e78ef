"""`capillary walk NS/SRC NS/DST --port P [--protocol tcp|udp|icmp] [-o json]`: send one real
probe from SRC to DST and show every hop it took, each with what decided it.

The flows come from flowd over NATS (subscribed before the probe leaves); the probe runs
inside SRC's network namespace (services/cli/probe.py); the routes come from the kernel, and
the iptables rules from their packet counters before and after the probe. walkpath.py turns
all of it into hops. Exit status: 0 delivered, 1 dropped or not known to have arrived.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.cli import walkpath
from services.cli.client import Client
from services.cli.objects import split_ref
from services.datapath.netlink import KernelError, Netlink, PodNetlink
from services.routed import iptables
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import INVALID, NOT_FOUND, FlowEvent, ListRequest

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
    for pod in await client.call(subjects.POD_LIST, ListRequest(namespace=namespace)):
        if pod["spec"]["name"] == name:
            st = pod["status"]
            return walkpath.Pod(f"{namespace}/{name}", st["pod_ip"], st["endpoint_id"], st["identity"],
                                st["host_ifname"], st["host_ifindex"]), st["netns"]
    raise ServiceError(NOT_FOUND, f'pod "{namespace}/{name}" not found')


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


def _routes(src: walkpath.Pod, dst: walkpath.Pod, netns: str) -> tuple[str, str]:
    """(the route SRC's kernel picks for DST, the host's forwarding decision for it)."""
    try:
        with PodNetlink(netns) as pod:
            pod_route = pod.route_get(dst.ip).text()
    except KernelError as exc:
        pod_route = f"none: {exc}"
    host = Netlink()
    try:
        host_route = host.route_get(dst.ip, src=src.ip, iif=src.ifindex).text()
    except KernelError as exc:
        host_route = f"none: {exc}"
    finally:
        host.close()
    return pod_route, host_route


def _moved(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return [f"{rule} (+{after[rule] - before.get(rule, 0)} packets while the probe ran)" for rule in after
            if after[rule] > before.get(rule, 0)]


async def run(client: Client, source: str, destination: str, port: int, protocol: str = "tcp",
              timeout: float = PROBE_TIMEOUT) -> walkpath.Walk:
    """Walk one probe from SOURCE to DESTINATION (NS/NAME each): the command's work, also
    what the service map page runs for "walk this"."""
    if protocol not in walkpath.L4_KEYS:
        raise ServiceError(INVALID, f"protocol: {protocol!r} is not one of {', '.join(walkpath.L4_KEYS)}")
    if protocol != "icmp" and not 0 < port < 65536:
        raise ServiceError(INVALID, f"--port: {port} is not a port (1-65535); {protocol} needs one")
    (src, src_netns), (dst, _) = await _pod(client, source), await _pod(client, destination)
    flows: list[dict] = []
    last_flow = [time.monotonic()]

    async def collect(msg) -> None:
        flows.append(FlowEvent.from_wire(codec.decode(msg.data)).flow)
        last_flow[0] = time.monotonic()

    sub = await client.bus.nc.subscribe(subjects.flows(client.config.node, "*"), cb=collect)
    try:
        await client.bus.nc.flush()

        def dropped(sport: int) -> bool:
            probe = walkpath.Probe(protocol, port, sport, "", 0.0)
            return any(walkpath.is_drop(f) and walkpath.is_probe(f, src, dst, probe, reply=False) for f in flows)

        counters = await asyncio.to_thread(iptables.rule_counters)
        probe = await _probe(src_netns, protocol, dst.ip, port, timeout, dropped)
        moved = _moved(counters, await asyncio.to_thread(iptables.rule_counters))
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline and time.monotonic() - last_flow[0] < SETTLE:
            await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()
    pod_route, host_route = await asyncio.to_thread(_routes, src, dst, src_netns)
    return walkpath.build(flows, src, dst, probe, client.config.datapath.mode, pod_route, host_route, moved)


async def walk(client: Client, args: argparse.Namespace) -> int:
    result = await run(client, args.source, args.destination, args.port, args.protocol, args.timeout)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(walkpath.render(result))
    return 0 if result.result == "DELIVERED" else 1
