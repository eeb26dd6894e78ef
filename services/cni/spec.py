"""The CNI specification's side of the plugin: environment, network config, results, errors.

Pure: nothing here touches the kernel or the bus. Light: no dataclasses, YAML or schemas, as
the plugin imports this on every command (tests/unit/test_cni_imports.py). Versions: the plugin implements spec 1.1.0
and accepts network configs of 0.4.0 and 1.0.0 too; a result is shaped for the version the
config asked for (0.4.0 results carry ``version`` on each IP).
"""
from __future__ import annotations

import json
import re
from collections import namedtuple

from services.wire.names import DNS_LABEL, MAX_MTU, MIN_MTU, valid_ifname, valid_label_key, valid_label_value

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
PLUGIN_TYPE = "capillary"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# The spec's well-known error codes (0-99); see "Error" in SPEC.md.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
# Plugin-specific codes (100+).
CHECK_FAILED = 100
NODE_REFUSED = 101

HEX_ID = re.compile(r"^[0-9a-fA-F]{64}$")
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
ATTACHMENT_PREFIX = "cni/"
VALID_ATTACHMENTS = "cni.dev/valid-attachments"


class CniError(Exception):
    """An error the plugin reports as the spec's error JSON (and a non-zero exit)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# The spec's environment: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS (parsed), CNI_PATH.
Environment = namedtuple("Environment", "command container_id netns ifname args path",
                         defaults=("", "", "", {}, ""))


def parse_environment(environ: dict[str, str]) -> Environment:
    """The CNI_* variables; what COMMAND needs must be there and well formed (else code 4)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND: {command!r} is not one of {', '.join(COMMANDS)}")
    if command in ("VERSION",):
        return Environment(command)
    needs = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
             "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
             "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
             "GC": ("CNI_PATH",), "STATUS": ("CNI_PATH",)}[command]
    for name in needs:
        if not environ.get(name):
            raise CniError(INVALID_ENVIRONMENT, f"{name}: required for {command} but not set")
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID: {container_id!r} must be letters, digits, "
                                            "'_', '.' and '-', starting with a letter or digit")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and not valid_ifname(ifname):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME: {ifname!r} is not a valid interface name")
    netns = environ.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS: {netns!r} must be an absolute path")
    return Environment(command, container_id, netns, ifname, parse_args(environ.get("CNI_ARGS", "")),
                       environ.get("CNI_PATH", ""))


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS: ``KEY=VALUE`` pairs separated by ';' (as libcni joins them)."""
    out: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


# The network config: cniVersion, name; context (the NATS context file; default: the node's
# `cni` context), config (the node config file; default: $CAPILLARY_CONFIG, /etc/capillary),
# mtu (0: the kernel's), namespace (the pod namespace when the runtime passes none), labels
# (args.cni.labels), valid_attachments (GC: (container id, ifname) pairs) and prev_result
# (CHECK: the result of the ADD, as the runtime stored it).
NetConf = namedtuple("NetConf", "cni_version name context config mtu namespace labels valid_attachments "
                                "prev_result", defaults=("", "", 0, "", {}, (), None))


def parse_config(raw: bytes, command: str) -> NetConf:
    """The network config on stdin; a bad one is code 7 naming the field (code 1: version)."""
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        raise CniError(DECODE_FAILURE, f"network config on stdin is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CniError(INVALID_CONFIG, "network config must be a JSON object")
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion: required field is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion: {version} is not supported "
                                             f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    if command == "VERSION":
        return NetConf(version, "")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "name: required field is missing")
    if doc.get("type") != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"type: {doc.get('type')!r} is not {PLUGIN_TYPE!r}")
    return NetConf(version, name, context=_path(doc, "context"), config=_path(doc, "config"),
                   mtu=_mtu(doc), namespace=_namespace(doc), labels=_labels(doc),
                   valid_attachments=_attachments(doc) if command == "GC" else (),
                   prev_result=_prev_result(doc) if command == "CHECK" else None)


def _path(doc: dict, key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise CniError(INVALID_CONFIG, f"{key}: {value!r} must be an absolute path")
    return value


def _mtu(doc: dict) -> int:
    mtu = doc.get("mtu", 0)
    if type(mtu) is not int or (mtu and not MIN_MTU <= mtu <= MAX_MTU):
        raise CniError(INVALID_CONFIG, f"mtu: {mtu!r} must be an integer from {MIN_MTU} to {MAX_MTU}")
    return mtu


def _namespace(doc: dict) -> str:
    ns = doc.get("namespace", "")
    if not isinstance(ns, str) or (ns and (len(ns) > 63 or not DNS_LABEL.match(ns))):
        raise CniError(INVALID_CONFIG, f"namespace: {ns!r} is not a valid namespace name (a DNS label)")
    return ns


def _labels(doc: dict) -> dict[str, str]:
    """The ``args`` convention: ``"args": {"cni": {"labels": [{"key": K, "value": V}]}}``."""
    args = doc.get("args", {})
    cni = args.get("cni", {}) if isinstance(args, dict) else None
    items = cni.get("labels", []) if isinstance(cni, dict) else None
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, "args.cni.labels: must be a list of {key, value} objects")
    labels = {}
    for i, item in enumerate(items):
        where = f"args.cni.labels[{i}]"
        if not isinstance(item, dict) or set(item) - {"key", "value"}:
            raise CniError(INVALID_CONFIG, f"{where}: must be an object with key and value")
        key, value = item.get("key"), item.get("value")
        if not isinstance(key, str) or not valid_label_key(key):
            raise CniError(INVALID_CONFIG, f"{where}.key: {key!r} is not a valid label key")
        if not isinstance(value, str) or not valid_label_value(value):
            raise CniError(INVALID_CONFIG, f"{where}.value: {value!r} is not a valid label value")
        labels[key] = value
    return labels


def _attachments(doc: dict) -> tuple[tuple[str, str], ...]:
    items = doc.get(VALID_ATTACHMENTS)
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, f"{VALID_ATTACHMENTS}: required for GC, a list of "
                                       "{containerID, ifname} objects")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CniError(INVALID_CONFIG, f"{VALID_ATTACHMENTS}[{i}]: needs containerID and ifname strings")
        out.append((item["containerID"], item["ifname"]))
    return tuple(out)


def attachment(network: str, container_id: str, ifname: str) -> str:
    """The pod's spec.attachment for one CNI attachment: network, container and interface."""
    return f"{ATTACHMENT_PREFIX}{network}/{container_id}/{ifname}"


def split_attachment(handle: str) -> tuple[str, str, str] | None:
    """(network, container id, ifname) of a CNI attachment handle, else None."""
    if not handle.startswith(ATTACHMENT_PREFIX):
        return None
    parts = handle[len(ATTACHMENT_PREFIX):].rsplit("/", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def pod_name(env: Environment) -> str:
    """K8S_POD_NAME made a DNS label (podman passes the container's name, which may hold '_'),
    else the container id made one (ctr passes "<namespace>-<id>"), with a 64-digit hex id
    shortened to ``c-`` and its first 12 digits."""
    raw = env.args.get("K8S_POD_NAME", "") or env.container_id
    if HEX_ID.match(raw):
        return f"c-{raw[:12].lower()}"
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower())[:63].strip("-")
    return name or f"c-{env.container_id[:12].lower()}"


def pod_namespace(env: Environment, conf: NetConf) -> str:
    ns = env.args.get("K8S_POD_NAMESPACE", "") or conf.namespace or "default"
    if len(ns) > 63 or not DNS_LABEL.match(ns):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: K8S_POD_NAMESPACE={ns!r} is not a valid namespace name")
    return ns


def result(version: str, pod: dict, ifname: str, gateway: str, mtu: int = 0) -> dict:
    """The ADD result: host veth, container interface (in its sandbox), /32 and default route."""
    status = pod["status"]
    host = {"name": status["host_ifname"], "mac": status["host_mac"]}
    inner: dict = {"name": ifname, "mac": status["pod_mac"], "sandbox": status["netns"]}
    if mtu:
        host["mtu"] = inner["mtu"] = mtu
    ip: dict = {"address": f"{status['pod_ip']}/32", "gateway": gateway, "interface": 1}
    if version == "0.4.0":
        ip["version"] = "4"
    return {"cniVersion": version, "interfaces": [host, inner], "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": gateway}], "dns": {}}


def version_result() -> dict:
    return {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _prev_result(doc: dict) -> dict:
    prev = doc.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult: required for CHECK (the result of the ADD), an object")
    for key in ("interfaces", "ips", "routes"):
        items = prev.get(key, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise CniError(INVALID_CONFIG, f"prevResult.{key}: must be a list of objects")
    return prev


def _where(iface: dict) -> str:
    sandbox = iface.get("sandbox") or ""
    return f"interface {iface.get('name')} " + (f"in {sandbox}" if sandbox else "on the host")


def result_problems(prev: dict, now: dict) -> list[str]:
    """Where NOW (the result the attachment gives today, result() of its pod) departs from
    PREV (the ADD's result, as the runtime stored it): the interfaces and their MACs, the
    addresses and their gateways. Routes are left to the kernel check: a later plugin in
    the chain may have changed them (the spec allows it)."""
    problems = []
    before = {(i.get("name"), i.get("sandbox") or ""): i for i in prev.get("interfaces", [])}
    after = {(i["name"], i.get("sandbox") or ""): i for i in now["interfaces"]}
    for key, iface in after.items():
        was = before.get(key)
        if was is None:
            problems.append(f"{_where(iface)} is not in prevResult")
        elif str(was.get("mac", "")).lower() not in ("", iface["mac"].lower()):
            problems.append(f"{_where(iface)} has MAC {iface['mac']}, prevResult says {was['mac']}")
    problems += [f"{_where(was)} of prevResult is gone" for key, was in before.items() if key not in after]
    ips_before = {ip.get("address"): ip for ip in prev.get("ips", [])}
    ips_after = {ip["address"]: ip for ip in now["ips"]}
    for address, ip in ips_after.items():
        was = ips_before.get(address)
        if was is None:
            problems.append(f"address {address} is not in prevResult")
        elif was.get("gateway") not in (None, ip["gateway"]):
            problems.append(f"address {address} has gateway {ip['gateway']}, prevResult says {was['gateway']}")
    problems += [f"address {a} of prevResult is not the pod's" for a in ips_before if a not in ips_after]
    return problems
