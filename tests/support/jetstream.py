"""A throwaway nats-server with JetStream, on loopback, for tests of the bus layer."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

from services.runtime.bus import Bus, Credentials
from services.runtime.natsserver import nats_server_binary, wait_listening
from tests.support.node import free_port


@contextmanager
def jetstream_server(workdir: Path):
    """Yield the URL of a running nats-server (no auth, file store under WORKDIR)."""
    port = free_port()
    log = open(workdir / "nats.log", "wb")
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
                             "-sd", str(workdir / "js")], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        wait_listening("127.0.0.1", port, 20, proc)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def connect(url: str, name: str = "test") -> Bus:
    return await Bus.connect(Credentials(url, "test", "test"), name=name, retry=False)
