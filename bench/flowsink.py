"""A NATS subscriber that counts flows, for bench/flows.py: it speaks just enough of the
NATS client protocol (CONNECT, SUB, MSG, PING/PONG) to count messages at a few hundred
thousand per second, where a full client's parser would be the bottleneck being measured.

Every SAMPLE-th payload is decoded as a FlowEvent, so what is counted is known to be flows.
Prints "<count> <bytes> <bad>" every PERIOD seconds, and once more when stdin closes.

    python bench/flowsink.py CONTEXT_FILE SUBJECT
"""
from __future__ import annotations

import json
import select
import socket
import sys
import time
from urllib.parse import urlparse

from services.wire import codec
from services.wire.messages import FlowEvent, SchemaError

SAMPLE = 1000
PERIOD = 0.1


def connect(context: str, subject: str) -> socket.socket:
    creds = json.loads(open(context).read())
    url = urlparse(creds["url"])
    sock = socket.create_connection((url.hostname, url.port or 4222))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    options = {"verbose": False, "pedantic": False, "user": creds["user"], "pass": creds["password"],
               "name": "bench-flowsink", "protocol": 1, "lang": "python", "version": "0"}
    sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\n" +
                 f"SUB {subject} 1\r\nPING\r\n".encode())
    return sock


class Counter:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.count = self.bytes = self.bad = 0
        self.ready = False                  # the server answered our PING: SUB is in place

    def feed(self, chunk: bytes) -> None:
        buf = self.buf + chunk
        pos, end = 0, len(buf)
        while pos < end:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf.startswith(b"MSG ", pos):
                size = int(buf[buf.rfind(b" ", pos, eol) + 1:eol])
                if eol + 2 + size + 2 > end:
                    break                   # the payload is not all here yet
                self.count += 1
                self.bytes += size
                if self.count % SAMPLE == 1:
                    self._check(buf[eol + 2:eol + 2 + size])
                pos = eol + 2 + size + 2
                continue
            line = buf[pos:eol]
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif line == b"PONG":
                self.ready = True
            elif line.startswith(b"-ERR"):
                raise SystemExit(f"flowsink: server error {line.decode()}")
            pos = eol + 2
        self.buf = buf[pos:]

    def _check(self, payload: bytes) -> None:
        try:
            FlowEvent.from_wire(codec.decode(payload))
        except (ValueError, SchemaError):
            self.bad += 1


def main(context: str, subject: str) -> int:
    sock = connect(context, subject)
    counter = Counter(sock)
    next_report = time.monotonic()
    while True:
        readable, _, _ = select.select([sock, sys.stdin], [], [], PERIOD)
        if sock in readable:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("flowsink: the server closed the connection")
            counter.feed(chunk)
        if time.monotonic() >= next_report and counter.ready:
            print(counter.count, counter.bytes, counter.bad, flush=True)
            next_report = time.monotonic() + PERIOD
        if sys.stdin in readable and not sys.stdin.readline():
            print(counter.count, counter.bytes, counter.bad, flush=True)
            return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
