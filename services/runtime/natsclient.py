"""Request/reply over NATS with a blocking socket, for a one-shot client that must start fast.

The CNI plugin runs once per command, and its start-up is part of every ADD: nats-py and
asyncio cost more to import than the rest of the plugin together. This speaks the NATS
client protocol (https://docs.nats.io/reference/reference-protocols/nats-protocol) itself,
for exactly what such a client needs and no more: one connection (TLS when the context says
so, user and password), and requests answered on the user's own inbox prefix, one at a
time. No reconnect, no subscriptions of its own beyond the inbox, no JetStream: anything
longer-lived uses services.runtime.bus.

Fail closed: every wait has a deadline, a reply to an earlier (timed-out) request is never
taken for this one's, and a server error, a lost connection or a malformed frame ends the
connection with NatsFailure.
"""
from __future__ import annotations

import json
import os
import socket
import time

CRLF = b"\r\n"
MAX_CONTROL_LINE = 4096          # nats-server's own limit on a protocol line
NO_RESPONDERS = b"503"           # the status a server sends when nobody subscribes to a request


class NatsFailure(Exception):
    """The request could not be done: no connection, refused, timed out or no responder.

    ``reason``: "connect", "auth", "timeout", "no_responders", "permission" or "protocol"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def split_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of nats://HOST:PORT or tls://HOST:PORT."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("nats", "tls"):
        raise NatsFailure("connect", f"{url!r} is not a nats:// or tls:// URL")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon:
        host, port = rest.rstrip("/"), "4222"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise NatsFailure("connect", f"{url!r}: bad port")
    return host.strip("[]"), int(port), scheme == "tls"


class NatsClient:
    """One connection as USER; request() sends and waits for the one reply."""

    def __init__(self, sock: socket.socket, inbox: str, max_payload: int) -> None:
        self.sock = sock
        self.inbox = inbox
        self.max_payload = max_payload
        self.buf = b""
        self.sent = 0
        self.deadline = 0.0           # every read waits until then at most

    @classmethod
    def connect(cls, url: str, user: str, password: str, inbox_prefix: str, name: str,
                timeout: float, tls=None) -> "NatsClient":
        """Connect and authenticate; TLS: an ssl.SSLContext (required for tls:// URLs)."""
        host, port, tls_url = split_url(url)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise NatsFailure("connect", f"cannot connect to NATS at {url}: {exc}") from None
        client = cls(sock, f"{inbox_prefix}.{os.urandom(11).hex()}", 1024 * 1024)
        try:
            client._handshake(url, host, user, password, name, timeout, tls, tls_url)
        except TimeoutError:
            client.close()
            raise NatsFailure("connect", f"NATS at {url} did not complete the handshake within {timeout:g}s") \
                from None
        except BaseException:
            client.close()
            raise
        return client

    def _handshake(self, url, host, user, password, name, timeout, tls, tls_url) -> None:
        self.deadline = time.monotonic() + timeout
        line = self._line()
        try:
            info = json.loads(line[5:]) if line.startswith(b"INFO ") else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise NatsFailure("protocol", f"{url} did not greet as a NATS server: {line[:80]!r}")
        self.max_payload = int(info.get("max_payload", self.max_payload))
        if info.get("tls_required") or tls_url or tls is not None:
            if tls is None:
                raise NatsFailure("connect", f"{url} requires TLS and the context names no CA")
            try:
                self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
                self.sock = tls.wrap_socket(self.sock, server_hostname=host)
            except OSError as exc:
                raise NatsFailure("connect", f"TLS with {url} failed: {exc}") from None
        options = {"verbose": False, "pedantic": False, "user": user, "pass": password, "name": name,
                   "lang": "python-sync", "version": "1", "protocol": 1, "headers": True,
                   "no_responders": True, "tls_required": tls is not None}
        self._send(b"CONNECT " + json.dumps(options).encode() + CRLF + b"PING" + CRLF)
        while True:
            line = self._line()
            if line == b"PONG":
                break
            self._control(line)
        self._send(b"SUB %s.* 1\r\n" % self.inbox.encode())

    def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """Send PAYLOAD to SUBJECT and return the reply's payload."""
        if len(payload) > self.max_payload:
            raise NatsFailure("protocol", f"a {len(payload)}-byte request is over the server's "
                                          f"limit of {self.max_payload} bytes")
        self.sent += 1
        reply_to = f"{self.inbox}.{self.sent}".encode()
        self.deadline = time.monotonic() + timeout
        self._send(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply_to, len(payload), payload))
        try:
            while True:
                line = self._line()
                if line.startswith((b"MSG ", b"HMSG ")):
                    got_subject, headers, data = self._message(line)
                    if got_subject != reply_to:
                        continue           # the late reply to an earlier request
                    if headers[9:12] == NO_RESPONDERS:
                        raise NatsFailure("no_responders", f"nothing answers {subject}")
                    return data
                self._control(line)
        except TimeoutError:
            raise NatsFailure("timeout", f"no answer on {subject} within {timeout:g}s") from None

    def _message(self, line: bytes) -> tuple[bytes, bytes, bytes]:
        """(subject, headers, payload) of MSG <subject> <sid> [reply] <size> or
        HMSG <subject> <sid> [reply] <header size> <total size>."""
        parts = line.split()
        try:
            if parts[0] == b"HMSG":
                header_size, total = int(parts[-2]), int(parts[-1])
            else:
                header_size, total = 0, int(parts[-1])
            block = self._exactly(total + 2)
        except (ValueError, IndexError):
            raise NatsFailure("protocol", f"malformed message line {line[:80]!r}") from None
        if block[-2:] != CRLF or header_size > total:
            raise NatsFailure("protocol", "malformed message payload")
        return parts[1], block[:header_size], block[header_size:total]

    def _control(self, line: bytes) -> None:
        """A protocol line other than a message: answer pings, fail on errors, skip the rest."""
        if line == b"PING":
            self._send(b"PONG" + CRLF)
        elif line.startswith(b"-ERR"):
            text = line[4:].strip().strip(b"'").decode(errors="replace")
            lowered = text.lower()
            reason = "auth" if "authorization" in lowered or "authentication" in lowered else \
                "permission" if "permissions violation" in lowered else "protocol"
            raise NatsFailure(reason, f"NATS refused: {text}")
        elif not (line in (b"PONG", b"+OK") or line.startswith(b"INFO ")):
            raise NatsFailure("protocol", f"unexpected line from NATS: {line[:80]!r}")

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(CRLF)
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                return line
            if len(self.buf) > MAX_CONTROL_LINE:
                raise NatsFailure("protocol", "a protocol line longer than the server's limit")
            self._fill()

    def _exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def _fill(self) -> None:
        """Read what arrived; TimeoutError once the deadline has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:
            raise NatsFailure("connect", f"lost the connection to NATS: {exc}") from None
        if not chunk:
            raise NatsFailure("connect", "NATS closed the connection")
        self.buf += chunk

    def _send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            self.sock.sendall(data)
        except TimeoutError:
            raise NatsFailure("timeout", "NATS did not take the request in time") from None
        except OSError as exc:
            raise NatsFailure("connect", f"lost the connection to NATS: {exc}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
