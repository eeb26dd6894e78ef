"""A TCP prober that bench/policy.py runs inside a pod (nsenter --net): a fresh connection
attempt every INTERVAL, each from a new socket and so a new source port (a SYN that no
conntrack entry has seen), until the state it waits for shows.

    python synprobe.py allowed|denied IP PORT [--interval S] [--timeout S] [--deadline S]
    python synprobe.py serve PORT...  # accept and close at once, until killed; prints "ready"

  allowed  prints "ready T" once an attempt went unanswered for TIMEOUT (the port is denied
           now), then "allowed SENT DONE N" at the first connection that completes
  denied   prints "ready T" at the first connection that completes (allowed now), then
           "denied SENT N" once an attempt went unanswered for TIMEOUT
SENT/DONE/T are time.monotonic(): CLOCK_MONOTONIC is one clock for every network namespace,
so the caller compares them with its own. N is the attempts made. Exit 0 on the awaited
state, 1 on DEADLINE, 2 when the awaited state came before "ready", 3 on a refused connection.

The server side is `serve`, not a thread-per-connection echo server: with a connection a
millisecond and policyd busy on both CPUs, a small accept backlog overflows, and a SYN
dropped there would look like a policy drop.
"""
from __future__ import annotations

import argparse
import errno
import selectors
import socket
import struct
import sys
import time

ABORT = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close sends RST, leaves no TIME_WAIT


def say(line: str) -> None:
    print(line, flush=True)


def probe(want: str, address: tuple[str, int], interval: float, timeout: float, deadline: float) -> int:
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, float] = {}          # insertion order = send order
    ready = False
    attempts = 0
    next_send = time.monotonic()
    end = next_send + deadline
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            sock = socket.socket()
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
            sock.connect_ex(address)                  # EINPROGRESS: the SYN is on its way
            pending[sock] = time.monotonic()
            sel.register(sock, selectors.EVENT_WRITE)
            attempts += 1
            next_send = max(next_send + interval, now)
        for key, _ in sel.select(timeout=max(0.0, next_send - time.monotonic())):
            done = time.monotonic()
            sock = key.fileobj
            sent = pending.pop(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sel.unregister(sock)
            sock.close()
            if err == errno.ECONNREFUSED:
                say(f"refused {sent:.6f}")
                return 3
            if err not in (0, errno.ECONNRESET):      # reset: the handshake got through first
                continue                              # e.g. unreachable: neither state
            if want == "allowed":
                if not ready:
                    say("error: a connection completed before the port was seen denied")
                    return 2
                say(f"allowed {sent:.6f} {done:.6f} {attempts}")
                return 0
            if not ready:
                ready = True
                say(f"ready {done:.6f}")
        now = time.monotonic()
        for sock, sent in list(pending.items()):
            if now - sent < timeout:
                break                                 # the rest were sent later
            sel.unregister(sock)
            sock.close()
            del pending[sock]
            if want == "denied":
                if not ready:
                    say("error: an attempt went unanswered before the port was seen allowed")
                    return 2
                say(f"denied {sent:.6f} {attempts}")
                return 0
            if not ready:
                ready = True
                say(f"ready {now:.6f}")
    say("timeout")
    return 1


def serve(ports: list[int]) -> int:
    sel = selectors.DefaultSelector()
    for port in ports:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4096)
        sel.register(listener, selectors.EVENT_READ)
    say("ready")
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            conn.close()                              # a FIN: the client's connect() has succeeded


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        return serve([int(p) for p in sys.argv[2:]])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("want", choices=("allowed", "denied"))
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between attempts")
    parser.add_argument("--timeout", type=float, default=0.1, help="no answer after this: denied")
    parser.add_argument("--deadline", type=float, default=10.0, help="give up after this")
    args = parser.parse_args()
    return probe(args.want, (args.ip, args.port), args.interval, args.timeout, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
