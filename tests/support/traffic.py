"""Real traffic between pods: echo servers inside pods, probes from pods or the host."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ECHO = str(Path(__file__).with_name("echo.py"))
PROBER = str(Path(__file__).with_name("prober.py"))


class Servers:
    """Echo servers (TCP+UDP) in each given netns; stopped (and reaped) on close()."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, netns: str, *ports: int) -> None:
        proc = subprocess.Popen(["nsenter", f"--net={netns}", "--", sys.executable, ECHO, "serve",
                                 *map(str, ports)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        self.procs.append(proc)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()


def probe(netns: str | None, proto: str, ip: str, port: int, sport: int = 0,
          timeout: float = 1.0) -> bool:
    """A real connection from NETNS (None: the host) to IP:PORT (from SPORT when given)."""
    argv = [sys.executable, ECHO, "probe", proto, ip, str(port), str(sport), str(timeout)]
    if netns:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0


def ping(netns: str | None, ip: str, count: int = 1) -> bool:
    argv = ["ping", "-c", str(count), "-W", "1", "-i", "0.2", ip]
    if netns:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
