"""A private containerd for tests (own root, state and socket under a temp dir), for
`ctr run --cni`. ctr's --cni reads only the default CNI config directory, /etc/cni/net.d,
and uses the first network there by file name: install_network() puts one there that sorts
first, and remove_network() takes it away again."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

CNI_CONF_DIR = Path("/etc/cni/net.d")


class Containerd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.socket = workdir / "containerd.sock"
        (workdir / "config.toml").write_text(
            f'version = 2\nroot = "{workdir / "root"}"\nstate = "{workdir / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n')
        self.log = open(workdir / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(workdir / "config.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.env = {**os.environ, "CONTAINERD_ADDRESS": str(self.socket)}
        deadline = time.monotonic() + 60
        while self.ctr("version", check=False).returncode != 0:
            assert time.monotonic() < deadline and self.proc.poll() is None, "containerd did not start"
            time.sleep(0.2)
        self.conflist: Path | None = None

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ctr", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def install_network(self, name: str, text: str) -> None:
        CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
        first = sorted(p.name for p in CNI_CONF_DIR.iterdir())
        self.conflist = CNI_CONF_DIR / f"00-{name}.conflist"
        assert not first or self.conflist.name < first[0], f"{first[0]} would be ctr's network"
        self.conflist.write_text(text)

    def close(self) -> None:
        if self.conflist is not None:
            self.conflist.unlink(missing_ok=True)
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("task", "kill", "-s", "KILL", cid, check=False)
            self.ctr("task", "rm", "-f", cid, check=False)
            self.ctr("containers", "rm", cid, check=False)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", str(self.dir / "state")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
