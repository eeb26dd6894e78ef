"""The policy preview's pure parts: the datapath lookup mirror (decide) against the fuzz
target's independent reference, ports, and the words each cell is explained with."""
import itertools

from services.datapath.maps.policy import decide
from services.datapath.numbers import VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED
from services.policyd.compiler import Endpoint, Universe, compile_endpoint, diff
from services.policyd.model import EGRESS, INGRESS, Peer, Policy, PortRule, Rule, Selector
from services.policyd.preview import (ALLOWED, DENIED, MAX_PORTS, State, apply_diffs, choose_ports,
                                      flow_ports, matrix, policy_ports)
from services.wire.labels import identity_labels, namespace_labels
from tests.fuzz.policy_reference import datapath_verdict

WEB, DB, DEBUG = 256, 257, 258
IDS = {i: identity_labels({"app": app}, "shop", namespace_labels("shop", {}))
       for i, app in ((WEB, "web"), (DB, "db"), (DEBUG, "debug"))}
U = Universe(IDS)
EPS = {1: Endpoint(1, WEB), 2: Endpoint(2, DB), 3: Endpoint(3, DEBUG)}
NAMES = {1: "shop/web", 2: "shop/db", 3: "shop/debug"}
VERDICT = {VERDICT_FORWARDED: "FORWARDED", VERDICT_DROPPED: "DROPPED", VERDICT_AUDIT: "AUDIT"}


def cnp(name, subject, *rules, enforces=(INGRESS,), audit=False):
    return Policy("CiliumNetworkPolicy", name, "shop", Selector.of({"app": subject}),
                  frozenset(enforces), tuple(rules), audit)


DB_ONLY = cnp("db-only", "db", Rule(INGRESS, False, (Peer(pods=Selector.of({"app": "web"}), namespace="shop"),),
                                    (PortRule("TCP", 5432),)))
WEB_OUT = cnp("web-out", "web", Rule(EGRESS, False, (), (PortRule("TCP", 8000, 8100),)),
              Rule(EGRESS, True, (Peer(pods=Selector.of({"app": "debug"}), namespace="shop"),),
                   (PortRule("UDP", 53),)), enforces=(EGRESS,))


def entries(policies, enforcement="default"):
    return {ep: compile_endpoint(e, policies, U, enforcement) for ep, e in EPS.items()}


def test_decide_is_the_datapath_lookup_for_every_peer_protocol_and_port():
    compiled = entries([DB_ONLY, WEB_OUT, cnp("audited", "debug", enforces=(INGRESS, EGRESS), audit=True)])
    for ep, e in compiled.items():
        for egress, peer, proto, port in itertools.product((False, True), (0, WEB, DB, DEBUG, 2), (1, 6, 17),
                                                           (0, 8, 53, 5432, 7999, 8000, 8064, 8100, 8101)):
            got = decide(e, ep, egress, peer, proto, port).verdict
            assert VERDICT[got] == datapath_verdict(e, ep, egress, peer, proto, port), (ep, egress, peer, proto, port)
    assert decide({}, 9, False, WEB, 6, 80).verdict == VERDICT_DROPPED     # no entries: fail closed


def test_ports_come_from_rules_ranges_by_their_ends_and_icmp_echo_always():
    assert policy_ports([DB_ONLY, WEB_OUT]) == [("TCP", 5432), ("TCP", 8000), ("TCP", 8100), ("UDP", 53),
                                                ("ICMP", 8)]
    flows = [{"l4": {"TCP": {"source_port": 40000, "destination_port": 80}}},
             {"l4": {"TCP": {"source_port": 80, "destination_port": 40000}}, "is_reply": True},
             {"l4": {"UDP": {"source_port": 40001, "destination_port": 53}}},
             {"l4": {"UDP": {"source_port": 40002, "destination_port": 53}}},
             {"l4": {"ICMPv4": {"type": 8, "code": 0}}}]
    assert flow_ports(flows) == [("UDP", 53), ("TCP", 80), ("ICMP", 8)]
    many = [("TCP", p) for p in range(1, 100)]
    chosen, left_out = choose_ports([("TCP", 5432)], many)
    assert chosen[0] == ("TCP", 5432) and len(chosen) == MAX_PORTS and left_out == 100 - MAX_PORTS


def test_cells_say_which_rule_or_default_decides_them():
    now = entries([])
    planned = {ep: diff(now[ep], e) for ep, e in entries([DB_ONLY]).items()}
    after_entries = apply_diffs(now, planned)
    assert after_entries == entries([DB_ONLY]) and now == entries([])        # the input is left as it was
    affected = {ep for ep, d in planned.items() if not d.empty}
    cells = matrix(EPS, NAMES, affected, [("TCP", 5432)], State(now, [], IDS, "default"),
                   State(after_entries, [DB_ONLY], IDS, "default"))
    by_pair = {(c.source, c.destination): c for c in cells}
    assert set(by_pair) == {("shop/web", "shop/db"), ("shop/debug", "shop/db"),
                            ("shop/db", "shop/web"), ("shop/db", "shop/debug")}
    debug = by_pair[("shop/debug", "shop/db")]
    assert (debug.before.verdict, debug.before.reason) == (ALLOWED, "default-allow")
    assert (debug.after.verdict, debug.after.reason) == \
        (DENIED, "default-deny: ingress policy shop/db-only selects shop/db")
    assert by_pair[("shop/web", "shop/db")].after.reason == "policy shop/db-only ingress[0]"
    assert not by_pair[("shop/db", "shop/web")].changed


def test_enforcement_always_and_never_are_named():
    always = State(entries([], "always"), [], IDS, "always")
    never = State(entries([DB_ONLY], "never"), [DB_ONLY], IDS, "never")
    [a] = matrix(EPS, NAMES, {2}, [("TCP", 1)], always, never)[:1]
    assert a.before.reason == "default-deny: policy enforcement is always"
    assert a.after.reason == "default-allow (policy enforcement is never)"
