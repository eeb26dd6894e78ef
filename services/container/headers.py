"""Kernel headers where bcc looks for them: /lib/modules/$(uname -r)/{build,source}.

In order of preference: the running kernel's own headers (the host's /lib/modules and
/usr/src mounted into the container), the kernel's built-in /sys/kernel/kheaders.tar.xz
(bcc unpacks it itself), else the Debian headers the image carries, linked as
scripts/setup.sh links them on a host. bcc's tc programs use UAPI structures only, which
is why headers of another kernel version serve.
"""
from __future__ import annotations

import os
from pathlib import Path

KHEADERS = Path("/sys/kernel/kheaders.tar.xz")


class HeadersError(RuntimeError):
    pass


def _image_headers(src: Path) -> tuple[Path, Path]:
    common = sorted(src.glob("linux-headers-*-common"))
    build = sorted(p for p in src.glob("linux-headers-*") if not p.name.endswith("-common"))
    if not common or not build:
        raise HeadersError(f"no kernel headers under {src} and none for the running kernel")
    return build[-1], common[-1]


def ensure(release: str | None = None, modules: Path = Path("/lib/modules"),
           src: Path = Path("/usr/src"), kheaders: Path = KHEADERS) -> str:
    """Make headers available for RELEASE (default: the running kernel); say which."""
    release = release or os.uname().release
    mod = modules / release
    if (mod / "build" / "include").is_dir():
        return f"kernel headers: {os.path.realpath(mod / 'build')}"
    if kheaders.exists():
        return f"kernel headers: {kheaders}"
    build, common = _image_headers(src)
    try:
        mod.mkdir(parents=True, exist_ok=True)
        for name, target in (("build", build), ("source", common)):
            link = mod / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    except OSError as exc:
        raise HeadersError(f"cannot link kernel headers into {mod}: {exc.strerror} "
                           f"(a read-only /lib/modules must hold {release}/build)") from None
    return f"kernel headers: {build} (linked for {release})"
