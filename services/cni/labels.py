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
- containerd 1.6's `ctr run --cni` passes no CNI_ARGS, CNI_CONTAINERID = "<namespace>-<id>"
  and CNI_NETNS = /proc/<pid>/ns/net. The container exists in containerd's metadata by then,
  so its labels come from containerd's API (`ctr containers info`, at $CONTAINERD_ADDRESS,
  which ctr passes on, else containerd's default socket); containerd's own io.containerd.*
  labels are left out.
Labels that are not valid Kubernetes labels (e.g. a `maintainer` with spaces in its value)
are left out: a pod's labels follow Kubernetes' rules.
"""
from __future__ import annotations

import json
import os

from services.cni.boltdb import BoltError, open_db
from services.cni.spec import IO_FAILURE, CniError, Environment
from services.wire.names import valid_label_key, valid_label_value

STORAGE_CONF = "/etc/containers/storage.conf"
CONTAINERS_CONF = "/usr/share/containers/containers.conf", "/etc/containers/containers.conf"
DEFAULT_GRAPHROOT = "/var/lib/containers/storage"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CTR_TIMEOUT = 10.0


def _toml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}: {exc}") from None
    import tomllib       # only where a file is there to parse
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}: {exc}") from None


def podman_db(environ: dict[str, str]) -> str:
    """Where podman keeps its state: [engine] static_dir, else <graphroot>/libpod."""
    static_dir = ""
    confs = [environ["CONTAINERS_CONF"]] if environ.get("CONTAINERS_CONF") else list(CONTAINERS_CONF)
    for conf in confs:
        static_dir = _toml(conf).get("engine", {}).get("static_dir", static_dir)
    if static_dir:
        return os.path.join(static_dir, "bolt_state.db")
    storage = environ.get("CONTAINERS_STORAGE_CONF") or STORAGE_CONF
    graphroot = _toml(storage).get("storage", {}).get("graphroot") or DEFAULT_GRAPHROOT
    return os.path.join(graphroot, "libpod", "bolt_state.db")


def podman_labels(container_id: str, db: str) -> dict[str, str] | None:
    """The labels podman stored for CONTAINER_ID, or None when it is not a podman container."""
    if not os.path.exists(db):
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
    return _valid(labels)


def _valid(labels: dict) -> dict[str, str]:
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)
            and valid_label_key(k) and valid_label_value(v)
            and not k.startswith("io.containerd.")}


def _ctr(address: str, *args: str) -> str:
    import subprocess      # only for containerd's containers: podman's ADDs need no process
    try:
        proc = subprocess.run(["ctr", "--address", address, *args], capture_output=True, text=True,
                              timeout=CTR_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(IO_FAILURE, f"ctr {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        raise CniError(IO_FAILURE, f"ctr {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def containerd_labels(container_id: str, environ: dict[str, str]) -> dict[str, str] | None:
    """The labels of containerd container <namespace>-<id>, or None when it is not one."""
    address = environ.get("CONTAINERD_ADDRESS") or CONTAINERD_SOCKET
    if "-" not in container_id or not os.path.exists(address):
        return None
    import shutil
    if shutil.which("ctr") is None:
        return None
    for namespace in _ctr(address, "namespaces", "ls", "-q").split():
        if container_id.startswith(f"{namespace}-"):
            name = container_id[len(namespace) + 1:]
            if name not in _ctr(address, "-n", namespace, "containers", "ls", "-q").split():
                continue
            try:
                info = json.loads(_ctr(address, "-n", namespace, "containers", "info", name))
            except ValueError as exc:
                raise CniError(IO_FAILURE, f"ctr containers info {name}: {exc}") from None
            return _valid(info.get("Labels") or {})
    return None


def runtime_labels(env: Environment, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Labels the runtime holds for the container, where its state is reachable."""
    environ = dict(os.environ) if environ is None else environ
    found = podman_labels(env.container_id, podman_db(environ))
    if found is None:
        found = containerd_labels(env.container_id, environ)
    return found or {}
