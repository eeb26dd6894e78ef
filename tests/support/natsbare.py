"""A bare nats-server (no users, loopback, a free port) for tests of one component against
the real bus; stopped and reaped on close()."""
from __future__ import annotations

import subprocess

from services.runtime.natsserver import nats_server_binary, wait_listening
from tests.support.node import free_port


class BareNats:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening("127.0.0.1", self.port, 30, self.proc)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
