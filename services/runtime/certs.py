"""The node's NATS CA, the server's certificate and the clients', made once.

Made on the first start in <stateDir>/nats/tls (keys 0600, certificates 0644) whatever the
listen address, so that every client can be pointed at them (compose mounts them into each
service); used when TLS is on (services.runtime.tls). The server's names are the listen
address, loopback, the host's name and the host's addresses when the certificate is made:
after an address change, remove server.pem and the next start makes it again.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.runtime.tls import TlsFiles

VALID_DAYS = 3650


def drop_empty_dir(path: Path) -> None:
    """Docker makes a missing bind mount source a directory (a service container started
    before nats made the files): an empty one where a file belongs is removed."""
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _cert(subject: str, key, issuer: x509.Certificate | None, issuer_key, extensions: list) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key or key, hashes.SHA256())


def server_names(host: str, addresses: set[str]) -> list[x509.GeneralName]:
    """The names a client may reach the server by: HOST (unless a wildcard address),
    loopback, the host's name and ADDRESSES."""
    ips = {"127.0.0.1", "::1", *addresses}
    dns = {"localhost", socket.gethostname()}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            ips.add(host)
    except ValueError:
        dns.add(host)
    return [*(x509.DNSName(d) for d in sorted(dns)),
            *(x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips))]


def ensure(directory: Path, host: str, addresses: set[str], route: bool = False) -> TlsFiles:
    """Make what is missing of the CA, the server's and the clients' certificates (and with
    ROUTE, a cluster node's route certificate). The nodes of one cluster share the CA: copy
    ca.pem and ca-key.pem into each node's directory before its first start."""
    files = TlsFiles.under(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    for path in (files.ca, files.client_cert, files.client_key):
        drop_empty_dir(path)
    if not files.ca.exists():
        for path in (files.server_cert, files.client_cert, files.route_cert):   # signed by a CA that is gone
            path.unlink(missing_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("capillary NATS CA", ca_key, None, None,
                   [(x509.BasicConstraints(ca=True, path_length=0), True),
                    (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)])
        _write(directory / "ca-key.pem", _key_pem(ca_key), 0o600)
        _write(files.ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    ca_key = _load_key(directory / "ca-key.pem")
    names = x509.SubjectAlternativeName(server_names(host, addresses))
    leaves = [(files.server_cert, files.server_key, "capillary NATS server", [ExtendedKeyUsageOID.SERVER_AUTH], names),
              (files.client_cert, files.client_key, "capillary NATS client", [ExtendedKeyUsageOID.CLIENT_AUTH], None)]
    if route:
        leaves.append((files.route_cert, files.route_key, "capillary NATS route",
                       [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], names))
    for cert_path, key_path, subject, usage, names in leaves:
        if cert_path.exists() and key_path.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        ext = [(x509.BasicConstraints(ca=False, path_length=None), True), (x509.ExtendedKeyUsage(usage), False)]
        if names is not None:
            ext.append((names, False))
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert(subject, key, ca, ca_key, ext).public_bytes(serialization.Encoding.PEM), 0o644)
    return files
