"""Where a container's labels come from, per runtime.

- The network config's ``args.cni.labels`` (the CNI ``args`` convention) apply to every
  container on that network; they win over the runtime's own labels.
- Kubernetes-style runtimes pass K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS: they name
  the pod.
- podman 4.3 passes only K8S_POD_NAME (the container's name). Its API cannot answer during
  ADD: podman holds the container's lock while it sets up the network, and `podman container
  inspect` waits for that lock (measured: still blocked after 4 s). The container's labels
  are read instead from podman's own state database (libpod's bolt_state.db under the
  storage's graphroot, as configured by $CONTAINERS_STORAGE_CONF / $CONTAINERS_CONF, which
  podman passes on to the plugin), where `podman create` stored its config.
Labels that are not valid Kubernetes labels (e.g. a `maintainer` with spaces in its value)
are left out: a pod's labels follow Kubernetes' rules.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from services.cni.boltdb import BoltError, open_db
from services.cni.spec import IO_FAILURE, CniError, Environment
from services.wire.manifests import LABEL_VALUE, valid_label_key

STORAGE_CONF = Path("/etc/containers/storage.conf")
CONTAINERS_CONF = Path("/usr/share/containers/containers.conf"), Path("/etc/containers/containers.conf")
DEFAULT_GRAPHROOT = "/var/lib/containers/storage"


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}: {exc}") from None


def podman_db(environ: dict[str, str]) -> Path:
    """Where podman keeps its state: [engine] static_dir, else <graphroot>/libpod."""
    static_dir = ""
    confs = [Path(environ["CONTAINERS_CONF"])] if environ.get("CONTAINERS_CONF") else list(CONTAINERS_CONF)
    for conf in confs:
        static_dir = _toml(conf).get("engine", {}).get("static_dir", static_dir)
    if static_dir:
        return Path(static_dir) / "bolt_state.db"
    storage = Path(environ.get("CONTAINERS_STORAGE_CONF") or STORAGE_CONF)
    graphroot = _toml(storage).get("storage", {}).get("graphroot") or DEFAULT_GRAPHROOT
    return Path(graphroot) / "libpod" / "bolt_state.db"


def podman_labels(container_id: str, db: Path) -> dict[str, str] | None:
    """The labels podman stored for CONTAINER_ID, or None when it is not a podman container."""
    if not db.exists():
        return None
    try:
        containers = open_db(db).bucket(b"ctr")
        record = containers.bucket(container_id.encode()) if containers else None
        raw = record.get(b"config") if record else None
        if raw is None:
            return None
        labels = json.loads(raw).get("labels") or {}
    except (OSError, BoltError, ValueError, AttributeError) as exc:
        # Unknown is not "no labels": a pod with the wrong labels would get the wrong policy.
        raise CniError(IO_FAILURE, f"cannot read container {container_id}'s labels from {db}: {exc}") from None
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)
            and valid_label_key(k) and len(v) <= 63 and LABEL_VALUE.match(v)}


def runtime_labels(env: Environment, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Labels the runtime holds for the container, where its state is reachable."""
    found = podman_labels(env.container_id, podman_db(dict(os.environ) if environ is None else environ))
    return found or {}
