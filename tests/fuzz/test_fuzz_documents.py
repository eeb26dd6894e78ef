"""Fuzz targets for documents read from files: manifests (`capillary apply -f`) and the node
config. Properties: whatever the text, the loaders return documents or raise the project's
own error (ManifestError, ConfigError); a config they accept is one `down --purge` can
delete safely and whose pod CIDR is private."""
from __future__ import annotations

import ipaddress
import json
import os

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.runtime.config import PRIVATE_RANGES, ConfigError, parse_config
from services.wire.manifests import ManifestError, load_documents, parse_namespace, parse_pod
from tests.fuzz.conftest import budget, count
from tests.fuzz.strategies import JSON_SCALARS, mutate, trees

YAML_BITS = st.sampled_from(["- ", "[", "]", "{", "}", ": ", "&a ", "*a", "!!str ", "!!binary ",
                             "---\n", "\n", "  ", "'", '"', "? ", "|\n  ", ">", "#", ",", "%YAML 1.1\n",
                             "kind: Pod\n", "apiVersion: v1\n", "9" * 50, "0x1F", "1e999", ".nan", "~",
                             "<<: *a\n", "!!python/object:os.system "])
ANCHOR_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"},
                    "annotations": {"policy.capillary.io/audit": "false"}},
       "spec": {"netns": "/run/netns/a"}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}


def _load(text: str) -> None:
    try:
        docs = load_documents(text)
    except ManifestError:
        return
    for doc in docs:
        parse = parse_pod if doc.kind == "Pod" else parse_namespace if doc.kind == "Namespace" else None
        if parse is None:
            continue
        try:
            parse(doc)
        except ManifestError:
            pass


@settings(max_examples=budget(400))
@given(st.one_of(st.text(max_size=80), st.lists(YAML_BITS, max_size=30).map("".join)))
@example("[" * 5000)                                             # found: RecursionError (JSON)
@example("- " * 3000 + "x")                                      # found: RecursionError (YAML)
@example("a: " + "9" * 5000)                                     # found: ValueError (int digits)
@example(ANCHOR_BOMB)                                            # found: 4.3 s of expansion
@example("a: !!python/object/apply:os.system ['true']")
def test_any_manifest_text_loads_or_is_a_manifest_error(text):
    count("manifests.load_documents(text)")
    _load(text)


@settings(max_examples=budget(300))
@given(data=st.data())
def test_mutated_manifests_parse_or_are_manifest_errors(data):
    count("manifests.parse(mutated)")
    doc = mutate(data.draw(st.sampled_from([POD, NAMESPACE])), data,
                 st.one_of(trees(JSON_SCALARS, max_leaves=6), st.sampled_from(["a\n", "x" * 70, "-a", ""])))
    as_text = data.draw(st.sampled_from([json.dumps, yaml.safe_dump]))
    _load(as_text(doc))


CONFIG = {"kind": "NodeConfig", "node": "n1", "stateDir": "/var/lib/capillary", "podCIDR": "10.9.0.0/16",
          "datapath": {"mode": "redirect", "bpfRoot": "/sys/fs/bpf/capillary", "routerDevice": "cap_host",
                       "routerPeer": "cap_net", "lxcPrefix": "lxc"},
          "maps": {"endpoints": 4096}, "events": {"ringBytes": 4096, "history": 10},
          "nats": {"host": "127.0.0.1", "port": 4222}, "metrics": {"host": "127.0.0.1", "flowd": 9965}}
CONFIG_VALUES = st.one_of(
    trees(JSON_SCALARS, max_leaves=4),
    st.sampled_from(["", "/", "/etc", "/var/lib", "/sys/fs/bpf/../../../etc", "/sys/fs/bpf/", "relative",
                     "/var/lib/x/../../..", "0.0.0.0/1", "224.0.0.0/4", "8.8.8.0/24", "10.0.0.0/33",
                     "node1\n", "cap\n", "/sys/fs/bpf/x\n", 2 ** 80, -1, True]))


def _config_is_safe(text: str) -> None:
    try:
        config = parse_config(text)
    except ConfigError:
        return
    state = config.stateDir.rstrip("/")
    assert state.startswith("/") and os.path.normpath(state) == state and state.count("/") >= 2, state
    root = config.datapath.bpfRoot.rstrip("/")
    assert root.startswith("/sys/fs/bpf/") and os.path.normpath(root) == root, root
    net = ipaddress.IPv4Network(config.podCIDR)
    assert any(net.subnet_of(r) for r in PRIVATE_RANGES), net
    assert config.node.isprintable() and config.datapath.routerDevice.isprintable()


@settings(max_examples=budget(400))
@given(data=st.data())
@example(data=None)
def test_any_config_is_refused_with_a_config_error_or_is_safe_to_purge(data):
    count("config.parse_config(mutated)")
    if data is None:                    # found: stateDir "" and a bpfRoot escaping /sys/fs/bpf
        for text in ('stateDir: ""', "datapath: {bpfRoot: /sys/fs/bpf/../../../etc}", "podCIDR: 0.0.0.0/1"):
            _config_is_safe(text)
        return
    doc = mutate(CONFIG, data, CONFIG_VALUES)
    _config_is_safe(data.draw(st.sampled_from([json.dumps, yaml.safe_dump]))(doc))


@settings(max_examples=budget(200))
@given(st.lists(YAML_BITS | st.text(max_size=10), max_size=30).map("".join))
def test_any_config_text_is_a_config_or_a_config_error(text):
    count("config.parse_config(text)")
    _config_is_safe(text)
