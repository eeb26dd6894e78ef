"""Network namespaces by path, without forking: create, remove, enter for one thread.

setns(2) with CLONE_NEWNET changes only the calling thread, so callers run these from the
one netlink worker thread (services.datapath.netlink.Worker) and always switch back.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETNS_RUN_DIR = Path("/run/netns")

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


def is_netns(path: Path) -> bool:
    """True when PATH is a network namespace file (a bind mount or /proc/PID/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                return False
            setns(home)
            return True
        finally:
            os.close(home)
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(path: Path | str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at PATH."""
    try:
        fd = os.open(path, os.O_RDONLY)
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
