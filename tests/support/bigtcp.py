"""Seeing BIG TCP on the wire: a transfer while tcpdump waits for the sender's TCP packets
longer than any packet without BIG TCP. tcpdump prints each as "IP bad-len 0": a BIG TCP
packet's IPv4 length field is 0."""
from __future__ import annotations

import subprocess
import time
from typing import Callable

BIG = 65600                  # bytes: longer than any packet without BIG TCP
IPERF_BYTES = "100M"


def big_packets_during(where: list[str], dev: str, src_ip: str, server: subprocess.Popen,
                       send: Callable[[], subprocess.CompletedProcess],
                       count: int = 3) -> tuple[subprocess.CompletedProcess, list[str]]:
    """SEND() (an iperf3 client, to SERVER, which is stopped afterwards) while tcpdump, run
    under the command prefix WHERE (a namespace's, or []), waits up to 30 s for COUNT of
    SRC_IP's TCP packets over 64 KiB on DEV: (SEND's result, the lines tcpdump printed)."""
    wire = subprocess.Popen([*where, "timeout", "30", "tcpdump", "-i", dev, "-nn", "-l", "-c", str(count),
                             f"src host {src_ip} and tcp and greater {BIG}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)                       # tcpdump and the server are listening
        result = send()
        seen = wire.communicate(timeout=40)[0]
    finally:
        wire.kill()
        server.kill()
        server.wait()
    return result, [line for line in seen.splitlines() if line.strip()]
