"""Node configuration from environment variables, for containers (compose.yaml, .env).

Each variable sets one NodeConfig field; an unset or empty variable leaves the field at its
value in the base config (the file named by $CAPILLARY_CONFIG_FILE, if any) or its default.
The result is validated exactly as a config file is, and an error names the variable.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from services.runtime.config import ConfigError, NodeConfig, parse_config

BASE_FILE_ENV = "CAPILLARY_CONFIG_FILE"

# variable -> (section, field); section "" is the top level of NodeConfig
VARIABLES: dict[str, tuple[str, str]] = {
    "CAPILLARY_NODE": ("", "node"),
    "CAPILLARY_STATE_DIR": ("", "stateDir"),
    "CAPILLARY_POD_CIDR": ("", "podCIDR"),
    "CAPILLARY_MASQUERADE": ("", "masquerade"),
    "CAPILLARY_DATAPATH_MODE": ("datapath", "mode"),
    "CAPILLARY_BPF_ROOT": ("datapath", "bpfRoot"),
    "CAPILLARY_ROUTER_DEVICE": ("datapath", "routerDevice"),
    "CAPILLARY_ROUTER_PEER": ("datapath", "routerPeer"),
    "CAPILLARY_LXC_PREFIX": ("datapath", "lxcPrefix"),
    "CAPILLARY_POLICY_ENFORCEMENT": ("policy", "enforcement"),
    "CAPILLARY_EVENTS_RING_BYTES": ("events", "ringBytes"),
    "CAPILLARY_EVENTS_AGGREGATION": ("events", "aggregation"),
    "CAPILLARY_EVENTS_HISTORY": ("events", "history"),
    "CAPILLARY_NATS_HOST": ("nats", "host"),
    "CAPILLARY_NATS_PORT": ("nats", "port"),
    "CAPILLARY_NATS_TLS": ("nats", "tls"),
    "CAPILLARY_METRICS_HOST": ("metrics", "host"),
    "CAPILLARY_METRICS_ENDPOINTD": ("metrics", "endpointd"),
    "CAPILLARY_METRICS_POLICYD": ("metrics", "policyd"),
    "CAPILLARY_METRICS_ROUTED": ("metrics", "routed"),
    "CAPILLARY_METRICS_FLOWD": ("metrics", "flowd"),
    "CAPILLARY_WEB_ENABLED": ("web", "enabled"),
    "CAPILLARY_WEB_HOST": ("web", "host"),
    "CAPILLARY_WEB_PORT": ("web", "port"),
    # the cluster section (services/runtime/clusterconfig.py); no name: a lone node
    "CAPILLARY_CLUSTER_NAME": ("cluster", "name"),
    "CAPILLARY_UNDERLAY_IP": ("cluster", "underlayIP"),
    "CAPILLARY_CLUSTER_ROUTES": ("cluster", "routes"),       # HOST:PORT[,HOST:PORT...]
    "CAPILLARY_CLUSTER_PORT": ("cluster", "port"),
    "CAPILLARY_ROUTING": ("cluster", "routing"),
    "CAPILLARY_HEARTBEAT_INTERVAL": ("cluster", "heartbeatInterval"),
    "CAPILLARY_HEARTBEAT_TIMEOUT": ("cluster", "heartbeatTimeout"),
    "CAPILLARY_CLUSTER_REPLICAS": ("cluster", "replicas"),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _field_type(section: str, name: str) -> str:
    cls = NodeConfig if not section else {f.name: f for f in dataclasses.fields(NodeConfig)}[section].default_factory
    return {f.name: f.type for f in dataclasses.fields(cls)}[name]


def _convert(variable: str, type_name: str, raw: str) -> Any:
    value = raw.strip()
    if type_name == "int":
        try:
            return int(value, 0)
        except ValueError:
            raise ConfigError(f"{variable}: {raw!r} is not an integer") from None
    if type_name == "tuple":        # a list: items separated by commas or spaces
        return [item for item in value.replace(",", " ").split() if item]
    if type_name == "bool":
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{variable}: {raw!r} is not true or false")
    return value


def overrides(environ: Mapping[str, str]) -> dict:
    """The NodeConfig fields the environment sets, as a nested mapping."""
    unknown = sorted(k for k in environ if k.startswith("CAPILLARY_") and k not in VARIABLES
                     and k not in KNOWN_OTHER)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown variable (known: {', '.join(sorted(VARIABLES))})")
    out: dict = {}
    for variable, (section, name) in VARIABLES.items():
        raw = environ.get(variable, "")
        if not raw.strip():
            continue
        value = _convert(variable, _field_type(section, name), raw)
        (out.setdefault(section, {}) if section else out)[name] = value
    return out


# Variables that are not config fields but are read elsewhere (image, CLI, logging, compose).
KNOWN_OTHER = {BASE_FILE_ENV, "CAPILLARY_CONFIG", "CAPILLARY_CONTEXT", "CAPILLARY_BPF_DIR",
               "CAPILLARY_LOG_LEVEL", "CAPILLARY_LOG_FORMAT", "CAPILLARY_IMAGE",
               "CAPILLARY_CAP_BPF", "CAPILLARY_CAP_PERFMON"}


def render(environ: Mapping[str, str], base_text: str = "") -> tuple[NodeConfig, str]:
    """The node config for a container: BASE_TEXT (a config file's text) with the
    environment's fields on top, and nats-server run by its own container (nats.external).
    Returns the validated config and the YAML text to write for the services and the CLI."""
    try:
        docs = [d for d in yaml.safe_load_all(base_text) if d is not None] if base_text else []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{BASE_FILE_ENV}: not valid YAML: {exc}") from None
    node = next((d for d in docs if isinstance(d, dict) and d.get("kind", "NodeConfig") == "NodeConfig"), None)
    if node is None:
        node = {"kind": "NodeConfig"}
        docs.insert(0, node)
    for key, value in overrides(environ).items():
        if isinstance(value, dict):
            section = node.get(key)
            node[key] = {**(section if isinstance(section, dict) else {}), **value}
        else:
            node[key] = value
    node.setdefault("nats", {})
    if isinstance(node["nats"], dict):
        node["nats"]["external"] = True
    text = yaml.safe_dump_all(docs, sort_keys=False)
    try:
        config = parse_config(text)
    except ConfigError as exc:
        raise ConfigError(f"{_variable_for(str(exc))}{exc}") from None
    return config, text


def _variable_for(message: str) -> str:
    """'podCIDR: ...' -> 'CAPILLARY_POD_CIDR: ' when a variable sets that field."""
    where = message.split(":", 1)[0].split("[", 1)[0]       # cluster.routes[1] -> cluster.routes
    for variable, (section, name) in VARIABLES.items():
        if where == (f"{section}.{name}" if section else name):
            return f"{variable}: "
    return ""
