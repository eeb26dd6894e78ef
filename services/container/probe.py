"""One NATS request over a plain socket, for healthchecks.

Docker runs a healthcheck as a new process every interval in each of the five
containers; with nats-py and the service runtime imported that costs ~0.25 s of CPU a
check, ~12% of a core for the node at a 5 s interval. This speaks the few lines of the
NATS protocol a request needs (CONNECT, SUB, PUB, then MSG or an error) and costs ~0.06 s.
With a TLS context the socket is upgraded after the server's INFO, as NATS clients do.
"""
from __future__ import annotations

import json
import secrets
import socket
import ssl
from urllib.parse import urlsplit


class ProbeError(Exception):
    pass


def _read_line(f) -> bytes:
    line = f.readline()
    if not line:
        raise ProbeError("the NATS server closed the connection")
    return line.rstrip(b"\r\n")


def _info(sock: socket.socket) -> dict:
    """The server's INFO line, read byte by byte (nothing past it: TLS may start there)."""
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ProbeError("the NATS server closed the connection")
        line += chunk
        if len(line) > 65536:
            raise ProbeError("not a NATS server")
    if not line.startswith(b"INFO "):
        raise ProbeError("not a NATS server")
    return json.loads(line[5:])


def request(url: str, user: str, password: str, subject: str, inbox_prefix: str,
            payload: bytes = b"", timeout: float = 3.0, sock: socket.socket | None = None,
            tls: ssl.SSLContext | None = None) -> bytes:
    """Send PAYLOAD on SUBJECT and return the reply's payload; errors raise ProbeError.
    With TLS the server's certificate is checked against the context's CA."""
    parts = urlsplit(url)
    if sock is None:
        try:
            sock = socket.create_connection((parts.hostname, parts.port or 4222), timeout=timeout)
        except OSError as exc:
            raise ProbeError(f"cannot connect to {url}: {exc.strerror or exc}") from None
    sock.settimeout(timeout)
    try:
        info = _info(sock)
        if info.get("tls_required") and tls is None:
            raise ProbeError(f"{url} requires TLS and the context names no CA")
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=parts.hostname)
    except (OSError, ValueError) as exc:
        sock.close()
        raise ProbeError(f"NATS connection failed: {exc}") from None
    inbox = f"{inbox_prefix}.probe{secrets.token_hex(6)}"
    connect = {"verbose": False, "pedantic": False, "user": user, "pass": password,
               "name": "capillary-healthcheck", "lang": "python", "version": "0", "protocol": 1,
               "headers": True, "no_responders": True}
    try:
        with sock, sock.makefile("rb") as f:
            sock.sendall(b"".join([
                b"CONNECT ", json.dumps(connect).encode(), b"\r\n",
                f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode(), payload,
                b"\r\nPING\r\n"]))
            return _await_reply(sock, f, subject)
    except socket.timeout:
        raise ProbeError(f"no answer on {subject} within {timeout:g}s") from None
    except OSError as exc:
        raise ProbeError(f"NATS connection failed: {exc}") from None


def _await_reply(sock: socket.socket, f, subject: str) -> bytes:
    while True:
        line = _read_line(f)
        if line == b"PING":
            sock.sendall(b"PONG\r\n")
        elif line.startswith(b"-ERR"):
            raise ProbeError(f"NATS: {line[5:].decode(errors='replace').strip()}")
        elif line.startswith(b"MSG "):
            size = int(line.split()[-1])
            return f.read(size + 2)[:size]
        elif line.startswith(b"HMSG "):
            # a message with headers: here only the server's "503 No Responders" status
            hdr_len, total = (int(x) for x in line.split()[-2:])
            data = f.read(total + 2)
            status = data[:hdr_len].split(b"\r\n", 1)[0].decode(errors="replace")
            if " 503" in status:
                raise ProbeError(f"nothing answers {subject}: is its service running?")
            return data[hdr_len:total]
        # +OK, PONG, INFO updates: nothing to do
