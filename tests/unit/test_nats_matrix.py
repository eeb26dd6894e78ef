"""The bus permissions matrix against a real nats-server: every user x every subject in
services.wire.subjects, publish and subscribe, must be allowed exactly as GRANTS (and
CLIENTS and READERS) say; anonymous and wrong passwords are refused; beyond loopback only TLS clients
with the node's certificates get in."""
from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import subprocess

import nats
import pytest
from nats.errors import Error as NatsError

from services.runtime import natsserver
from services.runtime.config import NatsConfig, NodeConfig
from services.runtime.tls import client_context
from services.wire import subjects
from tests.support.node import free_port
from tests.unit.test_nats_permissions import matches

NODE = "m1"
PREFIXES = {subjects.ENDPOINT_EVENTS, subjects.FLOWS, subjects.MONITOR}   # not subjects themselves


def every_subject() -> list[str]:
    """Every subject subjects.py defines: its constants, and what its functions build."""
    constants = [v for k, v in vars(subjects).items() if k.isupper() and isinstance(v, str)
                 and v.startswith(f"{subjects.ROOT}.") and v not in PREFIXES]
    built = [*(subjects.health(s) for s in subjects.SERVICES),
             *(subjects.endpoint_event(w) for w in ("created", "deleted")),
             *(subjects.flows(NODE, v) for v in ("FORWARDED", "DROPPED", "AUDIT")),
             subjects.monitor(NODE)]
    return sorted({*constants, *built})


def expected(user: str, action: str, subject: str) -> bool:
    if user == natsserver.ADMIN:
        return True
    g = subjects.GRANTS.get(user) or subjects.READERS.get(user) or subjects.CLIENTS[user]
    if user in subjects.READERS:
        patterns = g.listens if action == "subscribe" else ()
    elif user in subjects.CLIENTS:
        patterns = g.listens if action == "subscribe" else g.calls
    else:
        patterns = [*g.serves, *g.listens] if action == "subscribe" else [*g.calls, *g.publishes]
    return any(matches(p, subject) for p in patterns)


def test_the_subject_list_covers_every_grant():
    listed = every_subject()
    grants = [*subjects.GRANTS.values(), *subjects.READERS.values(), *subjects.CLIENTS.values()]
    for pattern in {p for g in grants for p in (*g.serves, *g.calls, *g.publishes, *g.listens)}:
        assert any(matches(pattern, s) for s in listed), pattern


class Server:
    def __init__(self, tmp_path, host: str, tls: bool = False) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.config = NodeConfig(node=NODE, stateDir=str(tmp_path / "state"),
                                 nats=NatsConfig(host=host, port=free_port(), tls=tls))
        self.log = open(tmp_path / "nats.log", "wb")
        self.proc = natsserver.start(self.config, self.log)
        natsserver.wait_listening("127.0.0.1", self.config.nats.port, 30, self.proc)
        self.creds = {u: json.loads(self.config.credentials_path(u).read_text()) for u in natsserver.USERS}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()

    async def connect(self, user: str | None, **kw) -> tuple[nats.NATS, list[str]]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        c = self.creds[user or natsserver.ADMIN]
        if c.get("ca") and "tls" not in kw:
            kw["tls"] = client_context(c["ca"], c["cert"], c["key"])
        auth = {"user": user, "password": c["password"]} if user else {}
        nc = await nats.connect(c["url"], **auth, error_cb=on_error, allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=5, **kw)
        return nc, errors


@pytest.fixture(params=["loopback", "beyond loopback"])
def server(request, tmp_path):
    s = Server(tmp_path, "127.0.0.1" if request.param == "loopback" else "0.0.0.0")
    try:
        yield s
    finally:
        s.close()


def violated(errors: list[str], what: str, subject: str) -> bool:
    """Whether the server reported a permissions violation (nats-py lowercases its text)."""
    return any(f'permissions violation for {what} "{subject.lower()}"' in e.lower() for e in errors)


async def settle(send, verdict, listed: list[str], what: str, timeout: float = 60.0) -> dict[str, bool]:
    """Call SEND(subjects) until VERDICT(subject) (True, False or None: not yet known) is
    known for every subject; a loaded machine may take a while to show either."""
    out: dict[str, bool] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while len(out) < len(listed):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: no answer for {sorted(set(listed) - set(out))}")
        await send([x for x in listed if x not in out])
        await asyncio.sleep(0.05)
        for subject in listed:
            v = verdict(subject)
            if v is not None:
                out[subject] = v
    return out


async def observed(server: Server, user: str) -> dict[tuple[str, str], bool]:
    """What USER may do on every subject: the server's own answers, each with evidence (a
    permissions violation, or the message delivered)."""
    admin, _ = await server.connect(natsserver.ADMIN)
    nc, errors = await server.connect(user)
    seen: set[tuple[str, bytes]] = set()
    got: set[tuple[str, bytes]] = set()

    def recorder(into: set):
        async def record(msg) -> None:
            into.add((msg.subject, msg.data))
        return record

    async def publish(client, todo: list[str], data: bytes) -> None:
        for subject in todo:
            await client.publish(subject, data)
        await client.flush()

    def answer(evidence: set, data: bytes, what: str):
        return lambda s: True if (s, data) in evidence else (False if violated(errors, what, s) else None)

    listed = every_subject()
    try:
        await admin.subscribe(">", cb=recorder(seen))
        await admin.flush()
        published = await settle(lambda todo: publish(nc, todo, b"pub"), answer(seen, b"pub", "publish to"),
                                 listed, f"{user} publishes")
        for subject in listed:
            await nc.subscribe(subject, cb=recorder(got))
        await nc.flush()
        subscribed = await settle(lambda todo: publish(admin, todo, b"sub"), answer(got, b"sub", "subscription to"),
                                  listed, f"{user} subscribes")
    finally:
        await nc.close()
        await admin.close()
    return {**{("publish", s): v for s, v in published.items()},
            **{("subscribe", s): v for s, v in subscribed.items()}}


@pytest.mark.parametrize("user", natsserver.USERS)
async def test_every_user_on_every_subject_is_as_granted(server, user):
    got = await observed(server, user)
    want = {(a, s): expected(user, a, s) for a, s in itertools.product(("publish", "subscribe"), every_subject())}
    assert {k for k, v in got.items() if v} == {k for k, v in want.items() if v}
    assert got.keys() == want.keys()


async def test_the_flows_reader_subscribes_to_flows_and_publishes_nothing(server):
    got = await observed(server, subjects.FLOWS_READER)
    assert {s for (a, s), ok in got.items() if ok and a == "subscribe"} == \
        {subjects.flows(NODE, v) for v in ("FORWARDED", "DROPPED", "AUDIT")}
    assert not any(ok for (a, _s), ok in got.items() if a == "publish")


async def test_anonymous_and_wrong_passwords_are_refused(server):
    with pytest.raises((NatsError, OSError)):
        await server.connect(None)
    server.creds["policyd"] = {**server.creds["policyd"], "password": "not-it"}
    with pytest.raises((NatsError, OSError)):
        await server.connect("policyd")


def listening(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


async def test_tls_is_on_beyond_loopback_and_off_on_it(tmp_path):
    loop, beyond = Server(tmp_path / "a", "127.0.0.1"), Server(tmp_path / "b", "0.0.0.0")
    try:
        assert loop.creds["admin"]["url"].startswith("nats://") and "ca" not in loop.creds["admin"]
        assert loopback_info(loop)["tls_required"] is False
        assert listening(beyond.config.nats.port) - {f"127.0.0.1:{beyond.config.nats.port}"}   # beyond loopback
        for user, c in beyond.creds.items():
            assert c["url"] == f"tls://127.0.0.1:{beyond.config.nats.port}", user
        assert loopback_info(beyond)["tls_required"] is True
        nc, _ = await beyond.connect("flows")        # the node's CA and client certificate: in
        await nc.close()
        plain = ssl.create_default_context(cafile=beyond.creds["admin"]["ca"])     # no client cert
        with pytest.raises((NatsError, OSError, ssl.SSLError)):
            await beyond.connect("flows", tls=plain)
        stranger = client_context(str(loop.config.nats_dir / "tls" / "ca.pem"),       # another node's CA
                                  str(loop.config.nats_dir / "tls" / "client.pem"),
                                  str(loop.config.nats_dir / "tls" / "client-key.pem"))
        with pytest.raises((NatsError, OSError, ssl.SSLError)):
            await beyond.connect("flows", tls=stranger)
    finally:
        loop.close()
        beyond.close()


def loopback_info(server: Server) -> dict:
    import socket
    with socket.create_connection(("127.0.0.1", server.config.nats.port), timeout=10) as s:
        line = s.makefile("rb").readline()
    assert line.startswith(b"INFO ")
    return {"tls_required": False, **json.loads(line[5:])}
