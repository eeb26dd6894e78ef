"""Hypothesis strategies shared by the fuzz targets: JSON-like trees as YAML, JSON and msgpack
can carry them, with the awkward values hostile input uses."""
from __future__ import annotations

from hypothesis import strategies as st

# Scalars a document or payload can hold, edge cases weighted in.
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 64), max_value=2 ** 64),
    st.sampled_from([0, 1, -1, 65535, 65536, 65537, 2 ** 16 + 1, 2 ** 31, 2 ** 32, 2 ** 63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "a\n", "TCP", "ANY", "80", "0", "http", "10.0.0.0/8", "0.0.0.0/0",
                     "k8s:app", "app", "In", "Exists", "Ingress", "cilium.io/v2", "v1", "Pod",
                     "NetworkPolicy", "CiliumNetworkPolicy", "/proc/1/ns/net", "../..", "\x00"]),
    st.binary(max_size=8),
)
KEYS = st.one_of(st.text(max_size=12), st.sampled_from(
    ["apiVersion", "kind", "metadata", "name", "namespace", "labels", "spec", "ingress", "egress",
     "endpointSelector", "podSelector", "matchLabels", "toPorts", "ports", "port", "protocol",
     "fromEndpoints", "toCIDR", "except", "cidr", "v", "endpoint_id", "identity", "document"]))


def trees(scalars=SCALARS, max_leaves: int = 30, keys=KEYS):
    """Nested maps and lists of SCALARS."""
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)), max_leaves=max_leaves)


# What a msgpack payload can carry and compare equal after a round trip.
MSGPACK_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 64 - 1),
                            st.floats(allow_nan=False), st.text(max_size=12), st.binary(max_size=8))

# What YAML/JSON/msgpack text can hold (no bytes in JSON, string keys in JSON).
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))


def deep(levels: int, leaf=None, as_map: bool = False):
    value = leaf
    for _ in range(levels):
        value = {"a": value} if as_map else [value]
    return value


def mutate(doc, data, values=None):
    """DOC with one node somewhere replaced by a drawn value (the shape stays mostly valid,
    which reaches deeper into a validator than random trees do)."""
    values = values if values is not None else trees(max_leaves=6)
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    walk(doc, ())
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(values)
    if not path:
        return replacement
    import copy
    out = copy.deepcopy(doc)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = replacement
    return out
