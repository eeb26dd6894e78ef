"""Who a client is on the bus: a NATS CLI context file, and the errors calls report.

Light on purpose (no dataclasses, pathlib or NATS library): the CNI plugin reads its context with it
on every command, and services.runtime.bus builds on it.
"""
from __future__ import annotations

import json
import os
from collections import namedtuple

from services.wire.codes import INVALID, UNAVAILABLE


class ServiceError(Exception):
    """An error a handler reports to its caller: a code from wire.codes and one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(ServiceError):
    """An error reply received from another service (or no reply at all)."""


class Credentials(namedtuple("Credentials", "url user password ca cert key servers node",
                             defaults=(None, None, None, (), None))):
    """A NATS CLI context file: {"url", "user", "password"} (written mode 0600), and with
    TLS {"ca", "cert", "key"}: the CA the server's certificate must chain to, and ours. A
    cluster node's also has "servers" (its own server first, then its peers') and "node" (its
    name: whose subjects a client calls)."""

    __slots__ = ()

    def tls_context(self):
        """The client's TLS context, or None for a plain connection (nats://, no CA)."""
        if not self.ca and not self.url.startswith("tls://"):
            return None
        if not self.ca:
            raise ServiceError(INVALID, f"{self.url} needs TLS, and the context file names no CA (\"ca\")")
        from services.runtime.tls import client_context
        try:
            return client_context(self.ca, self.cert, self.key)
        except (OSError, ValueError) as exc:
            raise ServiceError(INVALID, f"cannot load the TLS files of the context: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Credentials":
        try:
            with open(path, encoding="utf-8") as file:
                data = json.loads(file.read())
        except FileNotFoundError:
            raise ServiceError(UNAVAILABLE, f"no NATS credentials at {path}: is the node up?") from None
        except (OSError, ValueError) as exc:
            raise ServiceError(INVALID, f"cannot read NATS credentials {path}: {exc}") from None
        try:
            return cls(url=data["url"], user=data["user"], password=data["password"],
                       ca=data.get("ca"), cert=data.get("cert"), key=data.get("key"),
                       servers=tuple(data.get("servers") or ()), node=data.get("node"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ServiceError(INVALID, f"NATS credentials {path}: missing {exc}") from None
