"""Connection load that bench/footprint.py runs inside a pod (nsenter --net): new TCP
connections to IP:PORT, up to INFLIGHT at once, for SECONDS; each from a new source port, so
each is a new flow for the datapath (conntrack entry, policy lookup, trace events).
Prints "done CONNECTED FAILED".

    python connload.py IP PORT SECONDS [--inflight 32]

The server is `synprobe.py serve PORT` (accept and close at once).
"""
from __future__ import annotations

import argparse
import selectors
import socket
import struct
import sys
import time

ABORT = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close sends RST, leaves no TIME_WAIT


def load(address: tuple[str, int], seconds: float, inflight: int) -> tuple[int, int]:
    sel = selectors.DefaultSelector()
    connected = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(sel.get_map()) < inflight:
            sock = socket.socket()
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
            sock.connect_ex(address)
            sel.register(sock, selectors.EVENT_WRITE)
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
            else:
                failed += 1
            sel.unregister(sock)
            sock.close()
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()
    return connected, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args()
    connected, failed = load((args.ip, args.port), args.seconds, args.inflight)
    print(f"done {connected} {failed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
