"""A private dockerd for tests: its own data root, exec root, pidfile and API socket (never
the machine's default socket), no iptables rules and no bridge; stopped and removed after."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

# Never the machine's default socket; another run's tests can pick their own with the variable.
SOCKET = os.environ.get("CAPILLARY_TEST_DOCKER_SOCKET", "/run/capillary-test-docker.sock")
IMAGE = "capillary-busybox:test"


class Dockerd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.host = f"unix://{SOCKET}"
        self.env = {**os.environ, "DOCKER_HOST": self.host}
        self.log = open(workdir / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
             "--pidfile", str(workdir / "dockerd.pid"), "-H", self.host, "--iptables=false",
             "--ip-forward=false", "--ip-masq=false", "--bridge=none"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while self("info", check=False).returncode != 0:
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                f"dockerd did not start: {(workdir / 'dockerd.log').read_text()[-2000:]}"
            time.sleep(0.3)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, cwd: Path | None = None,
                 program: str = "docker") -> subprocess.CompletedProcess:
        proc = subprocess.run([program, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=cwd)
        if check and proc.returncode != 0:
            raise AssertionError(f"{program} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def import_busybox(self) -> None:
        rootfs = self.dir / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        (rootfs / "tmp").mkdir(exist_ok=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        for applet in ("sh", "ping", "ip", "sleep", "timeout", "wget", "cat", "echo", "httpd"):
            link = rootfs / "bin" / applet
            if not link.is_symlink():
                link.symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        proc = subprocess.run(["docker", "import", "-", IMAGE], input=tar, capture_output=True, env=self.env)
        assert proc.returncode == 0, proc.stderr.decode()

    def netns(self, container: str) -> str:
        return self("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()

    def close(self) -> None:
        ids = self("ps", "-aq", check=False).stdout.split()
        if ids:
            self("rm", "-f", *ids, check=False)
        for net in self("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split():
            self("network", "rm", net, check=False)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", str(self.dir / "exec")], capture_output=True)
        subprocess.run(["umount", "-R", str(self.dir / "data")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
