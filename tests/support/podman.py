"""A private podman for tests: its own containers.conf, storage, run and network-config
directories under a temp dir (the machine's defaults are never touched), the CNI backend with
capillary's plugin, and a busybox image imported from the busybox-static binary."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.runtimes import busybox_tar

IMAGE = "localhost/capillary-busybox:test"


class Podman:
    def __init__(self, workdir: Path, plugin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")) -> None:
        self.dir = workdir
        self.net_dir = workdir / "net.d"
        for d in ("net.d", "root", "runroot", "tmp"):
            (workdir / d).mkdir(parents=True, exist_ok=True)
        (workdir / "containers.conf").write_text(
            "[containers]\n"
            # root here lacks CAP_SYS_RESOURCE: podman's default rlimits cannot be applied.
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{self.net_dir}"\n'
            f"cni_plugin_dirs = {json.dumps(list(plugin_dirs))}\n"
            "[engine]\n"
            # crun refuses this machine's hybrid cgroup layout; runc and cgroupfs work.
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{workdir / "tmp"}"\n')
        (workdir / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{workdir / "root"}"\nrunroot = "{workdir / "runroot"}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(workdir / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(workdir / "storage.conf")}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def import_busybox(self) -> None:
        proc = subprocess.run(["podman", "import", "-", IMAGE], input=busybox_tar(self.dir), capture_output=True,
                              env=self.env)
        assert proc.returncode == 0, proc.stderr.decode()

    def network(self, name: str, plugin: dict, version: str = "1.0.0") -> Path:
        path = self.net_dir / f"{name}.conflist"
        path.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": [plugin]}))
        return path

    def run(self, name: str, network: str, *cmd: str, labels: dict | None = None) -> str:
        args = ["run", "-d", "--name", name, "--network", network]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        return self(*args, IMAGE, *(cmd or ("sleep", "3600"))).stdout.strip()

    def netns(self, name: str) -> str:
        out = self("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name).stdout.strip()
        return out

    def close(self) -> None:
        self("rm", "-a", "-f", "-t", "0", check=False)
        self("rmi", "-a", "-f", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
