"""What the private container runtimes of the tests (podman.py, dockerd.py, containerd.py)
share: a busybox image's root filesystem, a daemon started with its log in its work
directory, and that daemon's shutdown (its mounts and work directory removed after)."""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# The busybox applets the tests' containers run.
APPLETS = ("sh", "ping", "ip", "nc", "sleep", "cat", "wget", "httpd", "echo", "ls", "mkdir", "timeout")


def busybox_tar(workdir: Path) -> bytes:
    """A tar stream of a root filesystem with the busybox-static binary and APPLETS linked to it."""
    rootfs = workdir / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").mkdir(exist_ok=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        link = rootfs / "bin" / applet
        if not link.is_symlink():
            link.symlink_to("busybox")
    return subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout


class Daemon:
    """A daemon process of a test's own, logging to WORKDIR/<name>.log."""

    def __init__(self, workdir: Path, name: str, argv: list[str]) -> None:
        self.dir = workdir
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                f"{what} did not start: {self.log_path.read_text(errors='replace')[-2000:]}"
            time.sleep(0.3)

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after TIMEOUT seconds; reaped either way."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def remove(self, *mounts: Path) -> None:
        """After stop(): close the log, unmount what the daemon left under MOUNTS, remove WORKDIR."""
        self.log.close()
        for mount in mounts:
            subprocess.run(["umount", "-R", str(mount)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
