"""The packet walk's model, from flows decoded out of raw events laid out as the datapath
writes them (what each program emits is in bpf/lxc.c; the e2e tests run the real thing)."""
from __future__ import annotations

from services.cli import walkpath
from services.cli.walkpath import Pod, Probe
from services.datapath.numbers import (DROP_POLICY, EVENT_DROP, EVENT_POLICY_VERDICT, METRIC_EGRESS,
                                       METRIC_INGRESS, POLICY_MATCH_L3_L4, POLICY_MATCH_NONE, TRACE_FROM_LXC,
                                       TRACE_REASON_CT_REPLY, TRACE_TO_LXC, TRACE_TO_STACK, VERDICT_DROPPED,
                                       VERDICT_FORWARDED)
from services.flowd.decode import decode
from tests.unit.flowdata import A, B, ID_A, ID_B, event, metadata, packet, tcp

META = metadata()
SRC = Pod("x/a", A, 1, ID_A, "lxca", 11)
DST = Pod("x/b", B, 2, ID_B, "lxcb", 12)
SYN, SYNACK = 0x02, 0x12


def flows(*raws: bytes) -> list[dict]:
    return [decode(raw, META, "node1", 0, new_uuid=lambda n=iter(range(100)): f"u{next(n)}") for raw in raws]


def request(**kw) -> bytes:
    return event(packet(A, B, 6, tcp(40000, 80, SYN)), **kw)


def verdicts(ingress_verdict: int = VERDICT_FORWARDED, rule: int = 77) -> list[bytes]:
    return [request(type=EVENT_POLICY_VERDICT, subtype=0, verdict=VERDICT_FORWARDED, match_type=POLICY_MATCH_NONE),
            request(type=EVENT_POLICY_VERDICT, subtype=0, endpoint_id=2, direction=METRIC_INGRESS,
                    verdict=ingress_verdict, match_type=POLICY_MATCH_L3_L4, rule_id=rule)]


def walk(fs: list[dict], outcome: str = "answered", mode: str = "redirect") -> walkpath.Walk:
    return walkpath.build(fs, SRC, DST, Probe("tcp", 80, 40000, outcome, 0.001), mode,
                          "10.200.0.3 via 10.200.0.1 dev eth0", "10.200.0.3 dev lxcb",
                          ["CAPILLARY-FORWARD #2 -> ACCEPT -d 10.200.0.0/16 (+1 packets)"])


def test_redirect_mode_allowed():
    fs = flows(request(), *verdicts(), request(subtype=TRACE_TO_LXC, endpoint_id=2, direction=METRIC_INGRESS),
               event(packet(B, A, 6, tcp(80, 40000, SYNACK)), endpoint_id=2, ifindex=12,
                     reason=TRACE_REASON_CT_REPLY))
    w = walk(fs)
    assert w.result == "DELIVERED"
    assert [h.where for h in w.hops] == ["x/a eth0"] + ["host lxca"] * 4 + ["x/b eth0"]
    assert [h.verdict for h in w.hops] == ["", "", "ALLOWED", "ALLOWED", "", ""]
    assert w.hops[3].what == "ingress policy of x/b: ALLOWED by CiliumNetworkPolicy x/only-a rule 0"
    assert w.hops[4].what.startswith("bpf_redirect_peer into x/b eth0")
    assert w.reply == ["from-endpoint at lxcb: TCP Flags: SYN, ACK"]
    assert "DELIVERED: the destination answered after 1.0 ms" in walkpath.render(w)


def test_a_policy_drop_ends_the_walk_where_it_happened():
    fs = flows(request(), *verdicts(VERDICT_DROPPED, rule=0),
               request(type=EVENT_DROP, subtype=DROP_POLICY, endpoint_id=2, direction=METRIC_INGRESS))
    w = walk(fs, outcome="dropped")
    assert w.result == "DROPPED" and w.reason == "POLICY_DENIED (drop reason 133) at lxca"
    assert w.hops[3].rule["name"] == "default-deny"
    assert w.hops[3].details[0] == "ingress policies select x/b and no rule of theirs allows this"
    assert w.hops[-1].verdict == "DROPPED"


def test_an_egress_denial_skips_the_ingress_decision():
    fs = flows(request(), request(type=EVENT_POLICY_VERDICT, subtype=0, verdict=VERDICT_DROPPED, rule_id=78,
                                  direction=METRIC_EGRESS),
               request(type=EVENT_DROP, subtype=DROP_POLICY, rule_id=78))
    w = walk(fs, outcome="dropped")
    assert [h.what.split(":")[0] for h in w.hops] == ["sends TCP 10.200.0.2", "from_container (tc ingress), endpoint 1, identity 256",
                                                      "egress policy of x/a", "DROPPED"]


def test_host_stack_mode_shows_the_route_and_iptables():
    fs = flows(request(), *verdicts(), request(subtype=TRACE_TO_STACK),
               request(subtype=TRACE_TO_LXC, endpoint_id=2, direction=METRIC_INGRESS, ifindex=12))
    w = walk(fs, mode="host-stack")
    assert [h.where for h in w.hops] == ["x/a eth0"] + ["host lxca"] * 3 + ["host stack", "host lxcb", "x/b eth0"]
    assert w.hops[4].details == ["route: 10.200.0.3 dev lxcb",
                                 "iptables: CAPILLARY-FORWARD #2 -> ACCEPT -d 10.200.0.0/16 (+1 packets)"]
    assert w.hops[5].flows and w.result == "DELIVERED"


def test_other_traffic_is_not_part_of_the_walk():
    other = event(packet(A, B, 6, tcp(40001, 80, SYN)), type=EVENT_DROP, subtype=DROP_POLICY)
    w = walk(flows(other), outcome="timeout")
    assert w.result == "UNKNOWN"
    assert "no verdict reported" in w.hops[2].what and "no forwarding decision" in w.hops[4].what


def test_lost_events_still_leave_the_probes_answer():
    w = walk([], outcome="refused")
    assert w.result == "DELIVERED"
    assert w.hops[-1].details == ["probe: the destination's stack refused it (nothing listens on the port) "
                                  "after 1.0 ms"]


def test_a_pod_walking_to_itself_stays_inside():
    w = walkpath.build([], SRC, SRC, Probe("tcp", 80, 40000, "refused", 0.001), "redirect",
                       "local 10.200.0.2 dev lo", "", [])
    assert w.result == "DELIVERED" and [h.where for h in w.hops] == ["x/a lo"]
