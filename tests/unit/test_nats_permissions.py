"""Per-service NATS permissions come from subjects.GRANTS; credentials and config files are private."""
from __future__ import annotations

import itertools
import json
import re
import stat

import pytest

from services.runtime import natsserver
from services.runtime.config import NatsConfig, NodeConfig
from services.wire import subjects
from services.wire.subjects import GRANTS, SERVICES, Grants


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: '*' is one token, '>' one or more trailing tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


@pytest.mark.parametrize("pattern, subject, expected", [
    ("a.b", "a.b", True), ("a.*", "a.b", True), ("a.>", "a.b.c", True),
    ("a.>", "a", False), ("a.*", "a.b.c", False), ("a.b", "a.c", False), ("a.b.c", "a.b", False),
])
def test_subject_matcher(pattern, subject, expected):
    assert matches(pattern, subject) is expected


def allowed(user: str, action: str) -> list[str]:
    return natsserver.permissions(user)[action]["allow"]


def test_admin_has_no_restrictions():
    assert natsserver.permissions(natsserver.ADMIN) == {}


def test_users_are_admin_every_service_the_readers_and_the_clients():
    assert natsserver.USERS == ("admin", *SERVICES, "flows", "cni", "web")
    assert set(subjects.CLIENTS) == {subjects.CNI_CLIENT, subjects.WEB}
    assert set(GRANTS) == set(SERVICES)
    assert set(subjects.READERS) == {subjects.FLOWS_READER}


def test_the_cni_client_calls_endpointd_and_health_and_hears_only_its_inbox():
    calls = [subjects.NAMESPACE_APPLY, subjects.NAMESPACE_DELETE, subjects.NAMESPACE_LIST, subjects.POD_APPLY,
             subjects.POD_DELETE, subjects.POD_LIST, subjects.POD_CHECK, *map(subjects.health, SERVICES)]
    assert natsserver.permissions("cni") == {"publish": {"allow": calls}, "subscribe": {"allow": ["_INBOX_cni.>"]}}


def test_the_flows_reader_only_subscribes_to_flows():
    assert natsserver.permissions("flows") == {"publish": {"deny": [">"]},
                                               "subscribe": {"allow": [f"{subjects.FLOWS}.>"]}}


def test_the_web_client_calls_lists_and_listens_to_flows_and_serves_nothing():
    assert natsserver.permissions("web") == {
        "publish": {"allow": [subjects.NAMESPACE_LIST, subjects.POD_LIST, subjects.POLICY_PREVIEW,
                              subjects.NODES_LIST, subjects.NODE_STATUS]},
        "subscribe": {"allow": [f"{subjects.FLOWS}.>", "_INBOX_web.>"]}}


def test_in_a_cluster_a_clients_calls_reach_every_nodes_services():
    """Requests in a cluster carry the node's name (subjects.on_node): a client allowed only
    the bare subjects could call nothing there."""
    allowed = natsserver.permissions("web", cluster=True)["publish"]["allow"]
    assert subjects.on_node(subjects.POD_LIST, "n2") != subjects.POD_LIST
    assert subjects.on_node(subjects.POD_LIST, "*") in allowed and subjects.POD_LIST not in allowed
    assert natsserver.permissions("web", cluster=True)["subscribe"]["allow"][0] == f"{subjects.FLOWS}.>"


def test_every_client_call_is_served():
    served = {s for g in GRANTS.values() for s in g.serves} | {subjects.NODE_STATUS}   # the supervisor's
    assert {s for g in subjects.CLIENTS.values() for s in g.calls} <= served


def test_the_web_token_is_derived_from_the_admin_password_and_private(tmp_path):
    config = NodeConfig(node="n1", stateDir=str(tmp_path / "state"))
    creds = natsserver.ensure_credentials(config)
    token = config.web_token_path.read_text().strip()
    assert token == natsserver.web_token(creds["admin"]["password"], "n1")
    assert token != natsserver.web_token(creds["admin"]["password"], "n2")
    assert config.web_token_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("service", SERVICES)
def test_service_subscribes_only_to_what_it_serves_listens_to_its_inbox_and_its_buckets_writes(service):
    g = GRANTS[service]
    assert sorted(allowed(service, "subscribe")) == sorted([*g.serves, *g.listens, f"_INBOX_{service}.>",
                                                            *(f"$KV.{b}.>" for b in g.buckets)])


@pytest.mark.parametrize("service", SERVICES)
def test_service_publishes_what_it_calls_and_publishes_and_replies(service):
    g = GRANTS[service]
    publish = allowed(service, "publish")
    assert set(g.calls) | set(g.publishes) <= set(publish)
    assert natsserver.permissions(service)["allow_responses"] is True
    non_kv = {p for p in publish if not p.startswith(("$KV.", "$JS."))}
    assert non_kv == set(g.calls) | set(g.publishes)


def test_permissions_follow_grants(monkeypatch):
    monkeypatch.setitem(GRANTS, "routed", Grants(serves=("x.serve",), calls=("x.call",),
                                                 listens=("x.listen",), buckets=("b1",)))
    perms = natsserver.permissions("routed")
    assert perms["subscribe"]["allow"] == ["x.serve", "x.listen", "_INBOX_routed.>", "$KV.b1.>"]
    assert "x.call" in perms["publish"]["allow"]
    assert "$KV.b1.>" in perms["publish"]["allow"]


@pytest.mark.parametrize("service, other", itertools.permutations(SERVICES, 2))
def test_no_service_subscribes_to_another_services_subjects(service, other):
    stolen = [(pattern, subject) for pattern in allowed(service, "subscribe")
              for subject in GRANTS[other].serves if matches(pattern, subject)]
    assert stolen == []


def test_every_request_subject_is_served_by_exactly_one_service():
    served = [s for g in GRANTS.values() for s in g.serves]
    assert len(served) == len(set(served))
    called = {s for g in GRANTS.values() for s in g.calls}
    assert called <= set(served)


def test_every_health_subject_is_served_by_its_own_service():
    for service in SERVICES:
        assert subjects.health(service) in GRANTS[service].serves


@pytest.mark.parametrize("service", SERVICES)
def test_each_inbox_is_its_own(service):
    inboxes = [p for p in allowed(service, "subscribe") if p.startswith("_INBOX")]
    assert inboxes == [f"{subjects.inbox_prefix(service)}.>"]
    others = {subjects.inbox_prefix(u) for u in natsserver.USERS if u != service}
    assert subjects.health(service) in allowed(service, "publish")   # its container's healthcheck
    assert subjects.inbox_prefix(service) not in others


@pytest.mark.parametrize("service", SERVICES)
def test_services_touch_only_the_kv_buckets_they_own(service):
    publish = allowed(service, "publish")
    for bucket, owner in subjects.BUCKETS.items():
        touches = any(bucket in p for p in publish)
        assert touches is (owner == service), bucket


def test_bucket_owners_agree_with_grants():
    owned = {b: s for s, g in GRANTS.items() for b in g.buckets}
    assert owned == subjects.BUCKETS


# ---- credentials and the server config -------------------------------------------------------

@pytest.fixture
def config(tmp_path) -> NodeConfig:
    return NodeConfig(node="n1", stateDir=str(tmp_path / "state"))


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_private_and_stable(config):
    first = natsserver.ensure_credentials(config)
    assert set(first) == set(natsserver.USERS)
    assert mode(config.nats_dir) == 0o700
    for user in natsserver.USERS:
        path = config.credentials_path(user)
        assert mode(path) == 0o600
        assert json.loads(path.read_text())["user"] == user
    assert len({c["password"] for c in first.values()}) == len(natsserver.USERS)
    second = natsserver.ensure_credentials(config)
    assert {u: c["password"] for u, c in second.items()} == {u: c["password"] for u, c in first.items()}


def test_a_new_port_keeps_the_password_and_fixes_the_url(config):
    before = natsserver.ensure_credentials(config)
    moved = NodeConfig(node="n1", stateDir=config.stateDir, nats=NatsConfig(port=4333))
    after = natsserver.ensure_credentials(moved)
    assert after["admin"]["password"] == before["admin"]["password"]
    stored = json.loads(moved.credentials_path("admin").read_text())
    assert stored["url"] == "nats://127.0.0.1:4333"
    assert mode(moved.credentials_path("admin")) == 0o600


def rendered_users(text: str) -> list[dict]:
    m = re.search(r"^authorization: \{ users: (.*) \}$", text, re.MULTILINE)
    assert m, text
    return json.loads(m.group(1))


def test_server_config_file(config):
    path = natsserver.write_config(config)
    assert mode(path) == 0o600
    text = path.read_text()
    assert 'listen: "127.0.0.1:4222"' in text
    assert "sync_interval: always" in text
    assert f'store_dir: "{config.nats_dir / "jetstream"}"' in text
    creds = natsserver.ensure_credentials(config)
    users = rendered_users(text)
    assert [u["user"] for u in users] == list(natsserver.USERS)
    for entry in users:
        assert entry["password"] == creds[entry["user"]]["password"]
        if entry["user"] == natsserver.ADMIN:
            assert "permissions" not in entry
        else:
            assert entry["permissions"] == natsserver.permissions(entry["user"])


def test_server_config_is_stable_across_writes(config):
    first = natsserver.write_config(config).read_text()
    assert natsserver.write_config(config).read_text() == first
