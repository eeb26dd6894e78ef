"""services.runtime.natsclient against a real nats-server with the node's users: requests
and replies, no responders, timeouts and late replies, payloads larger than one read, wrong
passwords, permissions and TLS; and, for what a server seldom does on cue (a PING while a
reply is awaited, an error line, frames split at every byte), a scripted peer on a socket pair."""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from services.runtime import natsserver
from services.runtime.credentials import Credentials
from services.runtime.natsclient import NatsClient, NatsFailure, split_url
from services.wire import subjects
from tests.unit.test_nats_matrix import Server


def client(server: Server, user: str, timeout: float = 10.0, **kw) -> NatsClient:
    creds = Credentials(**{k: v for k, v in server.creds[user].items() if k in Credentials._fields})
    return NatsClient.connect(creds.url, creds.user, kw.pop("password", creds.password),
                              subjects.inbox_prefix(user), "test", timeout, kw.pop("tls", creds.tls_context()))


async def responder(server: Server, subject: str, reply=lambda data: data):
    """An admin connection answering SUBJECT with REPLY(data) (None: no answer)."""
    nc, _ = await server.connect(natsserver.ADMIN)

    async def on_msg(msg) -> None:
        out = reply(msg.data)
        if out is not None:
            await msg.respond(out)

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return nc


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, "127.0.0.1")
    try:
        yield s
    finally:
        s.close()


async def test_a_request_gets_its_reply_and_a_large_one_arrives_whole(server):
    nc = await responder(server, subjects.POD_LIST, lambda data: data * 3)
    c = await asyncio.to_thread(client, server, "cni")
    try:
        assert await asyncio.to_thread(c.request, subjects.POD_LIST, b"ping", 10) == b"pingpingping"
        big = bytes(range(256)) * 1000            # 768 KB back: many reads
        assert await asyncio.to_thread(c.request, subjects.POD_LIST, big, 10) == big * 3
    finally:
        c.close()
        await nc.close()


async def test_no_responders_and_a_timeout_fail_and_a_late_reply_is_not_taken_for_the_next(server):
    nc = await responder(server, subjects.POD_CHECK, lambda data: None if data == b"slow" else data)
    c = await asyncio.to_thread(client, server, "cni")
    try:
        with pytest.raises(NatsFailure) as exc:
            await asyncio.to_thread(c.request, subjects.POD_APPLY, b"x", 10)
        assert exc.value.reason == "no_responders"
        with pytest.raises(NatsFailure) as exc:
            await asyncio.to_thread(c.request, subjects.POD_CHECK, b"slow", 0.5)
        assert exc.value.reason == "timeout"
        # the first request's reply subject gets an answer now, before the next request's
        await nc.publish(f"{c.inbox}.2", b"late")
        await nc.flush()
        assert await asyncio.to_thread(c.request, subjects.POD_CHECK, b"fresh", 10) == b"fresh"
    finally:
        c.close()
        await nc.close()


def test_a_wrong_password_is_refused(server):
    with pytest.raises(NatsFailure) as exc:
        client(server, "cni", password="not-it")
    assert exc.value.reason == "auth"


def test_nothing_listening_is_a_connect_failure(server):
    with pytest.raises(NatsFailure) as exc:
        NatsClient.connect("nats://127.0.0.1:1", "cni", "x", "_INBOX_cni", "test", 5)
    assert exc.value.reason == "connect"


async def test_the_cni_user_may_call_endpointd_and_not_policyd(server):
    nc = await responder(server, subjects.POD_LIST)
    c = await asyncio.to_thread(client, server, "cni")
    try:
        assert await asyncio.to_thread(c.request, subjects.POD_LIST, b"ok", 10) == b"ok"
        with pytest.raises(NatsFailure) as exc:
            await asyncio.to_thread(c.request, subjects.POLICY_APPLY, b"no", 10)
        assert exc.value.reason == "permission"
    finally:
        c.close()
        await nc.close()


async def test_tls_beyond_loopback(tmp_path):
    beyond = Server(tmp_path, "0.0.0.0")
    try:
        assert beyond.creds["cni"]["url"].startswith("tls://")
        nc = await responder(beyond, subjects.POD_LIST)
        c = await asyncio.to_thread(client, beyond, "cni")
        try:
            assert await asyncio.to_thread(c.request, subjects.POD_LIST, b"over tls", 10) == b"over tls"
        finally:
            c.close()
            await nc.close()
        with pytest.raises(NatsFailure) as exc:          # no CA: refuse rather than talk in the clear
            await asyncio.to_thread(client, beyond, "cni", tls=None)
        assert exc.value.reason == "connect" and "requires TLS" in str(exc.value)
    finally:
        beyond.close()


def test_urls():
    assert split_url("nats://127.0.0.1:4222") == ("127.0.0.1", 4222, False)
    assert split_url("tls://[::1]:5000") == ("::1", 5000, True)
    for bad in ("http://x:1", "nats://x:0", "nats://x:port"):
        with pytest.raises(NatsFailure):
            split_url(bad)


# ---- a scripted peer: protocol cases a real server does not produce on demand -------------

def scripted(script) -> NatsClient:
    """A client connected to a thread that runs SCRIPT(peer socket) after sending INFO."""
    ours, theirs = socket.socketpair()

    def run() -> None:
        with theirs:
            theirs.sendall(b'INFO {"max_payload": 1048576}\r\n')
            script(theirs, theirs.makefile("rb"))

    threading.Thread(target=run, daemon=True).start()
    c = NatsClient(ours, "_INBOX_cni.t", 1 << 20)
    c._handshake("nats://peer:1", "peer", "cni", "pw", "test", 5, None, False)
    return c


def handshake(peer, reader) -> None:
    connect = reader.readline()
    assert connect.startswith(b"CONNECT ") and json.loads(connect[8:])["user"] == "cni"
    assert reader.readline() == b"PING\r\n"
    peer.sendall(b"PONG\r\n")
    assert reader.readline() == b"SUB _INBOX_cni.t.* 1\r\n"


def test_a_ping_while_waiting_is_answered_and_frames_split_at_every_byte_are_read():
    def script(peer, reader) -> None:
        handshake(peer, reader)
        assert reader.readline().startswith(b"PUB a.b _INBOX_cni.t.1 2")
        reader.readline()
        peer.sendall(b"PING\r\n")
        assert reader.readline() == b"PONG\r\n"
        frame = b"+OK\r\nHMSG _INBOX_cni.t.1 1 12 17\r\nNATS/1.0\r\n\r\nhello\r\n"
        for i in range(len(frame)):
            peer.sendall(frame[i:i + 1])

    c = scripted(script)
    assert c.request("a.b", b"hi", 5) == b"hello"


@pytest.mark.parametrize("answer, reason", [
    (b"-ERR 'Permissions Violation for Publish to \"a.b\"'\r\n", "permission"),
    (b"MSG _INBOX_cni.t.1 1 five\r\n", "protocol"),
    (b"", "connect"),                      # the peer hangs up
])
def test_an_error_line_a_malformed_message_or_a_hang_up_fail_the_request(answer, reason):
    def script(peer, reader) -> None:
        handshake(peer, reader)
        reader.readline()
        reader.readline()
        peer.sendall(answer)

    with pytest.raises(NatsFailure) as exc:
        scripted(script).request("a.b", b"x", 5)
    assert exc.value.reason == reason
