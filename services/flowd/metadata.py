"""What flowd knows about the node to enrich flows: pods by address, identity labels, and the
policy rule table. Pure data built from the replies of endpointd (pod.list) and policyd
(identity.list, policy.rules); services/flowd/enrich.py keeps it fresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from services.wire.messages import Identity, Pod, PolicyRule

POLICY_LABEL = "k8s:io.cilium.k8s.policy"
PODS, IDENTITIES, RULES = "pods", "identities", "rules"       # the tables, by name
TABLES = (PODS, IDENTITIES, RULES)
UNKNOWN_RULE_KIND = "Unknown"       # a flow's rule whose rule_id the rule table lacks


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    ip: str
    endpoint_id: int
    identity: int
    ifindex: int
    ifname: str


def cilium_labels(labels: dict[str, str]) -> list[str]:
    """Identity labels as Cilium prints them: "k8s:app=web", "reserved:host" (no value)."""
    return sorted(f"{k}={v}" if v else k for k, v in labels.items())


def policy_labels(rule: PolicyRule) -> list[str]:
    """The labels Cilium gives a policy's rules (derived-from, name, namespace)."""
    out = [f"{POLICY_LABEL}.derived-from={rule.kind}", f"{POLICY_LABEL}.name={rule.name}"]
    if rule.namespace:
        out.append(f"{POLICY_LABEL}.namespace={rule.namespace}")
    return out


@dataclass
class Metadata:
    """Lookups the decoder uses. Invariant: every table is replaced whole, never edited, so
    a reader on the event loop never sees half of a refresh; `version` counts the
    replacements that changed something, so whatever was derived from the tables knows when
    it is stale (and a refresh that found nothing new keeps it fresh)."""

    pods_by_ip: dict[str, PodInfo] = field(default_factory=dict)
    pods_by_ifindex: dict[int, PodInfo] = field(default_factory=dict)
    endpoint_ids: frozenset[int] = frozenset()
    identities: dict[int, list[str]] = field(default_factory=dict)
    rules: dict[int, PolicyRule] = field(default_factory=dict)
    version: int = 0

    def set_pods(self, pods: list[dict]) -> None:
        table = {}
        for raw in pods:
            pod = Pod.from_wire(raw)
            st = pod.status
            table[st.pod_ip] = PodInfo(pod.spec.namespace, pod.spec.name, st.pod_ip, st.endpoint_id,
                                       st.identity, st.host_ifindex, st.host_ifname)
        if table != self.pods_by_ip:
            self._replace_pods(table)

    def put_pod(self, pod: Pod) -> None:
        """One pod created (an endpoint event): its row in, the tables replaced whole."""
        st = pod.status
        info = PodInfo(pod.spec.namespace, pod.spec.name, st.pod_ip, st.endpoint_id, st.identity,
                       st.host_ifindex, st.host_ifname)
        if self.pods_by_ip.get(st.pod_ip) != info:
            self._replace_pods({**self.pods_by_ip, st.pod_ip: info})

    def drop_pod(self, pod: Pod) -> None:
        """One pod deleted (an endpoint event): its row out. Its identity goes too unless
        another pod here has it: should the number be given to other labels next, a flow
        naming it finds it unknown and waits for a fetch, instead of taking the old labels."""
        st = pod.status
        if st.pod_ip in self.pods_by_ip:
            self._replace_pods({ip: p for ip, p in self.pods_by_ip.items() if ip != st.pod_ip})
        if st.identity in self.identities and all(p.identity != st.identity for p in self.pods_by_ip.values()):
            self.identities = {i: labels for i, labels in self.identities.items() if i != st.identity}
            self.version += 1

    def _replace_pods(self, table: dict[str, PodInfo]) -> None:
        self.pods_by_ip = table
        self.pods_by_ifindex = {p.ifindex: p for p in table.values()}
        self.endpoint_ids = frozenset(p.endpoint_id for p in table.values())
        self.version += 1

    def set_identities(self, identities: list[dict]) -> None:
        table = {}
        for raw in identities:
            ident = Identity.from_wire(raw)
            table[ident.id] = cilium_labels(ident.labels)
        if table != self.identities:
            self.identities = table
            self.version += 1

    def set_rules(self, rules: list[dict]) -> None:
        table = {r.rule_id: r for r in (PolicyRule.from_wire(raw) for raw in rules)}
        if table != self.rules:
            self.rules = table
            self.version += 1

    def unknown_identities(self, identities: tuple[int, ...]) -> list[int]:
        """Those of IDENTITIES the table does not know (0 stands for none)."""
        return [i for i in identities if i and i not in self.identities]

    def unknown(self, identities: tuple[int, ...], endpoint_id: int, rule_id: int) -> frozenset[str]:
        """The tables (TABLES) that do not know something an event names, and a fetch might:
        an identity, a local endpoint or a policy rule (0 stands for none of them)."""
        out = set()
        if self.unknown_identities(identities):
            out.add(IDENTITIES)
        if endpoint_id != 0 and endpoint_id not in self.endpoint_ids:
            out.add(PODS)
        if rule_id != 0 and rule_id not in self.rules:
            out.add(RULES)
        return frozenset(out)
