"""A private dockerd for tests: its own data root, exec root, pidfile and API socket (never
the machine's default socket), no iptables rules and no bridge; stopped and removed after.
restart() stops it and starts it again on the same data, as a dockerd restart does, with or
without live-restore (containers keep running while dockerd is down)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.runtimes import Daemon, busybox_tar

# Never the machine's default socket, and one of this test process's own (checkouts side by
# side run their docker tests at once); the variable names another.
SOCKET = os.environ.get("CAPILLARY_TEST_DOCKER_SOCKET", f"/run/capillary-test-docker-{os.getpid()}.sock")
IMAGE = "capillary-busybox:test"
START_TIMEOUT = 90


class Dockerd:
    def __init__(self, workdir: Path, live_restore: bool = False) -> None:
        self.dir = workdir
        self.host = f"unix://{SOCKET}"
        self.env = {**os.environ, "DOCKER_HOST": self.host}
        self.live_restore = live_restore
        self.daemon = self._start()

    def _start(self) -> Daemon:
        daemon = Daemon(self.dir, "dockerd", [
            "dockerd", "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
            "--pidfile", str(self.dir / "dockerd.pid"), "-H", self.host, "--iptables=false",
            "--ip-forward=false", "--ip-masq=false", "--bridge=none",
            *(["--live-restore"] if self.live_restore else [])])
        daemon.wait_ready(lambda: self("info", check=False).returncode == 0, START_TIMEOUT, "dockerd")
        return daemon

    def restart(self, live_restore: bool | None = None) -> None:
        """Stop dockerd (SIGTERM: without live-restore it stops its containers) and start it
        again on the same data, with LIVE_RESTORE from now on if given."""
        self.daemon.stop(timeout=60)
        self.daemon.log.close()
        if live_restore is not None:
            self.live_restore = live_restore
        self.daemon = self._start()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, cwd: Path | None = None,
                 program: str = "docker") -> subprocess.CompletedProcess:
        proc = subprocess.run([program, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=cwd)
        if check and proc.returncode != 0:
            raise AssertionError(f"{program} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def import_busybox(self) -> None:
        proc = subprocess.run(["docker", "import", "-", IMAGE], input=busybox_tar(self.dir), capture_output=True,
                              env=self.env)
        assert proc.returncode == 0, proc.stderr.decode()

    def netns(self, container: str) -> str:
        return self("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()

    def close(self) -> None:
        ids = self("ps", "-aq", check=False).stdout.split()
        if ids:
            self("rm", "-f", *ids, check=False)
        for net in self("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split():
            self("network", "rm", net, check=False)
        self.daemon.stop(timeout=60)
        self.daemon.remove(self.dir / "exec", self.dir / "data")
