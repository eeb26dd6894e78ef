"""The service map's aggregation (services/web/hub.py, workloads.py): which card a flow's
ends belong to, what colours a link, what a filter keeps, and the sample's counts."""
from __future__ import annotations

import random

import pytest

from services.datapath.numbers import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, TRACE_FROM_LXC, TRACE_TO_LXC
from services.web.hub import Filter, Hub, Subscriber, decided
from services.wire import codec
from services.wire.messages import SCHEMA_VERSION, FlowEvent
from services.web.workloads import Card, card_of_endpoint, card_of_pod


def pod(namespace: str, name: str, app: str | None, identity: int = 0) -> dict:
    """A flow endpoint; pods of one app share an identity (one label set), as policyd gives them."""
    identity = identity or 1000 + sum(map(ord, f"{namespace}/{app}"))
    labels = [f"k8s:io.kubernetes.pod.namespace={namespace}"] + ([f"k8s:app={app}"] if app else [])
    return {"ID": 7, "identity": identity, "labels": labels, "namespace": namespace, "pod_name": name}


WORLD = {"identity": 2, "labels": ["reserved:world"]}
HOST = {"identity": 1, "labels": ["reserved:host"]}


def flow(src: dict, dst: dict, kind: int, sub: int = 0, port: int = 80, verdict: str = "FORWARDED",
         reply: bool = False, **extra) -> dict:
    return {"time": "2026-01-01T00:00:00.000000001Z", "uuid": f"u{random.random()}", "verdict": verdict,
            "source": src, "destination": dst, "event_type": {"type": kind, "sub_type": sub},
            "l4": {"TCP": {"source_port": 40000, "destination_port": port}}, "is_reply": reply, **extra}


def test_cards_group_pods_by_app_else_identity_and_reserved_peers_have_their_own():
    assert card_of_endpoint(pod("shop", "web-1", "web")) == Card("shop/web", "shop", "web")
    assert card_of_endpoint(pod("shop", "x", None, identity=301)) == Card("shop/identity-301", "shop", "identity-301")
    assert card_of_endpoint(WORLD).key == "world" and card_of_endpoint(HOST).key == "host"
    assert card_of_endpoint({"identity": 6}).key == "host"
    assert card_of_endpoint({"identity": 16777217}).key == "identity-16777217"
    assert card_of_pod("shop", {"app.kubernetes.io/name": "db"}, 5) == Card("shop/db", "shop", "db")


@pytest.mark.parametrize("kind, sub, reply, outcome", [
    (EVENT_DROP, 133, False, "dropped"),
    (EVENT_TRACE, TRACE_TO_LXC, False, "forwarded"),
    (EVENT_TRACE, TRACE_TO_LXC, True, None),          # a reply belongs to its request's link
    (EVENT_TRACE, TRACE_FROM_LXC, False, None),       # a step on the way, not a decision
    (EVENT_POLICY_VERDICT, 0, False, None),
])
def test_what_a_flow_says_about_its_link(kind, sub, reply, outcome):
    assert decided(flow(pod("a", "a", "a"), pod("a", "b", "b"), kind, sub, reply=reply)) == outcome


def test_links_are_green_red_or_both_and_remember_a_pod_pair_to_walk():
    hub = Hub()
    web, db, batch = pod("shop", "web-1", "web"), pod("shop", "db-0", "db"), pod("shop", "batch-1", "batch")
    hub.add(flow(web, db, EVENT_TRACE, TRACE_TO_LXC, port=5432))
    hub.add(flow(web, db, EVENT_DROP, 133, port=6379, verdict="DROPPED"))
    hub.add(flow(batch, db, EVENT_TRACE, TRACE_TO_LXC, port=5432))
    hub.add(flow(batch, db, EVENT_DROP, 133, port=5432, verdict="DROPPED"))
    hub.add(flow(web, WORLD, EVENT_TRACE, 3, port=443))
    hub.add(flow(web, db, EVENT_POLICY_VERDICT, port=5432))       # counted as received, not on a link
    m = hub.service_map("shop", [{"ref": "shop/db-0", "card": Card("shop/db", "shop", "db")}])
    links = {(l["source"], l["destination"], l["port"]): l for l in m["links"]}
    assert links[("shop/web", "shop/db", 5432)]["verdict"] == "forwarded"
    assert links[("shop/web", "shop/db", 6379)]["verdict"] == "dropped"
    both = links[("shop/batch", "shop/db", 5432)]
    assert (both["verdict"], both["forwarded"], both["dropped"]) == ("both", 1, 1)
    assert (both["source_pod"], both["destination_pod"]) == ("shop/batch-1", "shop/db-0")
    assert links[("shop/web", "world", 443)]["destination_pod"] == ""      # nothing to walk to
    cards = {c["key"]: c for c in m["cards"]}
    assert set(cards) == {"shop/web", "shop/db", "shop/batch", "world", "host"}
    assert cards["shop/db"]["ports"] == ["5432/TCP", "6379/TCP"] and cards["shop/db"]["pods"] == ["shop/db-0"]
    assert m["received"] == 6


def test_a_namespace_map_has_only_its_links_and_their_peers():
    hub = Hub()
    hub.add(flow(pod("a", "x", "x"), pod("b", "y", "y"), EVENT_TRACE, TRACE_TO_LXC))
    hub.add(flow(pod("c", "z", "z"), pod("d", "w", "w"), EVENT_TRACE, TRACE_TO_LXC))
    m = hub.service_map("a", [])
    assert {c["key"] for c in m["cards"]} == {"a/x", "b/y", "world", "host"}
    assert len(m["links"]) == 1


def test_filters():
    web, db = pod("shop", "web-1", "web"), pod("shop", "db-0", "db")
    dropped = flow(web, db, EVENT_DROP, 133, port=6379, verdict="DROPPED")
    assert Filter().matches(dropped)
    assert Filter(verdict="DROPPED", namespace="shop", pod="db-0", port=6379).matches(dropped)
    assert not Filter(verdict="FORWARDED").matches(dropped)
    assert not Filter(namespace="other").matches(dropped)
    assert not Filter(pod="cache").matches(dropped)
    assert not Filter(port=5432).matches(dropped)
    assert not Filter(port=80).matches({**dropped, "l4": {"ICMPv4": {"type": 8}}})


@pytest.mark.parametrize("kwargs, field", [({"verdict": "ALLOWED"}, "verdict"), ({"port": 70000}, "port")])
def test_bad_filters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Filter(**kwargs)


def test_a_subscriber_gets_a_bounded_sample_and_the_count_it_was_drawn_from():
    sub = Subscriber(Filter(verdict="DROPPED"), size=40, rand=random.Random(1))
    web, db = pod("shop", "web-1", "web"), pod("shop", "db-0", "db")
    for i in range(10_000):
        sub.offer(flow(web, db, EVENT_DROP, 133, verdict="DROPPED" if i % 2 else "FORWARDED"))
    batch = sub.take()
    assert (batch["matched"], batch["shown"], len(batch["flows"])) == (5_000, 40, 40)
    assert all(f["verdict"] == "DROPPED" for f in batch["flows"])
    assert sub.take() == {"flows": [], "matched": 0, "shown": 0}


def test_a_new_subscriber_starts_with_the_recent_flows_it_matches():
    hub = Hub(recent=100)
    web, db = pod("shop", "web-1", "web"), pod("shop", "db-0", "db")
    for port in range(1, 201):
        hub.add(flow(web, db, EVENT_TRACE, TRACE_TO_LXC, port=port))
    sub = hub.subscribe(Filter(port=150), size=40)
    batch = sub.take()
    assert [f["l4"]["TCP"]["destination_port"] for f in batch["flows"]] == [150]
    hub.add(flow(web, db, EVENT_TRACE, TRACE_TO_LXC, port=150))
    assert sub.take()["matched"] == 1
    hub.unsubscribe(sub)
    hub.add(flow(web, db, EVENT_TRACE, TRACE_TO_LXC, port=150))
    assert sub.take()["matched"] == 0


def test_flow_payloads_decode_by_their_envelope_and_bad_ones_are_counted():
    good = flow(pod("a", "a", "a"), pod("a", "b", "b"), EVENT_TRACE, TRACE_TO_LXC)
    assert codec.decode_flow(codec.encode(FlowEvent(good).to_wire())) == good
    for bad in (b"\xc1", codec.encode({"v": 1, "kind": "pod", "flow": {}}),
                codec.encode({"v": SCHEMA_VERSION + 1, "kind": "flow", "flow": {}}),
                codec.encode({"v": 1, "kind": "flow", "flow": [1]}), codec.encode([1, 2])):
        with pytest.raises(codec.DecodeError):
            codec.decode_flow(bad)
    hub = Hub()
    hub.subscribe(Filter(pod="a"))
    hub.add({**good, "source": "not a map"})          # fields of the wrong type
    hub.add({**good, "event_type": {"type": EVENT_TRACE, "sub_type": TRACE_TO_LXC}, "l4": {"TCP": 5}})
    hub.reject()
    hub.add(good)
    assert (hub.received, hub.undecodable, len(hub.links), len(hub.recent)) == (4, 3, 1, 1)
