"""One real probe packet for `capillary walk`, sent from inside a pod's network namespace:

    nsenter --net=NETNS python -m services.cli.probe tcp|udp|icmp DST_IP PORT TIMEOUT

Prints two JSON lines: first, before sending, the source port (TCP/UDP) or echo identifier
(ICMP) it will use, so the caller can follow the probe's flows; then the outcome as the pod
saw it:
  answered     the destination answered: TCP handshake done, UDP reply, ICMP echo reply
  refused      the destination's stack refused it (TCP RST, ICMP port unreachable): the
               packet was delivered, nothing listens
  unreachable  an ICMP error from the path (no route, host unreachable)
  timeout      no answer within TIMEOUT seconds (dropped, or nobody answers a UDP datagram)
"""
from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import sys
import time

UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH)
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0


def announce(sport: int) -> None:
    print(json.dumps({"sport": sport}), flush=True)


def outcome(attempt) -> str:
    """What the pod saw when it ran ATTEMPT (a callable that sends and waits for the answer)."""
    try:
        attempt()
        return "answered"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return "unreachable" if exc.errno in UNREACHABLE else f"error: {exc.strerror}"


def tcp(dst: str, port: int, timeout: float) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        sport = s.getsockname()[1]
        announce(sport)
        s.settimeout(timeout)
        result = outcome(lambda: s.connect((dst, port)))
    return {"sport": sport, "outcome": result}


def udp(dst: str, port: int, timeout: float) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        sport = s.getsockname()[1]
        announce(sport)
        s.connect((dst, port))               # connected: ICMP errors come back as errno
        s.settimeout(timeout)
        result = outcome(lambda: (s.send(b"capillary walk probe\n"), s.recv(2048)))
    return {"sport": sport, "outcome": result}


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp(dst: str, timeout: float) -> dict:
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!HH", ident, 1) + b"capillary walk"
    header = struct.pack("!BBH", ICMP_ECHO, 0, 0) + body
    packet = struct.pack("!BBH", ICMP_ECHO, 0, checksum(header)) + body
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        announce(ident)
        s.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, (src, _) = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid = struct.unpack_from("!BBHH", data, ihl)
            if src == dst and kind == ICMP_ECHOREPLY and rid == ident:
                return {"sport": ident, "outcome": "answered"}
            if kind == 3 and len(data) >= ihl + 8 + 20 + 8:     # an error about our request
                inner = data[ihl + 8:]
                inner_ihl = (inner[0] & 0x0F) * 4
                if struct.unpack_from("!H", inner, inner_ihl + 4)[0] == ident:
                    return {"sport": ident, "outcome": "unreachable"}
    return {"sport": ident, "outcome": "timeout"}


def main(argv: list[str]) -> int:
    proto, dst, port, timeout = argv[0], argv[1], int(argv[2]), float(argv[3])
    began = time.monotonic()
    if proto == "tcp":
        result = tcp(dst, port, timeout)
    elif proto == "udp":
        result = udp(dst, port, timeout)
    elif proto == "icmp":
        result = icmp(dst, timeout)
    else:
        print(json.dumps({"error": f"unknown protocol {proto!r}"}))
        return 2
    result["seconds"] = round(time.monotonic() - began, 6)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
