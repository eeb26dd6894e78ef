"""Network namespaces by path, without forking: create, remove, enter for one thread.

setns(2) with CLONE_NEWNET changes only the calling thread, so callers run these from the
one netlink worker thread (services.datapath.netlink.Worker) and always switch back.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETNS_RUN_DIR = Path("/run/netns")
RTF_UP, RTF_GATEWAY = 0x1, 0x2           # route flags (linux/route.h)
NSFS_MAGIC = 0x6E736673          # statfs f_type of namespace files (linux/magic.h)
NS_GET_NSTYPE = 0xB703           # _IO(0xb7, 0x3), linux/nsfs.h
NS_TYPES = {0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
            0x10000000: "user", 0x20000000: "pid", CLONE_NEWNET: "network", 0x00000080: "time"}
# The namespaces that are the host's own: this process's (and thread's), which must be
# readable, and pid 1's, where this process may see it (a sandbox may hide pid 1).
OWN_NETNS = ("/proc/self/ns/net", "/proc/thread-self/ns/net")
INIT_NETNS = "/proc/1/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    pass


def _check(rc: int, what: str, path: os.PathLike | str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{what} {path}: {os.strerror(err)}")


def _share_run_dir() -> None:
    """Make /run/netns a shared mount, as `ip netns add` does, so bind mounts propagate."""
    NETNS_RUN_DIR.mkdir(parents=True, exist_ok=True)
    d = str(NETNS_RUN_DIR).encode()
    if _libc.mount(b"none", d, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), "bind", NETNS_RUN_DIR)
    _check(_libc.mount(b"none", d, b"none", MS_SHARED | MS_REC, None), "share", NETNS_RUN_DIR)


def setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns", f"fd {fd}")


def create(name: str) -> Path:
    """Create /run/netns/NAME holding a new, empty network namespace."""
    _share_run_dir()
    path = NETNS_RUN_DIR / name
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare for", path)
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None),
                   "bind", path)
        finally:
            setns(home)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(home)
    return path


def remove(path: Path) -> None:
    """Remove a namespace made by create(); already gone is success."""
    _libc.umount2(str(path).encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class NotAPodNetns(ValueError):
    """A path that must not be a pod's network namespace; the message says why."""


def _fs_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)        # struct statfs; f_type is its first field
    _check(_libc.fstatfs(fd, buf), "statfs", f"fd {fd}")
    return ctypes.c_long.from_buffer(buf).value


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a regular file"


def _host_netns() -> set[tuple[int, int]]:
    found = {(h.st_dev, h.st_ino) for h in map(os.stat, OWN_NETNS)}
    with contextlib.suppress(PermissionError):
        init = os.stat(INIT_NETNS)
        found.add((init.st_dev, init.st_ino))
    return found


def _open_pod_netns(path: Path | str) -> int:
    """A read-only fd of the network namespace at PATH, once it is shown to be a network
    namespace file (a bind mount of one, or /proc/PID/ns/net) other than the host's; raise
    NotAPodNetns otherwise. Never blocks: the path is opened with O_PATH, which neither opens
    a FIFO nor a device, and the namespace is reopened for reading through that same fd only
    once statfs has shown a namespace file."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise NotAPodNetns(f"{path} is not a network namespace ({exc.strerror})") from None
    ns = -1
    try:
        st = os.fstat(fd)
        if _fs_type(fd) != NSFS_MAGIC:
            raise NotAPodNetns(f"{path} is not a network namespace ({_kind(st.st_mode)})")
        ns = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        kind = fcntl.ioctl(ns, NS_GET_NSTYPE)
        if kind != CLONE_NEWNET:
            raise NotAPodNetns(f"{path} is not a network namespace (a {NS_TYPES.get(kind, hex(kind))} namespace)")
        if (st.st_dev, st.st_ino) in _host_netns():
            raise NotAPodNetns(f"{path} is the host's own network namespace")
        ns, checked = -1, ns
        return checked
    except OSError as exc:
        raise NotAPodNetns(f"{path} cannot be checked ({exc.strerror})") from None
    finally:
        os.close(fd)
        if ns >= 0:
            os.close(ns)


def check_pod_netns(path: Path | str) -> None:
    """Raise NotAPodNetns unless PATH may be a pod's network namespace (see _open_pod_netns)."""
    os.close(_open_pod_netns(path))


@contextlib.contextmanager
def pinned_pod_netns(path: Path | str) -> Iterator[Path]:
    """Check PATH as check_pod_netns does and yield a path to exactly the namespace that was
    checked (/proc/self/fd/N of an fd held for the body). Whatever later replaces or unmounts
    PATH, work done through the yielded path reaches the checked namespace, never another."""
    fd = _open_pod_netns(path)
    try:
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def is_netns(path: Path | str) -> bool:
    """True when PATH may be a pod's network namespace (see check_pod_netns)."""
    try:
        check_pod_netns(path)
    except NotAPodNetns:
        return False
    return True


@contextlib.contextmanager
def entered(path: Path | str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at PATH."""
    try:   # O_NONBLOCK: a FIFO put in a namespace's place must not hang the netlink thread
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(exc.errno or errno.ENOENT, f"cannot open netns {path}: {exc.strerror}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(fd)
        os.close(home)


ROUTE_TABLE = "/proc/thread-self/net/route"     # the IPv4 main table of this thread's netns


def default_gateway(path: Path | str, ifname: str) -> str | None:
    """The gateway of the IPv4 default route through IFNAME in the namespace at PATH, or
    None when it has none. Read from the kernel's route table in /proc, not over netlink,
    so a short-lived process (the CNI plugin) needs no netlink library to ask."""
    with entered(path):
        with open(ROUTE_TABLE) as table:
            return gateway_in_table(table.read(), ifname)


def gateway_in_table(text: str, ifname: str) -> str | None:
    """The default route's gateway through IFNAME in TEXT, a /proc/net/route table."""
    for row in (line.split() for line in text.splitlines()[1:]):
        # Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
        iface, (dst, gateway, flags, mask) = row[0], (int(row[i], 16) for i in (1, 2, 3, 7))
        if iface == ifname and dst == 0 and mask == 0 and flags & RTF_UP and flags & RTF_GATEWAY:
            return socket.inet_ntoa(gateway.to_bytes(4, sys.byteorder))   # stored in network order
    return None
