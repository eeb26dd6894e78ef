"""Field checks shared by every policy kind: shapes, selectors, CIDRs, ports. Pure logic.

Each check raises FieldError(path, problem) with the full field path, e.g.
``spec.ingress[0].toPorts[0].ports[0].port``; services.policyd.parse prefixes the document.
Values in messages are shown as JSON (strings in double quotes, numbers bare).
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterable

from services.wire import prefix

from services.policyd.model import OPERATORS, Peer, Requirement, Selector
from services.wire.manifests import LABEL_VALUE, valid_label_key

# A port given by name ("http"). Kubernetes resolves names against the container ports a pod
# declares; capillary pods declare none, so a named port never resolves here and such a
# PortRule matches no traffic. It is kept (not dropped) so the rule still counts for
# enforcement and shows up in listings.
NAMED_PORT = -1
SELECTOR_SOURCES = ("k8s", "any")        # the label sources a Cilium selector key may name
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
_DIGITS = re.compile(r"^[0-9]+\Z")
_PREFIX = re.compile(r"^[^/]+/[0-9]{1,3}\Z")


class FieldError(ValueError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


MAX_LIST = 131_072    # items in any one list of a policy: a 100,000-CIDR allow-list next to its pod selectors


def show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"(a number of {value.bit_length()} bits)"     # str() refuses over 4300 digits
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 320 else f"{text[:320]}..."


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"),
                       (str, "a string"), (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


# ---- shapes --------------------------------------------------------------------------------

def mapping(obj: Any, path: str, allowed: Iterable[str], unsupported: Iterable[str] = ()) -> dict:
    """OBJ as a mapping with only ALLOWED keys (None reads as {}). Keys in UNSUPPORTED are
    real fields of the upstream kind that capillary does not implement."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise FieldError(path or "document", f"expected a mapping, got {_type_name(obj)}")
    allowed, unsupported = set(allowed), set(unsupported)
    for key in obj:
        name = key if isinstance(key, str) else show(key)
        if key in unsupported:
            raise FieldError(join(path, name), "is not supported by capillary")
        if key not in allowed:
            raise FieldError(join(path, name), "unknown field")
    return obj


def listing(obj: Any, path: str) -> list:
    """OBJ as a list (None reads as [])."""
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise FieldError(path, f"expected a list, got {_type_name(obj)}")
    if len(obj) > MAX_LIST:
        raise FieldError(path, f"{len(obj)} items is over the limit of {MAX_LIST}")
    return obj


def string(obj: Any, path: str) -> str:
    if not isinstance(obj, str):
        raise FieldError(path, f"expected a string, got {_type_name(obj)}")
    return obj


def boolean(obj: Any, path: str) -> bool:
    if not isinstance(obj, bool):
        raise FieldError(path, f"expected true or false, got {_type_name(obj)}")
    return obj


def required(obj: dict, key: str, path: str) -> Any:
    if obj.get(key) is None:
        raise FieldError(join(path, key), "required field is missing")
    return obj[key]


# ---- labels and selectors ------------------------------------------------------------------

def label_key(key: Any, path: str, *, sourced: bool = False) -> None:
    """A Kubernetes label key; with SOURCED, a Cilium key that may start with k8s: or any:."""
    name = key
    if sourced and isinstance(key, str) and ":" in key:
        source, _, name = key.partition(":")
        if source not in SELECTOR_SOURCES:
            raise FieldError(path, f'{show(key)}: label source "{source}" is not supported (use k8s: or any:)')
    if not isinstance(name, str) or not valid_label_key(name):
        raise FieldError(path, f"{show(key)} is not a valid label key")


def label_value(value: Any, path: str) -> str:
    if not isinstance(value, str):
        # Kubernetes refuses these too: YAML turns 1.10 into the number 1.1, true into a bool.
        raise FieldError(path, "value must be a string (quote it)")
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise FieldError(path, f"{show(value)} is not a valid label value")
    return value


def labels(obj: Any, path: str, *, sourced: bool = False) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise FieldError(path, f"expected a mapping, got {_type_name(obj)}")
    out = {}
    for key, value in obj.items():
        label_key(key, path, sourced=sourced)
        out[key] = label_value(value, join(path, key))
    return out


def selector(obj: Any, path: str, *, sourced: bool) -> Selector:
    """A label selector. SOURCED: Cilium's, whose keys may carry a k8s:/any: source."""
    sel = mapping(obj, path, ("matchLabels", "matchExpressions"))
    match_labels = labels(sel.get("matchLabels"), join(path, "matchLabels"), sourced=sourced)
    exprs_path = join(path, "matchExpressions")
    exprs = [_requirement(item, f"{exprs_path}[{i}]", sourced)
             for i, item in enumerate(listing(sel.get("matchExpressions"), exprs_path))]
    return Selector.of(match_labels, exprs)


def _requirement(obj: Any, path: str, sourced: bool) -> Requirement:
    req = mapping(obj, path, ("key", "operator", "values"))
    key = required(req, "key", path)
    label_key(key, join(path, "key"), sourced=sourced)
    op = required(req, "operator", path)
    if op not in OPERATORS:
        raise FieldError(join(path, "operator"),
                         f"{show(op)} is not a valid operator (use In, NotIn, Exists or DoesNotExist)")
    values_path = join(path, "values")
    values = listing(req.get("values"), values_path)
    if op in ("In", "NotIn") and not values:
        raise FieldError(values_path, f"must not be empty for operator {op}")
    if op in ("Exists", "DoesNotExist") and values:
        raise FieldError(values_path, f"must be empty for operator {op}")
    return Requirement(key, op, tuple(label_value(v, f"{values_path}[{i}]") for i, v in enumerate(values)))


# ---- CIDRs ---------------------------------------------------------------------------------

def network(value: Any, path: str, *, bare_address: bool = False) -> ipaddress.IPv4Network:
    """An IPv4 CIDR in address/prefix notation with no host bits set. BARE_ADDRESS: a lone
    address also reads as a /32 (Cilium's fromCIDR/toCIDR allow that)."""
    text = string(value, path)
    if bare_address and "/" not in text:
        text += "/128" if ":" in text else "/32"
    plain = prefix.parse(text)
    if plain is not None and not prefix.host_bits(*plain):
        return ipaddress.IPv4Network(plain)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        net = None
    if net is None or not _PREFIX.match(text):
        raise FieldError(path, f"{show(value)} is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)")
    if net.version == 6:
        raise FieldError(path, f"{show(value)}: IPv6 is not supported")
    try:
        ipaddress.ip_network(text)          # strict: no host bits, as Kubernetes documents
    except ValueError:
        raise FieldError(path, f"{show(value)} has host bits set (the network is {net})") from None
    return net


def plain_cidr_peer(obj: Any) -> Peer | None:
    """The Peer of an ipBlock / CIDRSet item that is just {cidr: "a.b.c.d/n"} in its one
    spelling (what an allow-list of 100,000 peers is made of), read without building an
    IPv4Network or a field path; None for every other form, which cidr_peer reads."""
    if type(obj) is not dict or len(obj) != 1:
        return None
    text = obj.get("cidr")
    if type(text) is not str:
        return None
    plain = prefix.parse(text)
    return Peer(cidr=text) if plain is not None and not prefix.host_bits(*plain) else None


def cidr_peer(obj: Any, path: str, *, strict_subset: bool, unsupported: Iterable[str] = ()) -> Peer:
    """{cidr, except} -> Peer. Every except must lie inside cidr; STRICT_SUBSET (Kubernetes)
    also refuses an except equal to the cidr."""
    block = mapping(obj, path, ("cidr", "except"), unsupported)
    cidr = required(block, "cidr", path)
    net = network(cidr, join(path, "cidr"))
    excepts = []
    except_path = join(path, "except")
    for i, item in enumerate(listing(block.get("except"), except_path)):
        ex = network(item, f"{except_path}[{i}]")
        if not ex.subnet_of(net) or (strict_subset and ex == net):
            inside = "strictly inside" if strict_subset else "inside"
            raise FieldError(f"{except_path}[{i}]", f"{show(item)} is not {inside} cidr {show(cidr)}")
        excepts.append(str(ex))
    return Peer(cidr=str(net), except_=tuple(excepts))


# ---- ports ---------------------------------------------------------------------------------

def is_port_name(name: str) -> bool:
    """An IANA service name: 1-15 of [a-z0-9-], at least one letter, no leading, trailing
    or doubled '-'."""
    return (0 < len(name) <= 15 and bool(_PORT_NAME.match(name)) and "--" not in name
            and any(c.isalpha() for c in name))


def port_value(value: Any, path: str, *, cilium: bool) -> int:
    """A port number, or NAMED_PORT for a name.

    Kubernetes (IntOrString): a number 1-65535 or a lowercase name; "80" is neither.
    Cilium (a string in its CRD): a number 0-65535 as a string or a number, 0 meaning every
    port, or a name in any case (Cilium lower-cases names).
    """
    if isinstance(value, str):
        if cilium and _DIGITS.match(value) and (value == "0" or not value.startswith("0")):
            value = int(value)
        elif is_port_name(value.lower() if cilium else value):
            return NAMED_PORT
        else:
            raise FieldError(path, f"{show(value)} is not a port number or name")
    lowest = 0 if cilium else 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(path, f"{show(value)} is not a port number or name")
    if not lowest <= value <= 65535:
        raise FieldError(path, f"{show(value)} is not a port number ({lowest}-65535)")
    return value


def end_port(value: Any, port: int, path: str) -> int:
    """endPort (0: absent) for a range starting at PORT."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise FieldError(path, f"{show(value)} is not a port number (1-65535)")
    if port == NAMED_PORT:
        raise FieldError(path, "cannot be used with a named port")
    if port == 0:
        raise FieldError(path, "needs a port number in port")
    if value < port:
        raise FieldError(path, f"{value} is less than port {port}")
    return value
