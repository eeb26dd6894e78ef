"""Policy documents (dicts loaded from YAML/JSON) -> model.Policy. Pure logic.

Three kinds, with their upstream semantics:

- NetworkPolicy (networking.k8s.io/v1), namespaced;
- CiliumNetworkPolicy (cilium.io/v2), namespaced: endpoint selectors in its rules only see
  the policy's namespace unless they name ``io.kubernetes.pod.namespace``;
- CiliumClusterwideNetworkPolicy (cilium.io/v2), no namespace, selectors see every namespace.

Errors read ``<Kind> <ns>/<name>: <field path>: <problem>``. Each Policy carries its
canonical stored form (``Policy.document``); parsing that form again gives an equal Policy and
no warnings. cilium.io/v1 and bare port numbers in toPorts (as in the seed article) are
accepted, rewritten to that form, and reported in one warning that shows it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from services.policyd.compiler import keys_per_peer
from services.policyd.fields import (FieldError, boolean, cidr_peer, end_port, join, label_key,
                                     labels, listing, mapping, network, plain_cidr_peer, port_value,
                                     required, selector, show, string)
from services.policyd.model import (EGRESS, ENTITIES, INGRESS, PackedDocument, Peer, Policy, PortRule, Rule,
                                    Selector, plain_document)
from services.wire import codec
from services.wire.labels import AUDIT_ANNOTATION, POD_NAMESPACE, SOURCE
from services.wire.limits import LimitError, check_tree
from services.wire.manifests import DEFAULT_NAMESPACE, DNS_LABEL, DNS_SUBDOMAIN

NETWORK_POLICY = "NetworkPolicy"
CNP = "CiliumNetworkPolicy"
CCNP = "CiliumClusterwideNetworkPolicy"
K8S_API = "networking.k8s.io/v1"
CILIUM_API = "cilium.io/v2"
CILIUM_V1 = "cilium.io/v1"               # old; normalized to cilium.io/v2 with a warning
API_OF = {NETWORK_POLICY: K8S_API, CNP: CILIUM_API, CCNP: CILIUM_API}
POLICY_KINDS = frozenset({(K8S_API, NETWORK_POLICY), (CILIUM_API, CNP), (CILIUM_API, CCNP),
                          (CILIUM_V1, CNP), (CILIUM_V1, CCNP)})

_TOP_FIELDS = {NETWORK_POLICY: ("apiVersion", "kind", "metadata", "spec", "status"),
               CNP: ("apiVersion", "kind", "metadata", "spec", "specs", "status"),
               CCNP: ("apiVersion", "kind", "metadata", "spec", "specs", "status")}
_META_FIELDS = ("name", "namespace", "labels", "annotations")
_K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")
_CILIUM_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
_NAMESPACE_KEY = f"{SOURCE}:{POD_NAMESPACE}"

# Cilium rule object: its four rule lists -> (direction, deny)
_CILIUM_LISTS = {"ingress": (INGRESS, False), "ingressDeny": (INGRESS, True),
                 "egress": (EGRESS, False), "egressDeny": (EGRESS, True)}
_CILIUM_PEERS = {INGRESS: ("fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet"),
                 EGRESS: ("toEndpoints", "toEntities", "toCIDR", "toCIDRSet")}
# Real Cilium fields capillary does not implement: refused by name rather than as unknown.
_CILIUM_UNSUPPORTED = {INGRESS: ("fromRequires", "fromGroups", "fromNodes", "authentication"),
                       EGRESS: ("toRequires", "toGroups", "toNodes", "toServices", "toFQDNs",
                                "authentication")}
_L7_FIELDS = ("rules", "terminatingTLS", "originatingTLS", "serverNames", "listener")
# Peers x map keys per peer (a port range is several keys) over every rule of one policy: what
# policyd compiles for each endpoint the policy selects, under its lock. A policy over it is
# refused as a whole (split it). Real allow-lists run to tens of thousands of CIDRs (and the
# policy map to millions of entries), so the bound is on cost, not on ordinary use: at this
# size one endpoint's compile is still well under a second.
MAX_POLICY_TERMS = 262_144
MAX_POLICY_VALUES = 1_000_000            # maps, lists and scalars in one policy document


class PolicyError(ValueError):
    def __init__(self, where: str, path: str, problem: str) -> None:
        super().__init__(f"{where}: {path}: {problem}")
        self.where, self.path, self.problem = where, path, problem


@dataclass(frozen=True)
class Parsed:
    policy: Policy
    warnings: list[str]


def parse_policy(doc: dict, owned: bool = False) -> Parsed:
    """DOC as a Policy. OWNED: the caller hands DOC over (a request body nothing else holds):
    a Cilium shorthand is rewritten in place, and the policy keeps its canonical document
    packed (model.PackedDocument), where otherwise DOC is copied (a 100,000-peer policy is
    ~50 MB of objects)."""
    if not isinstance(doc, dict):
        raise PolicyError("policy", "document", f"expected a mapping, got {type(doc).__name__}")
    where = _where(doc)
    try:
        check_tree(doc, "document", max_nodes=MAX_POLICY_VALUES)
    except LimitError as exc:
        raise PolicyError(where, "document", str(exc).removeprefix("document: ")) from None
    try:
        return _parse(doc, where, owned)
    except FieldError as exc:
        raise PolicyError(where, exc.path, exc.problem) from None


def _parse(doc: dict, where: str, owned: bool) -> Parsed:
    kind = _kind(doc)
    notes: list[str] = []
    mine = owned                    # may DOC's parts be kept and changed?
    if kind != NETWORK_POLICY:
        doc, mine = (doc if owned else _copy(doc)), True
        notes = _normalize_cilium(doc)
    mapping(doc, "", _TOP_FIELDS[kind])
    name, namespace, meta = _metadata(doc, kind)
    if kind == NETWORK_POLICY:
        subject, enforces, rules = _network_policy(doc, namespace)
    else:
        subject, enforces, rules = _cilium_policy(doc, namespace or None)
    terms = sum(max(1, len(rule.peers)) * keys_per_peer(rule.ports) for rule in rules)
    if terms > MAX_POLICY_TERMS:
        raise FieldError("spec", f"{terms} peer and port combinations over all rules are over the "
                                 f"limit of {MAX_POLICY_TERMS} for one policy (split it)")
    document = _canonical(doc, kind, meta, mine)
    if owned:
        document = PackedDocument(codec.encode(document))   # the caller lets DOC go: keep it packed
    policy = Policy(kind=kind, name=name, namespace=namespace, subject=subject,
                    enforces=frozenset(enforces), rules=tuple(rules),
                    audit=meta.get("annotations", {}).get(AUDIT_ANNOTATION) == "true",
                    document=document)
    warnings = []
    if notes:
        warnings.append(f"{where}: accepted shorthand: {'; '.join(notes)}. Stored in canonical form:\n"
                        + yaml.safe_dump(plain_document(document), sort_keys=False))
    return Parsed(policy, warnings)


# ---- header and metadata -------------------------------------------------------------------

def policy_key_of(doc: Any) -> str | None:
    """The Policy.key parsing DOC would give, read without parsing it (a 100,000-peer policy
    takes a while to parse: its applies queue by key as they arrive); None when DOC has no
    kind or name to read, which parsing refuses."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    if kind == CCNP:
        return f"{kind}/{meta['name']}"
    namespace = DEFAULT_NAMESPACE if meta.get("namespace") is None else meta["namespace"]
    return f"{kind}/{namespace}/{meta['name']}" if isinstance(namespace, str) and namespace else None


def _where(doc: dict) -> str:
    """'<Kind> <ns>/<name>' from whatever the document holds, for error messages."""
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) and doc.get("kind") else "policy"
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else "?"
    ns = meta.get("namespace")
    if not isinstance(ns, str) or not ns:
        ns = DEFAULT_NAMESPACE if kind in (NETWORK_POLICY, CNP) else None
    return f"{kind} {ns}/{name}" if ns and kind != CCNP else f"{kind} {name}"


def _kind(doc: dict) -> str:
    kind = required(doc, "kind", "")
    if not isinstance(kind, str) or kind not in API_OF:
        raise FieldError("kind", f"{show(kind)} is not a policy kind ({', '.join(API_OF)})")
    api = required(doc, "apiVersion", "")
    if not isinstance(api, str) or (api, kind) not in POLICY_KINDS:
        raise FieldError("apiVersion", f"{show(api)} is not supported for {kind} (use {API_OF[kind]})")
    return kind


def _metadata(doc: dict, kind: str) -> tuple[str, str, dict]:
    """(name, namespace or "", canonical metadata)."""
    meta = mapping(required(doc, "metadata", ""), "metadata", _META_FIELDS)
    name = string(required(meta, "name", "metadata"), "metadata.name")
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        raise FieldError("metadata.name", f"{show(name)} is not a valid name (a DNS subdomain: "
                                          "lowercase letters, digits, '-' and '.')")
    out: dict[str, Any] = {"name": name}
    namespace = ""
    if kind == CCNP:
        if meta.get("namespace") is not None:
            raise FieldError("metadata.namespace", f"{CCNP} is cluster-wide and has no namespace")
    else:
        namespace = meta.get("namespace")
        if namespace is None:
            namespace = DEFAULT_NAMESPACE
        if not isinstance(namespace, str) or len(namespace) > 63 or not DNS_LABEL.match(namespace):
            raise FieldError("metadata.namespace", f"{show(namespace)} is not a valid namespace name")
        out["namespace"] = namespace
    meta_labels = labels(meta.get("labels"), "metadata.labels")
    annotations = _annotations(meta.get("annotations"), "metadata.annotations")
    if meta_labels:
        out["labels"] = meta_labels
    if annotations:
        out["annotations"] = annotations
    return name, namespace, out


def _annotations(obj: Any, path: str) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise FieldError(path, "expected a mapping of strings")
    for key, value in obj.items():
        label_key(key, path)                     # annotation keys follow the label key rules
        string(value, join(path, key))
    audit = obj.get(AUDIT_ANNOTATION)
    if audit is not None and audit not in ("true", "false"):
        raise FieldError(join(path, AUDIT_ANNOTATION), f'{show(audit)} must be "true" or "false"')
    return dict(obj)


def _canonical(doc: dict, kind: str, meta: dict, owned: bool) -> dict:
    out = {"apiVersion": API_OF[kind], "kind": kind, "metadata": meta}
    for key in ("spec", "specs"):
        if doc.get(key) is not None:
            out[key] = doc[key] if owned else _copy(doc[key])
    return out


def _copy(value):
    """A copy of a document part: through msgpack (C speed, a 100,000-peer spec in a tenth
    of deepcopy's time) when it holds only what msgpack does, else deepcopy."""
    try:
        return codec.decode(codec.encode({"v": value}))["v"]
    except (TypeError, ValueError, OverflowError, codec.DecodeError):
        return copy.deepcopy(value)


# ---- Kubernetes NetworkPolicy --------------------------------------------------------------

def _network_policy(doc: dict, namespace: str) -> tuple[Selector, set[str], list[Rule]]:
    spec = mapping(required(doc, "spec", ""), "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    subject = selector(required(spec, "podSelector", "spec"), "spec.podSelector", sourced=False)
    enforces = _policy_types(spec)
    rules = []
    for direction, key, peers_key in ((INGRESS, "ingress", "from"), (EGRESS, "egress", "to")):
        for i, raw in enumerate(listing(spec.get(key), f"spec.{key}")):
            rule = _k8s_rule(raw, f"spec.{key}[{i}]", direction, peers_key, namespace, i)
            if direction in enforces:     # Kubernetes ignores rules of a direction policyTypes omits
                rules.append(rule)
    return subject, enforces, rules


def _policy_types(spec: dict) -> set[str]:
    types = listing(spec.get("policyTypes"), "spec.policyTypes")
    for i, value in enumerate(types):
        if value not in ("Ingress", "Egress"):
            raise FieldError(f"spec.policyTypes[{i}]", f"{show(value)} is not a policy type (use Ingress or Egress)")
    if types:
        return {value.lower() for value in types}
    # Kubernetes' defaulting (SetDefaults_NetworkPolicy): Ingress always, Egress when there is
    # at least one egress rule. `egress: []` is no rule, so it does not enforce egress.
    return {INGRESS, EGRESS} if listing(spec.get("egress"), "spec.egress") else {INGRESS}


def _k8s_rule(raw: Any, path: str, direction: str, peers_key: str, namespace: str, index: int) -> Rule:
    rule = mapping(raw, path, (peers_key, "ports"))
    peers_path, ports_path = join(path, peers_key), join(path, "ports")
    peers = tuple(_k8s_peer(p, peers_path, j, namespace)
                  for j, p in enumerate(listing(rule.get(peers_key), peers_path)))
    ports = tuple(_k8s_port(p, f"{ports_path}[{j}]")
                  for j, p in enumerate(listing(rule.get("ports"), ports_path)))
    return Rule(direction=direction, deny=False, peers=peers, ports=ports, index=index)


def _k8s_peer(raw: Any, peers_path: str, index: int, namespace: str) -> Peer:
    if type(raw) is dict and len(raw) == 1 and (plain := plain_cidr_peer(raw.get("ipBlock"))) is not None:
        return plain
    path = f"{peers_path}[{index}]"
    peer = mapping(raw, path, ("podSelector", "namespaceSelector", "ipBlock"))
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if peer.get("ipBlock") is not None:
        if pods is not None or namespaces is not None:
            raise FieldError(join(path, "ipBlock"), "cannot be combined with podSelector or namespaceSelector")
        return cidr_peer(peer["ipBlock"], join(path, "ipBlock"), strict_subset=True)
    if pods is None and namespaces is None:
        raise FieldError(path, "must specify podSelector, namespaceSelector or ipBlock")
    pod_sel = None if pods is None else selector(pods, join(path, "podSelector"), sourced=False)
    if namespaces is None:
        return Peer(pods=pod_sel, namespace=namespace)
    return Peer(pods=pod_sel, namespaces=selector(namespaces, join(path, "namespaceSelector"), sourced=False))


def _k8s_port(raw: Any, path: str) -> PortRule:
    entry = mapping(raw, path, ("protocol", "port", "endPort"))
    protocol = entry.get("protocol")
    if protocol is None:
        protocol = "TCP"
    if protocol not in _K8S_PROTOCOLS:
        raise FieldError(join(path, "protocol"), f"{show(protocol)} is not a protocol (use TCP, UDP or SCTP)")
    port = 0 if entry.get("port") is None else port_value(entry["port"], join(path, "port"), cilium=False)
    return PortRule(protocol, port, end_port(entry.get("endPort"), port, join(path, "endPort")))


# ---- Cilium --------------------------------------------------------------------------------

def _rule_objects(doc: dict) -> list[tuple[str, dict]]:
    """The rule objects of `spec` and `specs` (Cilium accepts both, together)."""
    objects = []
    if doc.get("spec") is not None:
        objects.append(("spec", doc["spec"]))
    for i, obj in enumerate(listing(doc.get("specs"), "specs")):
        objects.append((f"specs[{i}]", obj))
    if not objects:
        raise FieldError("spec", "required field is missing")
    return objects


def _cilium_policy(doc: dict, namespace: str | None) -> tuple[Selector, set[str], list[Rule]]:
    """NAMESPACE: the policy's (CiliumNetworkPolicy) or None (cluster-wide)."""
    subject: Selector | None = None
    enforces: set[str] = set()
    rules: list[Rule] = []
    offsets = dict.fromkeys(_CILIUM_LISTS, 0)   # with `specs`, indexes continue across objects
    for path, raw in _rule_objects(doc):
        obj = mapping(raw, path, ("endpointSelector", *_CILIUM_LISTS, "description", "labels",
                                  "enableDefaultDeny"), ("nodeSelector", "log"))
        sel_path = join(path, "endpointSelector")
        sel = selector(required(obj, "endpointSelector", path), sel_path, sourced=True)
        if subject is not None and sel != subject:
            raise FieldError(sel_path, "specs with different endpointSelectors are not supported "
                                       "(write one policy per endpointSelector)")
        subject = sel
        _rule_object_extras(obj, path)
        lists = {key: listing(obj.get(key), join(path, key)) for key in _CILIUM_LISTS}
        enforces |= _cilium_enforces(obj, lists, path)
        for key, (direction, deny) in _CILIUM_LISTS.items():
            entries = lists[key]
            for i, entry in enumerate(entries):
                rule = _cilium_rule(entry, f"{path}.{key}[{i}]", direction, deny, namespace, offsets[key] + i)
                if rule is not None:
                    rules.append(rule)
            offsets[key] += len(entries)
    assert subject is not None
    return subject, enforces, rules


def _rule_object_extras(obj: dict, path: str) -> None:
    if obj.get("description") is not None:
        string(obj["description"], join(path, "description"))
    labels_path = join(path, "labels")
    for i, item in enumerate(listing(obj.get("labels"), labels_path)):
        entry = mapping(item, f"{labels_path}[{i}]", ("key", "value", "source"))
        string(required(entry, "key", f"{labels_path}[{i}]"), f"{labels_path}[{i}].key")
        for key in ("value", "source"):
            if entry.get(key) is not None:
                string(entry[key], f"{labels_path}[{i}].{key}")


def _cilium_enforces(obj: dict, lists: dict[str, list], path: str) -> set[str]:
    """Cilium (Rule.Sanitize): a direction goes default-deny when the rule has at least one
    allow or deny rule for it; enableDefaultDeny.<direction>, when set, decides instead."""
    if not any(lists.values()):
        # Cilium's Rule.Validate refuses these too; an empty list counts as no rule.
        raise FieldError(path, "needs at least one ingress, ingressDeny, egress or egressDeny rule")
    default_deny = mapping(obj.get("enableDefaultDeny"), join(path, "enableDefaultDeny"), (INGRESS, EGRESS))
    out = set()
    for direction in (INGRESS, EGRESS):
        explicit = default_deny.get(direction)
        if explicit is not None:
            enforced = boolean(explicit, join(path, f"enableDefaultDeny.{direction}"))
        else:
            enforced = bool(lists[direction] or lists[f"{direction}Deny"])
        if enforced:
            out.add(direction)
    return out


def _cilium_rule(raw: Any, path: str, direction: str, deny: bool, namespace: str | None,
                 index: int) -> Rule | None:
    """One ingress/egress(Deny) entry; None when it selects nothing."""
    peer_keys = _CILIUM_PEERS[direction]
    rule = mapping(raw, path, (*peer_keys, "toPorts", "icmps"), _CILIUM_UNSUPPORTED[direction])
    present = [key for key in peer_keys if listing(rule.get(key), join(path, key))]
    if len(present) > 1:
        # Cilium: "combining fromEndpoints and fromCIDR is not supported yet"
        raise FieldError(path, f"{present[0]} and {present[1]} cannot be combined in one rule "
                               "(Cilium refuses this too): write two rules")
    to_ports = listing(rule.get("toPorts"), join(path, "toPorts"))
    icmps = listing(rule.get("icmps"), join(path, "icmps"))
    if to_ports and icmps:
        raise FieldError(path, "toPorts and icmps cannot be combined in one rule "
                               "(Cilium refuses this too): write two rules")
    peers = tuple(_cilium_peers(rule, path, peer_keys, namespace))
    ports = tuple(_cilium_ports(to_ports, join(path, "toPorts"), deny)) + \
        tuple(_icmps(icmps, join(path, "icmps")))
    if not peers and not ports:
        # `ingress: [{}]`: Cilium's "deny all" idiom. The entry allows (or denies) nothing;
        # it only puts the direction into default deny, which _cilium_enforces counted.
        return None
    return Rule(direction, deny, peers, ports, index)


def _cilium_peers(rule: dict, path: str, keys: tuple[str, ...], namespace: str | None) -> Iterator[Peer]:
    for key in keys:
        form = key.removeprefix("from").removeprefix("to")
        for i, item in enumerate(listing(rule.get(key), join(path, key))):
            if form == "CIDRSet" and (plain := plain_cidr_peer(item)) is not None:
                yield plain
                continue
            item_path = f"{path}.{key}[{i}]"
            if form == "Endpoints":
                sel = selector(item, item_path, sourced=True)
                # As Cilium does: a CiliumNetworkPolicy's selectors see its own namespace unless
                # they name the pod namespace label themselves.
                scoped = namespace is not None and _NAMESPACE_KEY not in sel.keys()
                yield Peer(pods=sel, namespace=namespace if scoped else None)
            elif form == "Entities":
                if item not in ENTITIES:
                    raise FieldError(item_path, f"{show(item)} is not a supported entity "
                                                f"(supported: {', '.join(ENTITIES)})")
                yield Peer(entity=item)
            elif form == "CIDR":
                yield Peer(cidr=str(network(item, item_path, bare_address=True)))
            else:
                yield cidr_peer(item, item_path, strict_subset=False,
                                unsupported=("cidrGroupRef", "cidrGroupSelector"))


def _cilium_ports(entries: list, path: str, deny: bool) -> Iterator[PortRule]:
    for i, raw in enumerate(entries):
        entry_path = f"{path}[{i}]"
        entry = mapping(raw, entry_path, ("ports",), () if deny else _L7_FIELDS)
        ports = listing(required(entry, "ports", entry_path), join(entry_path, "ports"))
        if not ports:
            raise FieldError(join(entry_path, "ports"), "must not be empty")
        for j, port in enumerate(ports):
            yield _cilium_port(port, f"{entry_path}.ports[{j}]")


def _cilium_port(raw: Any, path: str) -> PortRule:
    entry = mapping(raw, path, ("port", "endPort", "protocol"))
    protocol = entry.get("protocol")
    if protocol is None:
        protocol = "ANY"                          # Cilium's default
    if protocol not in _CILIUM_PROTOCOLS:
        raise FieldError(join(path, "protocol"), f"{show(protocol)} is not supported "
                                                 "(use TCP, UDP, SCTP or ANY; ICMP goes in icmps)")
    port = port_value(required(entry, "port", path), join(path, "port"), cilium=True)
    return PortRule(protocol, port, end_port(entry.get("endPort"), port, join(path, "endPort")))


def _icmps(entries: list, path: str) -> Iterator[PortRule]:
    for i, raw in enumerate(entries):
        entry_path = f"{path}[{i}]"
        entry = mapping(raw, entry_path, ("fields",))
        fields = listing(required(entry, "fields", entry_path), join(entry_path, "fields"))
        if not fields:
            raise FieldError(join(entry_path, "fields"), "must not be empty")
        for j, raw_field in enumerate(fields):
            field_path = f"{entry_path}.fields[{j}]"
            field = mapping(raw_field, field_path, ("type", "family"))
            family = field.get("family")
            if family == "IPv6":
                raise FieldError(join(field_path, "family"), "IPv6 is not supported")
            if family not in (None, "IPv4"):
                raise FieldError(join(field_path, "family"), f"{show(family)} is not a family (use IPv4)")
            icmp_type = required(field, "type", field_path)
            if isinstance(icmp_type, bool) or not isinstance(icmp_type, int) or not 0 <= icmp_type <= 255:
                raise FieldError(join(field_path, "type"), f"{show(icmp_type)} is not an ICMP type (0-255)")
            yield PortRule("ICMP", icmp_type)


# ---- cilium.io/v1 and the toPorts shorthand ------------------------------------------------

def _normalize_cilium(doc: dict) -> list[str]:
    """Rewrite DOC (the parser's own copy) in cilium.io/v2 form; a note for each shorthand it
    used. Shapes it does not recognise are left alone for the parser to report."""
    notes = []
    if doc.get("apiVersion") == CILIUM_V1:
        doc["apiVersion"] = CILIUM_API
        notes.append(f"apiVersion {CILIUM_V1} (now {CILIUM_API})")
    bare = False
    for path, rule in _raw_rules(doc):
        entries = rule.get("toPorts")
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if _is_bare_port(entry):
                port = port_value(int(entry), f"{path}.toPorts[{i}]", cilium=False)
                entries[i] = {"ports": [{"port": str(port), "protocol": "TCP"}]}
                bare = True
            elif isinstance(entry, dict) and isinstance(entry.get("ports"), list):
                for port in entry["ports"]:
                    # Cilium's CRD types port as a string; a YAML number is stored as one.
                    if isinstance(port, dict) and type(port.get("port")) is int and 0 <= port["port"] <= 65535:
                        port["port"] = str(port["port"])
    if bare:
        notes.append('bare port numbers in toPorts (each means ports: [{port: "N", protocol: TCP}])')
    return notes


def _is_bare_port(entry: Any) -> bool:
    return type(entry) is int or (isinstance(entry, str) and entry.isascii() and entry.isdigit()
                                  and len(entry) <= 10)


def _raw_rules(doc: dict) -> Iterator[tuple[str, dict]]:
    objects = [("spec", doc.get("spec"))]
    if isinstance(doc.get("specs"), list):
        objects += [(f"specs[{i}]", obj) for i, obj in enumerate(doc["specs"])]
    for path, obj in objects:
        if not isinstance(obj, dict):
            continue
        for key in _CILIUM_LISTS:
            rules = obj.get(key)
            for i, rule in enumerate(rules if isinstance(rules, list) else []):
                if isinstance(rule, dict):
                    yield f"{path}.{key}[{i}]", rule
