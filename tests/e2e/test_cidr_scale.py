"""CIDR-heavy policies on a real node: identities and ipcache entries shared by two policies
and removed with the last of them, `except` carve-outs at scale, a small apply that finishes
while a large one is still being worked on, changes to one policy in the order they arrive,
and policies that would overflow the ipcache or
the policy map refused with nothing changed."""
import asyncio
import ipaddress
import json

import pytest
import yaml

from services.runtime.bus import Bus, Credentials, RemoteError
from services.runtime.config import ADMIN, load_config
from services.wire import subjects
from services.wire.messages import EXHAUSTED, Apply, ObjectRef
from tests.support.node import Node, docs, namespace_doc, pod_doc

NS = "scale"
MAPS = {"ipcache": 32768, "policy": 32768}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("node"), maps=MAPS)
    try:
        node.up()
        node.apply(docs(namespace_doc(NS), pod_doc(NS, "web", {"app": "web"}), pod_doc(NS, "b", {"app": "b"})))
        yield node
    finally:
        node.purge()
        left = node.leftovers()
        assert not left, f"the node left things behind: {left}"


def hosts(first: str, count: int) -> list[str]:
    start = int(ipaddress.IPv4Address(first))
    return [f"{ipaddress.IPv4Address(start + i)}/32" for i in range(count)]


def allow_list(name: str, pod: str, blocks: list[dict], ports: int = 1) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": pod}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"ipBlock": b} for b in blocks],
                                  "ports": [{"protocol": "TCP", "port": 80 + i} for i in range(ports)]}]}}


def apply(node: Node, doc: dict) -> None:
    node.cli("apply", "-f", "-", input=yaml.safe_dump(doc), timeout=300)


def delete(node: Node, name: str) -> None:
    node.cli("delete", "networkpolicy", name, "-n", NS, timeout=300)


def cidr_identities(node: Node) -> dict[str, int]:
    items = json.loads(node.cli("get", "identities", "-o", "json", timeout=120).stdout)
    items = items["items"] if isinstance(items, dict) else items
    return {label[5:]: i["id"] for i in items for label in i["labels"] if label.startswith("cidr:")}


def policy_ipcache(node: Node) -> dict[str, int]:
    items = json.loads(node.cli("get", "ipcache", "-o", "json", timeout=120).stdout)
    items = items["items"] if isinstance(items, dict) else items
    return {i["cidr"]: i["identity"] for i in items if i["source"] == "cidr-policy"}


def allowed_peers(node: Node, pod: str) -> set[int]:
    entries = json.loads(node.cli("bpf", "policy", "get", f"{NS}/{pod}", "-o", "json", timeout=120).stdout)
    return {e["identity"] for e in entries if e["direction"] == "ingress" and e["identity"] and not e["flags"]}


def test_two_policies_share_cidr_identities_and_the_last_delete_removes_them(node):
    shared, only_a, only_b = hosts("100.71.0.1", 200), hosts("100.72.0.1", 3000), hosts("100.73.0.1", 1000)
    apply(node, allow_list("list-a", "web", [{"cidr": c} for c in shared + only_a]))
    apply(node, allow_list("list-b", "b", [{"cidr": c} for c in shared + only_b]))
    ids, ipcache = cidr_identities(node), policy_ipcache(node)
    assert set(ids) == set(shared + only_a + only_b)
    assert len(set(ids.values())) == len(ids)                      # one identity a prefix
    assert ipcache == ids                                          # one entry each, that identity

    delete(node, "list-a")
    after = cidr_identities(node)
    assert after == {c: ids[c] for c in shared + only_b}           # shared ones kept, same numbers
    assert policy_ipcache(node) == after
    assert {ids[c] for c in shared} <= allowed_peers(node, "b")

    delete(node, "list-b")
    assert cidr_identities(node) == {} and policy_ipcache(node) == {}


def test_except_carve_outs_at_scale(node):
    """web allows 10.99.0.0/16 minus 1,000 /30s; b's allow-list names the /16's first 2,000
    addresses: web's entries hold exactly those outside the carve-outs."""
    carved = [f"10.99.{i // 64}.{i % 64 * 4}/30" for i in range(1000)]
    inside = hosts("10.99.0.1", 2000)
    apply(node, allow_list("block", "web", [{"cidr": "10.99.0.0/16", "except": carved}]))
    apply(node, allow_list("inside", "b", [{"cidr": c} for c in inside]))
    try:
        ids, allowed = cidr_identities(node), allowed_peers(node, "web")
        nets = [ipaddress.IPv4Network(c) for c in carved]
        outside = {h for h in inside if not any(ipaddress.IPv4Network(h).subnet_of(n) for n in nets)}
        assert {ids[h] for h in inside} & allowed == {ids[h] for h in outside}
        assert ids["10.99.0.0/16"] in allowed and not {ids[c] for c in carved} & allowed
    finally:
        delete(node, "inside")
        delete(node, "block")


async def _bus(node: Node) -> Bus:
    creds = Credentials.load(load_config(str(node.config_path)).credentials_path(ADMIN))
    return await Bus.connect(creds, name="test-cidr-scale", retry=False)


def test_a_small_apply_finishes_while_a_large_one_is_worked_on(node):
    """The large apply is sent first, on the same connection (NATS keeps the order); the
    small one, to another pod, answers first and is stored first."""
    large = allow_list("large", "web", [{"cidr": c} for c in hosts("100.64.0.1", 25000)])
    small = allow_list("small", "b", [{"cidr": c} for c in hosts("100.74.0.1", 10)])

    async def body():
        bus = await _bus(node)
        try:
            order = []

            async def call(doc):
                result = await bus.request(subjects.POLICY_APPLY, Apply(doc), timeout=300)
                order.append(doc["metadata"]["name"])
                return result

            big = asyncio.ensure_future(call(large))
            await asyncio.sleep(0)                      # the large request goes out first
            little = await call(small)
            health = await bus.request(subjects.health("policyd"), timeout=30)
            done = await big
            return order, little, done, health
        finally:
            await bus.close()

    order, little, done, health = asyncio.run(body())
    try:
        assert order == ["small", "large"]
        assert little["revision"] < done["revision"]
        assert health["ready"]
        assert len(policy_ipcache(node)) == 25010
    finally:
        delete(node, "large")
        delete(node, "small")


def test_changes_to_one_policy_take_effect_in_the_order_they_arrive(node):
    """A large version of a policy, then a small one of the same policy right behind it: the
    small one, parsed in no time, waits for the large one, and is the one left in force."""
    large = allow_list("order", "b", [{"cidr": c} for c in hosts("100.96.0.1", 25000)])
    small = allow_list("order", "b", [{"cidr": c} for c in hosts("100.96.0.1", 3)])

    async def body():
        bus = await _bus(node)
        try:
            big = asyncio.ensure_future(bus.request(subjects.POLICY_APPLY, Apply(large), timeout=300))
            await asyncio.sleep(0)                      # the large request goes out first
            little = await bus.request(subjects.POLICY_APPLY, Apply(small), timeout=300)
            return little, await big
        finally:
            await bus.close()

    little, done = asyncio.run(body())
    try:
        assert done["revision"] < little["revision"]
        assert sorted(c for c in policy_ipcache(node) if c.startswith("100.96.")) == hosts("100.96.0.1", 3)
    finally:
        delete(node, "order")


def _refused(node: Node, doc: dict) -> str:
    proc = node.cli("apply", "-f", "-", input=yaml.safe_dump(doc), check=False, timeout=300)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_policies_that_would_overflow_the_ipcache_or_the_policy_map_change_nothing(node):
    before = (cidr_identities(node), policy_ipcache(node), allowed_peers(node, "web"),
              node.cli("get", "networkpolicies", "-A", "-o", "json").stdout)
    # No pod selected: no policy entries, but 40,000 ipcache entries for 32,768.
    out = _refused(node, allow_list("too-many-cidrs", "nobody", [{"cidr": c} for c in hosts("100.80.0.1", 40000)]))
    assert "ipcache map is full" in out and "maps.ipcache" in out
    # 20,000 prefixes fit the ipcache; x 2 ports they do not fit web's policy map.
    out = _refused(node, allow_list("too-many-entries", "web", [{"cidr": c} for c in hosts("100.90.0.1", 20000)],
                                    ports=2))
    assert "maps.policy" in out
    after = (cidr_identities(node), policy_ipcache(node), allowed_peers(node, "web"),
             node.cli("get", "networkpolicies", "-A", "-o", "json").stdout)
    assert after == before
