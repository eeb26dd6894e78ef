"""The only module that makes netlink calls (pyroute2). errno becomes domain errors.

Every operation is idempotent ("ensure"): calling it against a kernel that already has the
result is success, and deleting what is gone is success, so start-up resync and failure
unwinding can call them freely. All calls run on one worker thread (see Worker) because
namespace switches are per-thread.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from services.datapath import netns

T = TypeVar("T")

TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
BPF_FILTER_PRIO = 1
BPF_FILTER_HANDLE = 1
RT_SCOPE_LINK = 253
RTPROT_CAPILLARY = 193      # routes to other nodes' pod CIDRs (a protocol no routing daemon uses)


class InterfaceNotFound(LookupError):
    pass


class KernelError(OSError):
    """A netlink call the kernel refused, with what we were doing."""


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mac: str
    kind: str = ""


def _link(msg) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
    return Link(msg.get_attr("IFLA_IFNAME"), msg["index"], msg.get_attr("IFLA_ADDRESS"), kind)


DUMP_PATIENCE = 15.0     # seconds of retrying an interrupted dump before giving up


def _dump(call: Callable[[], T], patience: float = DUMP_PATIENCE) -> T:
    """Run a netlink dump again when the kernel says it was interrupted by a concurrent
    change (NLM_F_DUMP_INTR): a dump is only trustworthy when it ran undisturbed. Another
    process adding hundreds of links interrupts dump after dump, so retries back off."""
    deadline = time.monotonic() + patience
    pause = 0.005
    while time.monotonic() < deadline:
        try:
            return call()
        except NetlinkDumpInterrupted:
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
    return call()


def _kernel(what: str, exc: NetlinkError) -> KernelError:
    return KernelError(exc.code, f"{what}: {os.strerror(exc.code)}")


class Worker:
    """One thread for all netlink and netns work, so setns never leaks into other tasks."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class Route:
    dst: str
    gateway: str
    oif: int
    dev: str
    table: int
    kind: str

    def text(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.dev}" if self.dev else ""
        kind = "" if self.kind == "unicast" else f"{self.kind} "
        table = "" if self.table in (0, 254) else f" table {self.table}"
        return f"{kind}{self.dst}{via}{dev}{table}"


class _Links:
    """Link look-ups on one netlink socket (bound to the namespace it was opened in)."""

    ipr: IPRoute

    def close(self) -> None:
        self.ipr.close()

    def link(self, name: str) -> Link:
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise InterfaceNotFound(name)
        return _link(self.ipr.get_links(found[0])[0])

    def has_link(self, name: str) -> bool:
        return bool(self.ipr.link_lookup(ifname=name))

    def names(self) -> dict[int, str]:
        """Every link's name, by ifindex."""
        return {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in self.ipr.get_links()}

    def addresses(self, index: int) -> set[str]:
        """The IPv4 addresses on the link at INDEX, as ADDRESS/PREFIXLEN."""
        msgs = _dump(lambda: tuple(self.ipr.get_addr(family=2, index=index)))
        return {f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs}

    def is_up(self, index: int) -> bool:
        return bool(self.ipr.get_links(index)[0]["flags"] & 1)   # IFF_UP

    def route_get(self, dst: str, src: str | None = None, iif: int | None = None) -> Route:
        """The route the kernel picks for DST (as `ip route get DST [from SRC iif IIF]`):
        with IIF, the forwarding decision for a packet that arrived on IIF from SRC."""
        query: dict = {"dst": dst}
        if src:
            query["src"] = src
        if iif:
            query["iif"] = iif
        try:
            msg = self.ipr.route("get", **query)[0]
        except NetlinkError as exc:
            raise _kernel(f"route get {dst}", exc) from None
        oif = msg.get_attr("RTA_OIF")
        names = self.ipr.get_links(oif) if oif else []
        return Route(dst=dst, gateway=msg.get_attr("RTA_GATEWAY") or "", oif=oif or 0,
                     dev=names[0].get_attr("IFLA_IFNAME") if names else "", table=msg.get_attr("RTA_TABLE") or 0,
                     kind={1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable",
                           8: "prohibit"}.get(msg["type"], str(msg["type"])))


RP_FILTER_STRICT = "1"


def disable_ipv6(ifname: str) -> None:
    """No IPv6 on IFNAME (in the calling thread's namespace), where the kernel has IPv6."""
    conf = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if conf.exists():
        conf.write_text("1")


def set_rp_filter(ifname: str) -> None:
    """Strict reverse-path filtering on IFNAME: a packet is accepted only from a source whose
    route leads back out of IFNAME (the kernel applies the stricter of this and conf/all)."""
    Path(f"/proc/sys/net/ipv4/conf/{ifname}/rp_filter").write_text(RP_FILTER_STRICT)


# ---- IPv4 BIG TCP --------------------------------------------------------------------------
# The largest GSO packet a device builds for IPv4, and GRO makes (Linux 6.3). pyroute2 0.7 has
# no names for these link attributes, so they go as plain netlink messages.
RTM_NEWLINK, RTM_GETLINK, NLMSG_ERROR = 16, 18, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
IFLA_TSO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE = 59, 63, 64
BIG_TCP_SIZE = 196608        # 192 KiB, as Cilium's BIG TCP
_NLMSGHDR, _IFINFOMSG, _NLATTR = struct.Struct("=IHHII"), struct.Struct("=BxHiII"), struct.Struct("=HH")


def _rtnl(msg_type: int, flags: int, index: int, attrs: dict[int, int]) -> bytes:
    """One request about the link at INDEX (u32 ATTRS) on a fresh NETLINK_ROUTE socket of the
    calling thread's namespace; the kernel's answer, which an error raises as KernelError."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    body += b"".join(_NLATTR.pack(8, kind) + struct.pack("=I", value) for kind, value in attrs.items())
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0) + body)
        reply = sock.recv(65536)
    _, kind, *_ = _NLMSGHDR.unpack_from(reply)
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0]
        if code:
            raise KernelError(code, f"link {index}: {os.strerror(code)}")
    return reply


def _link_attrs(reply: bytes) -> dict[int, bytes]:
    """The attributes of one RTM_NEWLINK message, by type."""
    out, at = {}, _NLMSGHDR.size + _IFINFOMSG.size
    end = _NLMSGHDR.unpack_from(reply)[0]
    while at + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(reply, at)
        if length < _NLATTR.size:
            break
        out[kind & 0x3fff] = reply[at + _NLATTR.size:at + length]
        at += (length + 3) & ~3
    return out


def ipv4_gso_sizes(index: int) -> tuple[int, int]:
    """(gso_ipv4_max_size, tso_max_size) of the link at INDEX in the calling thread's
    namespace; (0, tso) where the kernel has no IPv4 BIG TCP."""
    attrs = _link_attrs(_rtnl(RTM_GETLINK, 0, index, {}))

    def u32(kind: int) -> int:
        return struct.unpack("=I", attrs[kind][:4])[0] if kind in attrs else 0
    return u32(IFLA_GSO_IPV4_MAX_SIZE), u32(IFLA_TSO_MAX_SIZE)


def set_ipv4_gso_max(index: int, size: int) -> None:
    """Let the link at INDEX (calling thread's namespace) build and take IPv4 GSO/GRO packets
    of up to SIZE bytes: BIG TCP above 65,536. KernelError when the kernel refuses (EINVAL:
    beyond the device's tso_max_size) or has no IPv4 BIG TCP (EOPNOTSUPP)."""
    _rtnl(RTM_NEWLINK, NLM_F_ACK, index, {IFLA_GSO_IPV4_MAX_SIZE: size, IFLA_GRO_IPV4_MAX_SIZE: size})
    now, tso = ipv4_gso_sizes(index)
    if now != size:
        raise KernelError(errno.EOPNOTSUPP, f"link {index}: gso_ipv4_max_size is {now or 'unknown'} after setting "
                                            f"{size} (IPv4 BIG TCP needs Linux 6.3; tso_max_size {tso})")


class Netlink(_Links):
    """Host-namespace netlink operations."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    # ---- links ---------------------------------------------------------------------------

    def delete_veth(self, name: str) -> bool:
        """Delete NAME if it is a veth; anything else of that name is left alone."""
        try:
            link = self.link(name)
        except InterfaceNotFound:
            return False
        if link.kind != "veth":
            return False
        self.delete_link(name)
        return True

    def links_with_prefix(self, prefix: str) -> dict[str, int]:
        out = {}
        for msg in _dump(lambda: tuple(self.ipr.get_links())):
            name = msg.get_attr("IFLA_IFNAME")
            if name.startswith(prefix):
                out[name] = msg["index"]
        return out

    def delete_link(self, name: str) -> None:
        try:
            self.ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise _kernel(f"delete {name}", exc) from None

    def create_veth_into(self, host: str, peer: str, netns_path: Path) -> Link:
        """Create HOST here with its PEER already inside the namespace at NETNS_PATH."""
        fd = os.open(netns_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": fd})
        except NetlinkError as exc:
            raise _kernel(f"create veth {host}", exc) from None
        finally:
            os.close(fd)
        link = self.link(host)
        self._tune_host_veth(link)
        return link

    def create_veth(self, host: str, peer: str) -> tuple[Link, Link]:
        """Create HOST with its PEER, both in this namespace (PEER down, to be moved away)."""
        try:
            self.ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer})
        except NetlinkError as exc:
            raise _kernel(f"create veth {host}", exc) from None
        link = self.link(host)
        self._tune_host_veth(link)
        return link, self.link(peer)

    def _tune_host_veth(self, link: Link) -> None:
        # Host-side veths carry only pod traffic: no IPv6 autoconfiguration chatter on them
        # (the datapath drops IPv6 anyway), and strict reverse-path filtering, so the kernel
        # too refuses a source the device's own /32 route does not lead back to.
        disable_ipv6(link.name)
        set_rp_filter(link.name)

    def set_up(self, index: int, mtu: int = 0) -> None:
        """Bring the link at INDEX up (with MTU first, when not 0)."""
        if mtu:
            self.ipr.link("set", index=index, mtu=mtu)
        self.ipr.link("set", index=index, state="up")

    def ensure_veth_pair(self, name: str, peer: str) -> tuple[Link, Link]:
        """A veth pair NAME <-> PEER in this namespace, both up."""
        try:
            existing = self.link(name)
            if existing.kind != "veth":
                raise KernelError(errno.EEXIST, f"{name} exists and is a {existing.kind or 'non-veth'} "
                                                "device, not our veth: choose another datapath.routerDevice")
        except InterfaceNotFound:
            self.delete_link(peer)
            try:
                self.ipr.link("add", ifname=name, kind="veth", peer=peer)
            except NetlinkError as exc:
                raise _kernel(f"create veth {name}", exc) from None
        a, b = self.link(name), self.link(peer)
        self.set_up(a.index)
        self.set_up(b.index)
        return a, b

    def ensure_vxlan(self, name: str, port: int) -> Link:
        """A collect-metadata (external) VXLAN device NAME on UDP PORT, up: which node a
        packet goes to, and its VNI, come with each packet (bpf_skb_set_tunnel_key), not
        from the device. A device of that name with other settings is made again."""
        if self.has_link(name):
            existing = self.link(name)
            if existing.kind != "vxlan":
                raise KernelError(errno.EEXIST, f"{name} exists and is a {existing.kind or 'non-vxlan'} "
                                                "device, not our VXLAN device")
            if not self._is_external_vxlan(existing.index, port):
                self.delete_link(name)
        if not self.has_link(name):
            try:
                self.ipr.link("add", ifname=name, kind="vxlan", vxlan_collect_metadata=1, vxlan_port=port,
                              vxlan_learning=0)
            except NetlinkError as exc:
                raise _kernel(f"create vxlan {name}", exc) from None
        link = self.link(name)
        disable_ipv6(name)
        self.set_up(link.index)
        return link

    def _is_external_vxlan(self, index: int, port: int) -> bool:
        data = self.ipr.get_links(index)[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        return bool(data.get_attr("IFLA_VXLAN_COLLECT_METADATA")) and data.get_attr("IFLA_VXLAN_PORT") == port

    def mtu(self, index: int) -> int:
        return self.ipr.get_links(index)[0].get_attr("IFLA_MTU")

    def link_of_address(self, ip: str) -> Link:
        """The link holding the IPv4 address IP; InterfaceNotFound when none does."""
        for msg in _dump(lambda: tuple(self.ipr.get_addr(family=2))):
            if msg.get_attr("IFA_ADDRESS") == ip:
                return _link(self.ipr.get_links(msg["index"])[0])
        raise InterfaceNotFound(f"no link holds {ip}")

    # ---- addresses and routes ---------------------------------------------------------

    def ensure_address(self, index: int, ip: str, prefixlen: int) -> None:
        try:
            self.ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _kernel(f"add address {ip}/{prefixlen}", exc) from None

    def replace_route(self, dst: str, oif: int, gateway: str | None = None,
                      prefsrc: str | None = None, scope: int | None = None) -> None:
        kwargs: dict = {"dst": dst, "oif": oif}
        if gateway:
            kwargs["gateway"] = gateway
        if prefsrc:
            kwargs["prefsrc"] = prefsrc
        if scope is not None:
            kwargs["scope"] = scope
        try:
            self.ipr.route("replace", **kwargs)
        except NetlinkError as exc:
            raise _kernel(f"route {dst}", exc) from None

    def delete_route(self, dst: str) -> None:
        try:
            self.ipr.route("del", dst=dst)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise _kernel(f"delete route {dst}", exc) from None

    def replace_cluster_route(self, dst: str, gateway: str) -> None:
        """DST (another node's pod CIDR) via GATEWAY (that node's underlay address)."""
        try:
            self.ipr.route("replace", dst=dst, gateway=gateway, proto=RTPROT_CAPILLARY)
        except NetlinkError as exc:
            raise _kernel(f"route {dst} via {gateway}", exc) from None

    def cluster_routes(self) -> dict[str, str]:
        """dst/prefix -> gateway of the routes replace_cluster_route made."""
        out = {}
        for msg in _dump(lambda: tuple(self.ipr.get_routes(family=2, table=254, proto=RTPROT_CAPILLARY))):
            if msg["proto"] == RTPROT_CAPILLARY and msg.get_attr("RTA_DST"):
                out[f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"] = msg.get_attr("RTA_GATEWAY")
        return out

    def local_ipv4(self) -> set[str]:
        """Every IPv4 address configured in this namespace."""
        return {msg.get_attr("IFA_ADDRESS") for msg in _dump(lambda: tuple(self.ipr.get_addr(family=2)))}

    def routes_in(self, network: ipaddress.IPv4Network) -> list[tuple[str, int]]:
        """(dst/prefix, oif) of main-table routes inside NETWORK."""
        out = []
        for msg in _dump(lambda: tuple(self.ipr.get_routes(family=2, table=254))):
            dst = msg.get_attr("RTA_DST")
            if dst is None:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}")
            if net.subnet_of(network):
                out.append((str(net), msg.get_attr("RTA_OIF")))
        return out

    # ---- tc / BPF ---------------------------------------------------------------------------

    def attach_bpf(self, index: int, prog_fd: int, name: str, parent: str = TC_INGRESS) -> None:
        """Attach (or atomically replace) our direct-action program at PARENT of INDEX."""
        try:
            self.ipr.tc("add", "clsact", index)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _kernel(f"add clsact on ifindex {index}", exc) from None
        args = dict(handle=BPF_FILTER_HANDLE, fd=prog_fd, name=name, parent=parent,
                    prio=BPF_FILTER_PRIO, classid=1, direct_action=True)
        try:
            self.ipr.tc("replace-filter", "bpf", index, **args)
        except NetlinkError as exc:
            if exc.code != errno.EINVAL:
                raise _kernel(f"attach {name} on ifindex {index}", exc) from None
            # A filter at our priority that replace cannot take over (another protocol):
            # remove it and add ours. Only an upgrade from an incompatible layout gets here.
            try:
                self.ipr.tc("del-filter", "bpf", index, parent=parent, info=BPF_FILTER_PRIO << 16)
                self.ipr.tc("add-filter", "bpf", index, **args)
            except NetlinkError as exc2:
                raise _kernel(f"attach {name} on ifindex {index}", exc2) from None

    def detach_bpf(self, index: int, parent: str = TC_INGRESS) -> None:
        """Our program at PARENT of INDEX removed; none there (or no clsact) is success."""
        try:
            self.ipr.tc("del-filter", "bpf", index, parent=parent, info=BPF_FILTER_PRIO << 16)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise _kernel(f"detach the program on ifindex {index}", exc) from None

    def bpf_filters(self, index: int, parent: str = TC_INGRESS) -> list[str]:
        """Names of the BPF programs attached at PARENT of INDEX."""
        try:
            msgs = _dump(lambda: tuple(self.ipr.get_filters(index=index, parent=parent)))
        except NetlinkError:
            return []
        names = []
        for msg in msgs:
            opts = msg.get_attr("TCA_OPTIONS")
            if opts is not None and opts.get_attr("TCA_BPF_NAME"):
                names.append(opts.get_attr("TCA_BPF_NAME"))
        return names


class PodNetlink(_Links):
    """Netlink inside one pod's namespace. Use as a context manager on the worker thread."""

    def __init__(self, netns_path: Path | str) -> None:
        self.netns_path = netns_path
        with netns.entered(netns_path):
            self.ipr = IPRoute()   # the socket stays bound to the pod's namespace

    def __enter__(self) -> "PodNetlink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def configure(self, ifname: str, ip: str, router_ip: str, mtu: int = 0, gso_max: int = 0) -> Link:
        """lo up; IP/32 on IFNAME, up, without IPv6 (the datapath drops it: the pod need
        not send it); ROUTER_IP on-link; default route via ROUTER_IP. MTU and GSO_MAX (the
        IPv4 GSO/GRO size, BIG TCP) are set on IFNAME when not 0."""
        lo = self.ipr.link_lookup(ifname="lo")[0]
        self.ipr.link("set", index=lo, state="up")
        link = self.link(ifname)
        if mtu:
            self.ipr.link("set", index=link.index, mtu=mtu)
        with netns.entered(self.netns_path):
            disable_ipv6(ifname)
            if gso_max:
                set_ipv4_gso_max(link.index, gso_max)
        try:
            self.ipr.addr("add", index=link.index, address=ip, prefixlen=32)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _kernel(f"add {ip} in pod", exc) from None
        self.ipr.link("set", index=link.index, state="up")
        self.ipr.route("replace", dst=f"{router_ip}/32", oif=link.index, scope=RT_SCOPE_LINK)
        self.ipr.route("replace", dst="0.0.0.0/0", gateway=router_ip, oif=link.index)
        return link
