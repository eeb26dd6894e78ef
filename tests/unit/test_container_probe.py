"""The healthcheck's NATS request, against a scripted server on a socket pair."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from services.container import probe


def _serve(server: socket.socket, replies: list[bytes], seen: list[bytes]) -> None:
    with server, server.makefile("rb") as f:
        server.sendall(b'INFO {"server_id":"x"}\r\n')
        for _ in range(4):                      # CONNECT, SUB, PUB + payload line, PING
            seen.append(f.readline())
        for reply in replies:
            server.sendall(reply)
        if replies:
            seen.extend(f.readlines())          # until the client hangs up (a PONG, maybe)


def _request(replies: list[bytes], payload: bytes = b"") -> tuple[bytes, list[bytes]]:
    client, server = socket.socketpair()
    seen: list[bytes] = []
    thread = threading.Thread(target=_serve, args=(server, replies, seen))
    thread.start()
    try:
        return probe.request("nats://unused:4222", "admin", "pw", "capillary.health.flowd", "_INBOX_admin",
                             payload=payload, timeout=2, sock=client), seen
    finally:
        thread.join()


def test_a_reply_comes_back_and_the_request_is_well_formed():
    reply, seen = _request([b"PING\r\n", b"+OK\r\n", b"MSG _INBOX_admin.probe1 1 5\r\nhello\r\n"])
    assert reply == b"hello"
    connect = json.loads(seen[0][len(b"CONNECT "):])
    assert (connect["user"], connect["pass"], connect["no_responders"]) == ("admin", "pw", True)
    inbox = seen[1].split()[1].decode()
    assert inbox.startswith("_INBOX_admin.probe") and seen[1].split()[2] == b"1"
    assert seen[2].split() == [b"PUB", b"capillary.health.flowd", inbox.encode(), b"0"]


def test_a_reply_with_headers_gives_its_body():
    hdr = b"NATS/1.0\r\nX: y\r\n\r\n"
    reply, _ = _request([b"HMSG _INBOX_admin.p 1 %d %d\r\n%sbody\r\n" % (len(hdr), len(hdr) + 4, hdr)])
    assert reply == b"body"


def test_no_responders_names_the_subject():
    hdr = b"NATS/1.0 503\r\n\r\n"
    with pytest.raises(probe.ProbeError, match="nothing answers capillary.health.flowd"):
        _request([b"HMSG _INBOX_admin.p 1 %d %d\r\n%s\r\n" % (len(hdr), len(hdr), hdr)])


def test_a_server_error_is_reported():
    with pytest.raises(probe.ProbeError, match="NATS: 'Authorization Violation'"):
        _request([b"-ERR 'Authorization Violation'\r\n"])


def test_a_closed_connection_is_reported():
    with pytest.raises(probe.ProbeError, match="closed the connection"):
        _request([])


def test_nothing_listening_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(probe.ProbeError, match=f"cannot connect to nats://127.0.0.1:{port}"):
        probe.request(f"nats://127.0.0.1:{port}", "admin", "pw", "x", "_INBOX_admin", timeout=1)
