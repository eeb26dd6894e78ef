"""A writable /proc/sys for the services: routed turns on ip_forward and the pods' host-side
veths get their IPv6 switch set. Docker mounts /proc/sys read-only in every container that
is not privileged; `--security-opt systempaths=unconfined` lifts that, but it is a client
option that Compose v1 cannot pass. With CAP_SYS_ADMIN (and no user namespace) the
container may remount its own view of /proc/sys writable, which is what that option does.
With network_mode: host these are the host's network sysctls, as in embedded mode.
"""
from __future__ import annotations

import ctypes
import os

PROC_SYS = "/proc/sys"
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096

_libc = ctypes.CDLL(None, use_errno=True)


def ensure_writable(path: str = PROC_SYS) -> bool:
    """Remount PATH read-write if it is read-only; True when it was remounted."""
    if not os.statvfs(path).f_flag & os.ST_RDONLY:
        return False
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(None, path.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot make {path} writable: {os.strerror(err)} "
                           "(the container needs CAP_SYS_ADMIN)")
    return True
