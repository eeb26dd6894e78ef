"""The plugin's side of the bus: requests to the node's services, built and read by hand.

The plugin runs once per command, so it talks to the node over services.runtime.natsclient
(a blocking socket) and builds its few requests here instead of from services.wire.messages:
the schemas' dataclasses alone cost more start-up than the rest of the plugin.
tests/unit/test_cni_client.py keeps each request equal to its message class's to_wire() and
reads real replies back through the message classes, so the two cannot drift apart.
Payloads are msgpack maps as services.wire.codec writes them; replies are
``{"v", "ok", "result"}`` or ``{"v", "ok": false, "error": {"code", "message"}}``.
"""
from __future__ import annotations

import msgpack

from services.runtime.credentials import Credentials, RemoteError, ServiceError
from services.runtime.natsclient import NatsClient, NatsFailure
from services.wire.codes import INTERNAL, INVALID, UNAVAILABLE

SCHEMA_VERSION = 1      # services.wire.messages.SCHEMA_VERSION


def list_request(namespace: str = "") -> dict:
    """messages.ListRequest"""
    return {"v": SCHEMA_VERSION, "kind": "list", "namespace": namespace}


def apply(document: dict) -> dict:
    """messages.Apply"""
    return {"v": SCHEMA_VERSION, "kind": "apply", "document": document, "create_only": False}


def ref(name: str, namespace: str = "") -> dict:
    """messages.ObjectRef"""
    return {"v": SCHEMA_VERSION, "kind": "ref", "name": name, "namespace": namespace, "object_kind": ""}


class NodeClient:
    """Requests to the node's services as one user, over one connection."""

    def __init__(self, nats: NatsClient, node: str | None = None) -> None:
        self.nats = nats
        self.node = node        # a cluster node's name: its services answer on its own subjects

    @classmethod
    def connect(cls, creds: Credentials, name: str, timeout: float) -> "NodeClient":
        """Connect as CREDS.user, to the context's server or else (a cluster node's) to its
        peers' in turn; raises ServiceError (UNAVAILABLE: no server, INVALID: refused)."""
        from services.wire.subjects import inbox_prefix
        tls = creds.tls_context()
        failure = None
        for url in dict.fromkeys((creds.url, *creds.servers)):
            try:
                return cls(NatsClient.connect(url, creds.user, creds.password, inbox_prefix(creds.user),
                                              name, timeout, tls), creds.node)
            except NatsFailure as exc:
                if exc.reason in ("auth", "protocol"):
                    raise ServiceError(INVALID, f"cannot connect to NATS at {url}: {exc}") from None
                failure = f"cannot connect to NATS at {url}: {exc}"
        raise ServiceError(UNAVAILABLE, failure)

    def request(self, subject: str, message: dict | None, timeout: float) -> object:
        """Call SUBJECT and return the result, or raise RemoteError with the callee's error
        (UNAVAILABLE when nothing answered in time or the connection failed)."""
        from services.wire.subjects import on_node
        subject = on_node(subject, self.node)
        payload = msgpack.packb(message or {}, use_bin_type=True)
        try:
            data = self.nats.request(subject, payload, timeout)
        except NatsFailure as exc:
            if exc.reason == "no_responders":
                raise RemoteError(UNAVAILABLE, f"nothing answers {subject}: is its service running?") from None
            code = INVALID if exc.reason == "permission" else UNAVAILABLE
            raise RemoteError(code, f"{subject}: {exc}") from None
        try:
            reply = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise RemoteError(INTERNAL, f"{subject}: the reply is not msgpack: {exc}") from None
        if not isinstance(reply, dict):
            raise RemoteError(INTERNAL, f"{subject}: the reply is not a map")
        if reply.get("ok") is True:
            return reply.get("result")
        err = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        raise RemoteError(str(err.get("code", INTERNAL)), str(err.get("message", "error without a message")))

    def close(self) -> None:
        self.nats.close()
