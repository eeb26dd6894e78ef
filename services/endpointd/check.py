"""What a pod needs in the kernel, checked piece by piece (a CNI runtime's CHECK).

verify() runs on the netlink worker thread and names every missing or wrong piece; an
empty list means the pod is wired as create() left it. It changes nothing.
"""
from __future__ import annotations

from pathlib import Path

from services.datapath import netns
from services.datapath.netlink import TC_EGRESS, TC_INGRESS, InterfaceNotFound, KernelError, PodNetlink
from services.endpointd.plumbing import FROM_CONTAINER, TO_CONTAINER, Plumber
from services.wire.messages import Pod

PROBE_DST = "192.0.2.1"        # TEST-NET-1: any address off the pod's link takes the default route


def verify(plumber: Plumber, pod: Pod) -> list[str]:
    status = pod.status
    problems = _host_side(plumber, pod)
    path = Path(status.netns)
    if not netns.is_netns(path):
        return problems + [f"network namespace {status.netns} is gone"]
    return problems + _pod_side(plumber.router_ip, pod, path)


def _host_side(plumber: Plumber, pod: Pod) -> list[str]:
    status = pod.status
    try:
        host = plumber.nl.link(status.host_ifname)
    except InterfaceNotFound:
        return [f"host-side veth {status.host_ifname} is missing",
                *_entry(plumber, pod, None)]
    problems = []
    if not plumber.nl.is_up(host.index):
        problems.append(f"host-side veth {status.host_ifname} is down")
    if FROM_CONTAINER not in plumber.nl.bpf_filters(host.index, TC_INGRESS):
        problems.append(f"program {FROM_CONTAINER} is not attached to {status.host_ifname} (tc ingress)")
    if TO_CONTAINER not in plumber.nl.bpf_filters(host.index, TC_EGRESS):
        problems.append(f"program {TO_CONTAINER} is not attached to {status.host_ifname} (tc egress)")
    try:
        route = plumber.nl.route_get(status.pod_ip)
        if route.oif != host.index:
            problems.append(f"host route to {status.pod_ip} goes via {route.dev or 'nowhere'}, "
                            f"not {status.host_ifname}")
    except KernelError as exc:
        problems.append(f"host route to {status.pod_ip}: {exc}")
    return problems + _entry(plumber, pod, host.index)


def _entry(plumber: Plumber, pod: Pod, ifindex: int | None) -> list[str]:
    status = pod.status
    entry = plumber.endpoints.get(status.pod_ip)
    if entry is None:
        return [f"endpoint map entry for {status.pod_ip} is missing"]
    if entry.identity != status.identity or entry.endpoint_id != status.endpoint_id:
        return [f"endpoint map entry for {status.pod_ip} has identity {entry.identity}, endpoint "
                f"{entry.endpoint_id} (want {status.identity}, {status.endpoint_id})"]
    if ifindex is not None and entry.ifindex != ifindex:
        return [f"endpoint map entry for {status.pod_ip} points at ifindex {entry.ifindex}, not {ifindex}"]
    return []


def _pod_side(router_ip: str, pod: Pod, path: Path) -> list[str]:
    ifname, ip = pod.spec.interface, pod.status.pod_ip
    with PodNetlink(path) as nl:
        try:
            link = nl.link(ifname)
        except InterfaceNotFound:
            return [f"interface {ifname} is missing in {path}"]
        problems = []
        if not nl.is_up(link.index):
            problems.append(f"interface {ifname} is down in {path}")
        if f"{ip}/32" not in nl.addresses(link.index):
            problems.append(f"address {ip}/32 is missing on {ifname}")
        for dst, gateway, what in ((router_ip, "", f"route to the router {router_ip}"),
                                   (PROBE_DST, router_ip, f"default route via {router_ip}")):
            try:
                route = nl.route_get(dst)
            except KernelError:
                problems.append(f"{what} on {ifname} is missing")
                continue
            if route.oif != link.index or route.gateway != gateway:
                problems.append(f"{what} on {ifname} is missing")
        return problems
