"""`capillary-container`: the image's entrypoint.

    capillary-container nats                 credentials (once) and server.conf, then nats-server
    capillary-container endpointd|policyd|routed|flowd|web
    capillary-container health nats|SERVICE  exit 0 when it is up and ready (for healthchecks)
    capillary-container CMD [ARG...]         anything else, e.g. `capillary get pods`, `sh`

Every command first writes the node config rendered from the environment
(services.container.env) to /etc/capillary/config.yaml, where the services and the CLI in the
container read it, and to <stateDir>/config.yaml, for the CLI on the host.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from services.container import env, headers, probe, procsys
from services.runtime import tls
from services.runtime.config import ConfigError, DEFAULT_CONFIG_PATH, NodeConfig
from services.wire import subjects

HEALTH_TIMEOUT = 3.0
# The nats container makes (and its server.conf holds) every password; its healthcheck uses
# the service user with the fewest rights, which may still ask JetStream's account info.
NATS_CHECK_USER = "routed"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def prepare(environ: dict[str, str], write: bool = True) -> NodeConfig:
    base = environ.get(env.BASE_FILE_ENV, "")
    try:
        base_text = Path(base).read_text() if base else ""
    except OSError as exc:
        raise ConfigError(f"{env.BASE_FILE_ENV}: cannot read {base}: {exc.strerror}") from None
    config, text = env.render(environ, base_text)
    if write:
        _write(DEFAULT_CONFIG_PATH, text)
        _write(config.state_path / "config.yaml", text)
    return config


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


def run_nats(config: NodeConfig) -> None:
    from services.runtime import natsserver
    conf = natsserver.write_config(config)   # passwords are made on the first start only
    _exec([natsserver.nats_server_binary(), "-c", str(conf)])


def health_subject(config: NodeConfig, target: str) -> str:
    """Where the service TARGET of this node answers health requests: in a cluster every
    node's services share the bus, so the subject carries the node's name."""
    return subjects.on_node(subjects.health(target), config.node if config.cluster.enabled else None)


def _check(config: NodeConfig, target: str) -> str:
    """Ask TARGET whether it is ready, as TARGET's own user (the only credentials its
    container has). nats: JetStream's account info, asked as NATS_CHECK_USER."""
    from services.wire import codec
    path = config.credentials_path(NATS_CHECK_USER if target == "nats" else target)
    try:
        creds = json.loads(path.read_text())
        context = tls.client_context(creds["ca"], creds.get("cert"), creds.get("key")) if creds.get("ca") else None
    except (OSError, ValueError, KeyError) as exc:
        raise probe.ProbeError(f"no usable NATS credentials at {path}: {exc}") from None
    subject = "$JS.API.INFO" if target == "nats" else health_subject(config, target)
    reply = probe.request(creds["url"], creds["user"], creds["password"], subject,
                          subjects.inbox_prefix(creds["user"]), timeout=HEALTH_TIMEOUT, tls=context)
    if target == "nats":
        info = json.loads(reply)
        if "error" in info:
            raise probe.ProbeError(f"JetStream: {info['error'].get('description')}")
        return f"nats: JetStream up, {info['streams']} streams"
    answer = codec.decode(reply)
    health = answer.get("result") or {}
    if not answer.get("ok") or not health.get("ready"):
        raise probe.ProbeError(f"{target}: not ready: {health.get('detail') or answer.get('error')}")
    return f"{target}: ready, pid {health['pid']}"


def _check_web(config: NodeConfig) -> str:
    """The page answers its sign-in form (everything else needs the token)."""
    import urllib.request
    with urllib.request.urlopen(f"{config.web.url}login", timeout=HEALTH_TIMEOUT) as response:
        return f"web: answering on {config.web.url} ({response.status})"


def health(config: NodeConfig, target: str) -> int:
    if target == "web":
        try:
            print(_check_web(config))
            return 0
        except OSError as exc:
            print(f"unhealthy: {exc}")
            return 1
    if target != "nats" and target not in subjects.SERVICES:
        print(f"error: health: unknown target {target!r}", file=sys.stderr)
        return 2
    try:
        print(_check(config, target))
        return 0
    except Exception as exc:   # any failure is "unhealthy"; the message goes to docker inspect
        print(f"unhealthy: {getattr(exc, 'message', None) or exc or type(exc).__name__}")
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        config = prepare(dict(os.environ), write=argv[0] != "health")
        if argv[0] == "health":
            return health(config, argv[1] if len(argv) > 1 else "")
        if argv[0] == "nats":
            run_nats(config)
        found = headers.ensure()
        if argv[0] in subjects.SERVICES:
            print(found, file=sys.stderr)
            if procsys.ensure_writable():
                print("remounted /proc/sys writable", file=sys.stderr)
            argv = [sys.executable, "-m", f"services.{argv[0]}", "--config", str(DEFAULT_CONFIG_PATH)]
        elif argv[0] == "web":
            argv = [sys.executable, "-m", "services.web", "--config", str(DEFAULT_CONFIG_PATH)]
    except (ConfigError, headers.HeadersError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        _exec(argv)
    except FileNotFoundError:
        print(f"error: {argv[0]}: command not found", file=sys.stderr)
        return 127
    return 0


if __name__ == "__main__":
    sys.exit(main())
