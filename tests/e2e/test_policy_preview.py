"""`capillary apply --dry-run`: the preview writes nothing, and every cell it computes is what
real traffic through the datapath meets, before the apply and after it, cell by cell."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import PROBER, Servers, probe

pytestmark = pytest.mark.e2e

NS = "pv"
PODS = ("web", "db", "debug")
PORTS = (80, 5432)

DB_ONLY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "db-only", "namespace": NS},
           "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                                 "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}]}}
# On top of DB_ONLY: web may reach every pod of its namespace, but not debug on UDP 80.
WEB_EGRESS = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "web-egress", "namespace": NS},
              "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "egress": [{"toEndpoints": [{}]}],
                       "egressDeny": [{"toEndpoints": [{"matchLabels": {"app": "debug"}}],
                                       "toPorts": [{"ports": [{"port": "80", "protocol": "UDP"}]}]}]}}


@pytest.fixture(scope="module")
def shop(node):
    node.apply(docs(namespace_doc(NS), *(pod_doc(NS, p, {"app": p}) for p in PODS)))
    servers = Servers()
    try:
        for p in PODS:
            servers.start(node.netns(f"{NS}/{p}"), *PORTS)
        yield node
    finally:
        servers.close()
        for name in ("web-egress", "db-only"):
            node.cli("delete", "cnp", name, "-n", NS, check=False)
        node.cli("delete", "namespace", NS)


def state(node) -> dict:
    """Everything a dry run must leave as it was."""
    status = node.status()["services"]["policyd"]["counters"]
    return {"policies": node.cli("get", "cnp", "-A", "-o", "json").stdout,
            "identities": node.cli("get", "identities", "-o", "json").stdout,
            # the host's own addresses come and go with other nodes on this machine
            "ipcache": [e for e in json.loads(node.cli("get", "ipcache", "-o", "json").stdout)
                        if e["source"] != "node"],
            "entries": {p: node.cli("bpf", "policy", "get", f"{NS}/{p}", "-o", "json").stdout for p in PODS},
            "counters": {k: status[k] for k in ("identities", "policies", "policy_entries")}}


def dry_run(node, doc: dict) -> dict:
    before = state(node)
    preview = json.loads(node.cli("apply", "-f", "-", "--dry-run", "-o", "json", input=yaml.safe_dump(doc)).stdout)
    assert state(node) == before, "the dry run changed something"
    return preview


def real_verdicts(node, cells: list[dict]) -> dict[tuple, bool]:
    """(source, destination, protocol, port) -> reached, by real traffic from the source pod."""
    ip = {f"{NS}/{p}": node.pod_ip(f"{NS}/{p}") for p in PODS}
    by_ip = {v: k for k, v in ip.items()}
    out, procs = {}, {}
    for src in {c["source"] for c in cells}:
        targets = [[c["protocol"].lower(), ip[c["destination"]], c["port"]] for c in cells
                   if c["source"] == src and c["protocol"] in ("TCP", "UDP")]
        procs[src] = subprocess.Popen(["nsenter", f"--net={node.netns(src)}", "--", sys.executable, PROBER,
                                       json.dumps(targets)], stdout=subprocess.PIPE, text=True)
    for src, proc in procs.items():
        stdout, _ = proc.communicate(timeout=60)
        for key, ok in json.loads(stdout).items():
            proto, dst, port = key.split()
            out[(src, by_ip[dst], proto.upper(), int(port))] = ok
    for c in cells:
        if c["protocol"] == "ICMP":
            ping = subprocess.run(["nsenter", f"--net={node.netns(c['source'])}", "--", "ping", "-c1", "-W1",
                                   ip[c["destination"]]], capture_output=True, timeout=20)
            out[(c["source"], c["destination"], "ICMP", c["port"])] = ping.returncode == 0
    return out


def check(node, cells: list[dict], side: str) -> None:
    """Every servable cell's SIDE (before/after) against real traffic."""
    served = [c for c in cells if c["protocol"] in ("TCP", "UDP") and c["port"] in PORTS
              or (c["protocol"], c["port"]) == ("ICMP", 8)]
    got = real_verdicts(node, served)
    wrong = [f"{c['source']} -> {c['destination']} {c['protocol']} {c['port']}: preview says "
             f"{c[side]['verdict']} ({c[side]['reason']}), traffic {'passed' if got[key] else 'was dropped'}"
             for c in served
             for key in [(c["source"], c["destination"], c["protocol"], c["port"])]
             if got[key] != (c[side]["verdict"] in ("allowed", "audit"))]
    assert not wrong, f"{len(wrong)} of {len(served)} cells differ from real traffic:\n" + "\n".join(wrong)


def cell(preview: dict, src: str, dst: str, proto: str, port: int) -> dict:
    return next(c for c in preview["cells"] if (c["source"], c["destination"], c["protocol"], c["port"])
                == (f"{NS}/{src}", f"{NS}/{dst}", proto, port))


def test_the_preview_is_what_real_traffic_meets_before_and_after_each_apply(shop):
    node = shop
    # Connections on UDP 80 and TCP 80 beforehand: their ports come from flowd's history.
    assert probe(node.netns(f"{NS}/debug"), "udp", node.pod_ip(f"{NS}/web"), 80)
    assert probe(node.netns(f"{NS}/web"), "tcp", node.pod_ip(f"{NS}/db"), 80)

    first = dry_run(node, DB_ONLY)
    assert first["action"] == "created" and first["affected"] == [f"{NS}/db"]
    assert {"TCP/5432", "ICMP/8", "TCP/80", "UDP/80"} <= set(first["ports"])
    assert cell(first, "debug", "db", "TCP", 5432)["after"] == {
        "verdict": "denied", "reason": f"default-deny: ingress policy {NS}/db-only selects {NS}/db"}
    assert cell(first, "web", "db", "TCP", 5432)["after"] == {
        "verdict": "allowed", "reason": f"policy {NS}/db-only ingress[0]"}
    check(node, first["cells"], "before")
    node.apply(yaml.safe_dump(DB_ONLY))
    check(node, first["cells"], "after")

    second = dry_run(node, WEB_EGRESS)
    assert second["affected"] == [f"{NS}/web"]
    assert cell(second, "web", "debug", "UDP", 80)["after"] == {
        "verdict": "denied", "reason": f"policy {NS}/web-egress egressDeny[0]"}
    assert cell(second, "web", "db", "TCP", 5432)["after"]["reason"] == \
        f"policy {NS}/web-egress egress[0]; policy {NS}/db-only ingress[0]"
    assert any(c["before"]["verdict"] != c["after"]["verdict"] for c in second["cells"])
    check(node, second["cells"], "before")
    node.apply(yaml.safe_dump(WEB_EGRESS))
    check(node, second["cells"], "after")

    text = node.cli("apply", "-f", "-", "--dry-run", input=yaml.safe_dump(WEB_EGRESS)).stdout
    assert "would be unchanged" in text and "no pod's policy entries would change" in text


BAD = [
    ({**DB_ONLY, "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}]}},
     "port"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": NS}}, "policies only"),
    ({**DB_ONLY, "spec": {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingres": []}}, "ingres"),
]


@pytest.mark.parametrize("doc, named", BAD, ids=["port", "pod", "misspelt"])
def test_a_bad_document_is_refused_naming_what_is_wrong_and_nothing_is_written(shop, doc, named):
    before = state(shop)
    proc = shop.cli("apply", "-f", "-", "--dry-run", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and named in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert state(shop) == before


def test_output_json_needs_dry_run(shop):
    proc = shop.cli("apply", "-f", "-", "-o", "json", input=yaml.safe_dump(DB_ONLY), check=False)
    assert proc.returncode == 1 and "--dry-run" in proc.stderr
