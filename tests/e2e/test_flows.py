"""Flow visibility on a real node: every datapath decision becomes a Hubble-style flow on
NATS. Real TCP and UDP connections and pings between pods, under policies that allow some
and deny others; the flows that arrive on capillary.flows.<node>.<VERDICT> are compared
with exactly the ones expected, then read back through `capillary observe`."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.e2e.flow_model import L3_L4, L3_ONLY, NONE, denied_new, forward, ref, reply, shape, verdict
from tests.support.flows import FlowCollector
from tests.support.node import REPO, docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, ping, probe

C, S, O = "fl/client", "fl/server", "fl/other"
SERVER_POLICY = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "server-ingress", "namespace": "fl"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"},
                                                 {"port": "80", "protocol": "UDP"}]}]}],
             "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "other"}}]}]}}
CLIENT_POLICY = {   # audit mode: what it would drop passes, reported as AUDIT
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "client-egress", "namespace": "fl",
                 "annotations": {"policy.capillary.io/audit": "true"}},
    "spec": {"endpointSelector": {"matchLabels": {"app": "client"}},
             "egress": [{"toEndpoints": [{"matchLabels": {"app": "server"}}]}]}}


SYN, SYNACK, ACK, PSH, FIN = ("TCP Flags: SYN", "TCP Flags: SYN, ACK", "TCP Flags: ACK",
                              "TCP Flags: ACK, PSH", "TCP Flags: ACK, FIN")
REQ, REP = "ICMPv4 EchoRequest", "ICMPv4 EchoReply"
EXPECTED = {
    # one trace per connection direction and new TCP flags (events.aggregation: medium)
    "tcp_allowed": forward(C, S, SYN) + [verdict(L3_ONLY, "FORWARDED", "EGRESS", C, S, SYN),
                                         verdict(L3_L4, "FORWARDED", "INGRESS", C, S, SYN)]
    + reply(S, C, SYNACK) + forward(C, S, ACK) + forward(C, S, PSH) + reply(S, C, PSH)
    + forward(C, S, FIN) + reply(S, C, FIN),
    "tcp_default_deny": denied_new(C, S, SYN, L3_ONLY, NONE, "POLICY_DENIED"),
    "tcp_deny_rule": denied_new(O, S, SYN, NONE, L3_ONLY, "POLICY_DENY"),
    "udp_allowed": forward(C, S, "UDP") + [verdict(L3_ONLY, "FORWARDED", "EGRESS", C, S, "UDP"),
                                           verdict(L3_L4, "FORWARDED", "INGRESS", C, S, "UDP")]
    + reply(S, C, "UDP"),
    "ping_denied": denied_new(C, S, REQ, L3_ONLY, NONE, "POLICY_DENIED"),
    "ping_allowed": forward(S, C, REQ) + [verdict(NONE, "FORWARDED", "EGRESS", S, C, REQ),
                                          verdict(NONE, "FORWARDED", "INGRESS", S, C, REQ)]
    + reply(C, S, REP),
    "ping_audited": forward(C, O, REQ) + [verdict(NONE, "AUDIT", "EGRESS", C, O, REQ),
                                          verdict(NONE, "FORWARDED", "INGRESS", C, O, REQ)]
    + reply(O, C, REP),
}


@pytest.fixture(scope="module")
def scene(node):
    """Pods, policies, one collector; each action's flows, taken after it settles."""
    collector = FlowCollector(node)
    servers = Servers()
    try:
        node.apply(docs(namespace_doc("fl"), pod_doc("fl", "client", {"app": "client"}),
                        pod_doc("fl", "server", {"app": "server"}), pod_doc("fl", "other", {"app": "other"})))
        servers.start(node.netns(S), 80, 81)
        node.apply(docs(yaml.safe_dump(SERVER_POLICY), yaml.safe_dump(CLIENT_POLICY)))
        ns, ip = {p: node.netns(p) for p in (C, S, O)}, {p: node.pod_ip(p) for p in (C, S, O)}
        actions = {
            "tcp_allowed": lambda: probe(ns[C], "tcp", ip[S], 80, sport=40001),
            "tcp_default_deny": lambda: not probe(ns[C], "tcp", ip[S], 81, sport=40002, timeout=0.5),
            "tcp_deny_rule": lambda: not probe(ns[O], "tcp", ip[S], 80, sport=40003, timeout=0.5),
            "udp_allowed": lambda: probe(ns[C], "udp", ip[S], 80, sport=40004),
            "ping_denied": lambda: not ping(ns[C], ip[S]),
            "ping_allowed": lambda: ping(ns[S], ip[C]),
            "ping_audited": lambda: ping(ns[C], ip[O]),
        }
        collector.take()
        flows = {}
        for name, action in actions.items():
            assert action(), f"{name}: the connection did not go as the policies say"
            flows[name] = collector.take()
        yield {"flows": flows, "collector": collector, "ip": ip, "ns": ns}
    finally:
        servers.close()
        collector.close()


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_exactly_the_expected_flows_arrive(scene, action):
    got = sorted(map(shape, scene["flows"][action]), key=repr)
    assert got == sorted(EXPECTED[action], key=repr)


def test_each_flow_arrives_on_its_verdicts_subject(node, scene):
    items = scene["collector"].all()
    assert items and all(subject == f"capillary.flows.{node.name}.{f['verdict']}" for subject, f in items)
    assert {f["verdict"] for _, f in items} == {"FORWARDED", "DROPPED", "AUDIT"}


def test_a_new_connection_is_traced_before_its_verdicts_and_delivery(scene):
    first = [shape(f)[:2] + (shape(f)[3],) for f in scene["flows"]["tcp_allowed"][:4]]
    assert first == [("trace", "FROM_ENDPOINT", "EGRESS"), ("policy-verdict", L3_ONLY, "EGRESS"),
                     ("policy-verdict", L3_L4, "INGRESS"), ("trace", "TO_ENDPOINT", "INGRESS")]


def _policy(name: str, index: int) -> dict:
    return {"name": name, "namespace": "fl", "kind": "CiliumNetworkPolicy", "rule_index": index,
            "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                       f"k8s:io.cilium.k8s.policy.name={name}", "k8s:io.cilium.k8s.policy.namespace=fl"]}


def _default(name: str) -> dict:
    return {"kind": "Default", "name": name, "namespace": "", "labels": [], "rule_index": 0}


def _attribution(flows: list[dict], kind: str, direction: str) -> dict:
    f = next(f for f in flows if f["event_type"]["type"] == kind and f["traffic_direction"] == direction)
    return {k: v for k, v in f.items() if k.endswith("_by")}


def test_policy_verdicts_and_drops_name_the_rule_or_the_default(scene):
    fl = scene["flows"]
    assert _attribution(fl["tcp_allowed"], 5, "INGRESS") == {"ingress_allowed_by": [_policy("server-ingress", 0)]}
    assert _attribution(fl["tcp_allowed"], 5, "EGRESS") == {"egress_allowed_by": [_policy("client-egress", 0)]}
    assert _attribution(fl["tcp_default_deny"], 5, "INGRESS") == {"ingress_denied_by": [_default("default-deny")]}
    assert _attribution(fl["tcp_default_deny"], 1, "INGRESS") == {"ingress_denied_by": [_default("default-deny")]}
    assert _attribution(fl["tcp_deny_rule"], 5, "INGRESS") == {"ingress_denied_by": [_policy("server-ingress", 0)]}
    assert _attribution(fl["tcp_deny_rule"], 5, "EGRESS") == {"egress_allowed_by": [_default("default-allow")]}
    assert _attribution(fl["ping_audited"], 5, "EGRESS") == {"egress_denied_by": [_default("default-deny")]}


def test_flows_carry_hubbles_fields(node, scene):
    f = next(f for f in scene["flows"]["tcp_allowed"] if f["event_type"] == {"type": 5, "sub_type": 0}
             and f["traffic_direction"] == "INGRESS")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", f["time"]) and len(f["uuid"]) == 36
    assert f["IP"] == {"source": scene["ip"][C], "destination": scene["ip"][S], "ipVersion": "IPv4"}
    assert f["l4"] == {"TCP": {"source_port": 40001, "destination_port": 80, "flags": {"SYN": True}}}
    assert set(f["ethernet"]) == {"source", "destination"}
    pods = node.pods()
    assert (f["source"]["ID"], f["source"]["identity"]) == \
        (pods[C]["status"]["endpointID"], pods[C]["status"]["identity"])
    assert f["destination"]["pod_name"] == "server" and f["destination"]["namespace"] == "fl"
    assert "k8s:app=server" in f["destination"]["labels"]
    assert "k8s:io.kubernetes.pod.namespace=fl" in f["destination"]["labels"]
    assert (f["Type"], f["node_name"], f["policy_match_type"]) == ("L3_L4", node.name, L3_L4)
    drop = next(f for f in scene["flows"]["tcp_deny_rule"] if f["verdict"] == "DROPPED" and "drop_reason" in f)
    assert (drop["drop_reason"], drop["drop_reason_desc"], drop["event_type"]) == \
        (181, "POLICY_DENY", {"type": 1, "sub_type": 181})


def test_every_event_is_accounted_for_and_counted_in_metrics(node, scene):
    counters = node.status()["services"]["flowd"]["counters"]
    published = len(scene["collector"].all())
    assert counters["flows_published"] == published and counters["flows_lost"] == 0
    assert counters["flows_generated"] == counters["flows_published"] + counters["flows_lost"]
    metrics = node.metrics("flowd")
    assert 'hubble_policy_verdicts_total{action="forwarded",direction="ingress",match="l3-l4"} 2.0' in metrics
    assert 'hubble_drop_total{protocol="TCP",reason="POLICY_DENY"} 1.0' in metrics
    assert 'hubble_flows_processed_total{protocol="ICMPv4",subtype="",type="PolicyVerdict",verdict="AUDIT"} 1.0' in metrics
    assert 'hubble_lost_events_total{source="perf_event_ring_buffer"} 0.0' in metrics
    assert "flows_published=" in node.cli("status").stdout


# ---- capillary observe ------------------------------------------------------------------

def observe(node, *args: str) -> list[dict]:
    out = node.cli("observe", "-o", "json", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines()]


def uuids(flows) -> list[str]:
    return [f["uuid"] for f in flows]


def _ports(f):
    return [v for l4 in f.get("l4", {}).values() for k, v in l4.items() if k.endswith("_port")]


FILTERS = [
    (["--verdict", "DROPPED"], lambda f: f["verdict"] == "DROPPED"),
    (["--verdict", "AUDIT", "--verdict", "DROPPED"], lambda f: f["verdict"] in ("AUDIT", "DROPPED")),
    (["--from-pod", O], lambda f: ref(f["source"]) == O),
    (["--to-pod", C], lambda f: ref(f["destination"]) == C),
    (["--pod", O], lambda f: O in (ref(f["source"]), ref(f["destination"]))),
    (["--from-pod", C, "--to-pod", S], lambda f: (ref(f["source"]), ref(f["destination"])) == (C, S)),
    (["--namespace", "fl"], lambda f: True),
    (["--namespace", "nowhere"], lambda f: False),
    (["--port", "81"], lambda f: 81 in _ports(f)),
    (["--protocol", "udp"], lambda f: "UDP" in f.get("l4", {})),
    (["--protocol", "icmp"], lambda f: "ICMPv4" in f.get("l4", {})),
    (["--type", "drop"], lambda f: f["event_type"]["type"] == 1),
    (["--type", "policy-verdict"], lambda f: f["event_type"]["type"] == 5),
    (["--type", "trace:to-endpoint"], lambda f: f.get("trace_observation_point") == "TO_ENDPOINT"),
    (["--traffic-direction", "egress"], lambda f: f["traffic_direction"] == "EGRESS"),
    (["--since", "1h"], lambda f: True),
    (["--since", "2999-01-01T00:00:00Z"], lambda f: False),
    (["--verdict", "DROPPED", "--to-pod", S, "--port", "80", "--protocol", "tcp"],
     lambda f: f["verdict"] == "DROPPED" and ref(f["destination"]) == S and 80 in _ports(f) and "TCP" in f["l4"]),
]


@pytest.mark.parametrize("flags, wanted", FILTERS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_observe_filters_the_history(node, scene, flags, wanted):
    every = [f for _, f in scene["collector"].all()]
    expected = [f["uuid"] for f in every if wanted(f)]
    assert uuids(observe(node, "--last", "100000", *flags)) == expected


def test_observe_last_n_and_the_default(node, scene):
    every = uuids(f for _, f in scene["collector"].all())
    assert uuids(observe(node, "--last", "3")) == every[-3:]
    assert uuids(observe(node)) == every[-20:]


STAMP = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}"      # Go's time.StampMilli


def test_observe_compact_output(node, scene):
    lines = node.cli("observe", "--last", "100", "--port", "81").stdout.splitlines()
    head = rf"{STAMP}: fl/client:40002 \(ID:\d+\) -> fl/server:81 \(ID:\d+\) "
    tails = ["from-endpoint FORWARDED (TCP Flags: SYN)", "policy-verdict:L3-Only EGRESS ALLOWED (TCP Flags: SYN)",
             "policy-verdict:none INGRESS DENIED (TCP Flags: SYN)", "Policy denied DROPPED (TCP Flags: SYN)"]
    assert len(lines) == len(tails), lines
    for line, tail in zip(lines, tails):
        assert re.fullmatch(head + re.escape(tail), line), line


def test_observe_reply_and_audit_lines(node, scene):
    stamp = STAMP
    out = node.cli("observe", "--last", "1", "--from-pod", O, "--protocol", "icmp").stdout
    assert re.fullmatch(rf"{stamp}: fl/client \(ID:\d+\) <- fl/other \(ID:\d+\) to-endpoint FORWARDED "
                        r"\(ICMPv4 EchoReply\)\n", out), out
    out = node.cli("observe", "--verdict", "AUDIT").stdout
    assert re.fullmatch(rf"{stamp}: fl/client \(ID:\d+\) -> fl/other \(ID:\d+\) policy-verdict:none EGRESS "
                        r"AUDITED \(ICMPv4 EchoRequest\)\n", out), out


def test_observe_table_output(node, scene):
    lines = node.cli("observe", "-o", "table", "--last", "4", "--port", "81").stdout.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 5 and "fl/client:40002" in lines[1] and "fl/server:81" in lines[1]
    assert "Policy denied" in lines[4] and "DROPPED" in lines[4]


def test_observe_rejects_bad_flags(node):
    r = node.cli("observe", "--type", "sideways", check=False)
    assert r.returncode == 1 and r.stderr.startswith("error: --type:")


class Lines:
    """Lines from a process's stdout as they come, each waited for at most TIMEOUT seconds."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "no flow printed in time"
            chunk = os.read(self.fd, 65536)
            assert chunk, "observe exited"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_observe_follow_prints_history_then_live_flows(node, scene):
    argv = [sys.executable, "-m", "services.cli.main", "--config", str(node.config_path), "observe", "-f",
            "--last", "1", "-o", "json", "--from-pod", C, "--protocol", "udp"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    lines = Lines(proc)
    try:
        history = json.loads(lines.next(20))["flow"]          # printed after it subscribed
        assert history["l4"]["UDP"]["source_port"] == 40004
        assert probe(scene["ns"][C], "udp", scene["ip"][S], 80, sport=40005)
        live = [json.loads(lines.next(10))["flow"] for _ in range(4)]
        assert sorted(map(shape, live), key=repr) == sorted(
            forward(C, S, "UDP") + [verdict(L3_ONLY, "FORWARDED", "EGRESS", C, S, "UDP"),
                                    verdict(L3_L4, "FORWARDED", "INGRESS", C, S, "UDP")], key=repr)
        assert all(f["l4"]["UDP"]["source_port"] == 40005 for f in live)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert lines.buf + proc.stdout.read() == b""   # the replies come from the server: filtered out
    finally:
        proc.kill()
        proc.wait()
