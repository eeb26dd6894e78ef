"""A private containerd for tests (own root, state and socket under a temp dir), for
`ctr run --cni`. ctr's --cni reads its networks only from /etc/cni/net.d (the first by file
name) and its plugins only from /opt/cni/bin: run_cni() runs ctr in a mount namespace of its
own where both are bind mounts of this containerd's directories, so the machine's are
never touched and a test's plugin is the one that runs."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.runtimes import Daemon

START_TIMEOUT = 60


class Containerd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.socket = workdir / "containerd.sock"
        self.net_dir = workdir / "net.d"
        self.net_dir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.toml").write_text(
            f'version = 2\nroot = "{workdir / "root"}"\nstate = "{workdir / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n')
        self.env = {**os.environ, "CONTAINERD_ADDRESS": str(self.socket)}
        self.daemon = Daemon(workdir, "containerd", ["containerd", "--config", str(workdir / "config.toml")])
        self.daemon.wait_ready(lambda: self.ctr("version", check=False).returncode == 0, START_TIMEOUT,
                               "containerd")

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ctr", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def network(self, name: str, text: str) -> None:
        (self.net_dir / f"{name}.conflist").write_text(text)

    def run_cni(self, plugin_dir: Path, *args: str) -> subprocess.Popen:
        """`ctr run --cni ARGS` with PLUGIN_DIR as its /opt/cni/bin and our networks as its
        /etc/cni/net.d (bind mounts in a mount namespace that only ctr and its plugins see)."""
        script = ('mount --bind "$1" /opt/cni/bin && mount --bind "$2" /etc/cni/net.d && shift 2 && '
                  'exec ctr run --cni "$@"')
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                 str(plugin_dir), str(self.net_dir), *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("task", "kill", "-s", "KILL", cid, check=False)
            self.ctr("task", "rm", "-f", cid, check=False)
            self.ctr("containers", "rm", cid, check=False)
        self.daemon.stop(timeout=30)
        self.daemon.remove(self.dir / "state")
