"""TLS for the node's NATS: where the files are, and a client's context (ssl only, so a
healthcheck need not import the certificate maker, services.runtime.certs).

Whenever NATS listens beyond loopback (or nats.tls says so) the server requires a client
certificate signed by the node's CA (`verify`), and every client checks the server's
against the CA; passwords still say who a client is.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    route_cert: Path         # a cluster node's route to its peers: server and client at once
    route_key: Path

    @classmethod
    def under(cls, directory: Path) -> "TlsFiles":
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
                   directory / "client.pem", directory / "client-key.pem",
                   directory / "route.pem", directory / "route-key.pem")


def client_context(ca: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    """A client's TLS context: the server's certificate checked against CA, and ours."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx
