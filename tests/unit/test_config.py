"""Node configuration: defaults work, every error names its field, the CiliumConfig shorthand maps
onto NodeConfig and explicit NodeConfig values win."""
from __future__ import annotations

import ipaddress
import textwrap

import pytest

from services.runtime.config import ConfigError, NodeConfig, load_config, parse_config


def parse(text: str) -> NodeConfig:
    return parse_config(textwrap.dedent(text))


def cilium(spec: str) -> NodeConfig:
    return parse("kind: CiliumConfig\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))


# ---- defaults ------------------------------------------------------------------------------

def test_defaults_are_valid_and_an_empty_file_means_defaults():
    assert parse_config("") == NodeConfig()
    assert parse_config("kind: NodeConfig\n") == NodeConfig()
    config = NodeConfig()
    assert config.datapath.mode == "redirect"
    assert config.policy.enforcement == "default"
    assert config.nats.url == "nats://127.0.0.1:4222"


def test_load_config_without_a_file_uses_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("CAPILLARY_CONFIG", raising=False)
    monkeypatch.setattr("services.runtime.config.DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    assert load_config() == NodeConfig()


def test_load_config_reads_the_environment_variable(monkeypatch, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("node: edge7\n")
    monkeypatch.setenv("CAPILLARY_CONFIG", str(path))
    assert load_config().node == "edge7"


def test_load_config_of_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("cidr, router", [
    ("10.200.0.0/16", "10.200.0.1"),
    ("192.168.4.0/24", "192.168.4.1"),
    ("172.16.8.8/29", "172.16.8.9"),
])
def test_router_ip_is_the_first_address_of_the_pod_cidr(cidr, router):
    assert NodeConfig(podCIDR=cidr).router_ip == ipaddress.IPv4Address(router)


def test_state_paths_hang_off_state_dir():
    config = NodeConfig(stateDir="/tmp/cap")
    assert str(config.credentials_path("routed")) == "/tmp/cap/nats/routed.context.json"


def test_full_node_config_is_read():
    config = parse("""
        kind: NodeConfig
        node: edge-2
        podCIDR: 10.50.0.0/24
        masquerade: true
        datapath: {mode: host-stack, bpfRoot: /sys/fs/bpf/cap2, lxcPrefix: tap}
        maps: {policy: 1024}
        events: {ringBytes: 65536, aggregation: none}
        policy: {enforcement: always}
        nats: {port: 4333}
    """)
    assert (config.node, config.podCIDR, config.masquerade) == ("edge-2", "10.50.0.0/24", True)
    assert (config.datapath.mode, config.datapath.bpfRoot, config.datapath.lxcPrefix) == \
        ("host-stack", "/sys/fs/bpf/cap2", "tap")
    assert config.maps.policy == 1024 and config.maps.ipcache == 65536
    assert (config.events.ringBytes, config.events.aggregation) == (65536, "none")
    assert config.policy.enforcement == "always"
    assert config.nats.url == "nats://127.0.0.1:4333"


# ---- every error names its field -----------------------------------------------------------

@pytest.mark.parametrize("text, field", [
    ("node: Node_1", "node"),
    ("node: 5", "node"),
    ("podCIDR: 10.0.0.1/24", "podCIDR"),
    ("podCIDR: not-a-cidr", "podCIDR"),
    ("podCIDR: 10.0.0.0/30", "podCIDR"),
    ("stateDir: 5", "stateDir"),
    ("masquerade: 'no'", "masquerade"),
    ("bogus: 1", "bogus"),
    ("datapath: 5", "datapath"),
    ("datapath: {mode: fast}", "datapath.mode"),
    ("datapath: {bpfRoot: /tmp/bpf}", "datapath.bpfRoot"),
    ("datapath: {bpfRoot: 5}", "datapath.bpfRoot"),
    ("datapath: {routerDevice: a-name-far-too-long}", "datapath.routerDevice"),
    ("datapath: {routerPeer: 'a b'}", "datapath.routerPeer"),
    ("datapath: {routerPeer: 7}", "datapath.routerPeer"),
    ("datapath: {lxcPrefix: veths}", "datapath.lxcPrefix"),
    ("datapath: {conntrackGCInterval: 0}", "datapath.conntrackGCInterval"),
    ("datapath: {conntrackGCInterval: true}", "datapath.conntrackGCInterval"),
    ("datapath: {bogus: 1}", "datapath.bogus"),
    ("maps: {policy: 8}", "maps.policy"),
    ("maps: {conntrack: 4194305}", "maps.conntrack"),
    ("maps: {endpoints: true}", "maps.endpoints"),
    ("events: {ringBytes: 5000}", "events.ringBytes"),
    ("events: {ringBytes: 2048}", "events.ringBytes"),
    ("events: {aggregation: lots}", "events.aggregation"),
    ("events: {history: 0}", "events.history"),
    ("policy: {enforcement: sometimes}", "policy.enforcement"),
    ("nats: {port: 0}", "nats.port"),
    ("nats: {port: 65536}", "nats.port"),
    ("nats: {port: '4222'}", "nats.port"),
    ("metrics: {routed: high}", "metrics.routed"),
])
def test_errors_name_the_field(text, field):
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize("text, message", [
    ("kind: Secret\n", "document 0: kind 'Secret' is not NodeConfig or CiliumConfig"),
    ("kind: NodeConfig\n---\n- a\n", "document 1: expected a mapping"),
    ("node: [unclosed\n", "config is not valid YAML"),
])
def test_document_errors(text, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[")):
        parse_config(text)


# ---- the CiliumConfig shorthand ------------------------------------------------------------

@pytest.mark.parametrize("optimize, mode", [(True, "redirect"), (False, "host-stack")])
def test_optimize_selects_the_datapath_mode(optimize, mode):
    assert cilium(f"eBPFPrograms: {{optimize: {str(optimize).lower()}}}").datapath.mode == mode


@pytest.mark.parametrize("size, count, ring", [
    (4096, 1024, 4 * 1024 * 1024),      # already a power of two
    (4096, 1000, 4 * 1024 * 1024),      # rounded up
    (1000, 5, 8192),
    (1, 1, 4096),                       # never below one page
    (65536, 65, 8 * 1024 * 1024),
])
def test_network_buffers_set_the_ring_size_rounded_up_to_a_power_of_two(size, count, ring):
    config = cilium(f"networkBuffers: {{size: {size}, count: {count}}}")
    assert config.events.ringBytes == ring
    assert ring >= size * count


def test_network_buffers_default_the_missing_half():
    assert cilium("networkBuffers: {count: 2048}").events.ringBytes == 8 * 1024 * 1024


@pytest.mark.parametrize("enable, enforcement", [(False, "never"), (True, "default")])
def test_security_enable_false_turns_enforcement_off(enable, enforcement):
    assert cilium(f"security: {{enable: {str(enable).lower()}}}").policy.enforcement == enforcement


def test_shorthand_touches_nothing_it_does_not_name():
    config = cilium("security: {enable: false}")
    assert config.datapath == NodeConfig().datapath
    assert config.events == NodeConfig().events


@pytest.mark.parametrize("order", ["node-first", "shorthand-first"])
def test_explicit_node_config_values_win_over_the_shorthand(order):
    node = """
        kind: NodeConfig
        datapath: {mode: host-stack}
        events: {ringBytes: 16384}
        policy: {enforcement: always}
    """
    shorthand = """
        kind: CiliumConfig
        spec:
          eBPFPrograms: {optimize: true}
          networkBuffers: {size: 4096, count: 1024}
          security: {enable: false}
    """
    docs = [textwrap.dedent(node), textwrap.dedent(shorthand)]
    if order == "shorthand-first":
        docs.reverse()
    config = parse_config("---\n".join(docs))
    assert config.datapath.mode == "host-stack"
    assert config.events.ringBytes == 16384
    assert config.policy.enforcement == "always"


def test_shorthand_fills_in_next_to_explicit_values_of_the_same_section():
    config = parse_config(textwrap.dedent("""
        kind: NodeConfig
        datapath: {lxcPrefix: tap}
        ---
        kind: CiliumConfig
        spec: {eBPFPrograms: {optimize: false}}
    """))
    assert (config.datapath.lxcPrefix, config.datapath.mode) == ("tap", "host-stack")


@pytest.mark.parametrize("spec, field", [
    ("hubble: {enabled: true}", "CiliumConfig.spec.hubble"),
    ("eBPFPrograms: {optimise: false}", "CiliumConfig.spec.eBPFPrograms.optimise"),
    ("security: {enabled: false}", "CiliumConfig.spec.security.enabled"),
    ("networkBuffers: {pages: 4}", "CiliumConfig.spec.networkBuffers.pages"),
    ("eBPFPrograms: true", "CiliumConfig.spec.eBPFPrograms"),
    ("eBPFPrograms: {optimize: 'false'}", "CiliumConfig.spec.eBPFPrograms.optimize"),
    ("security: {enable: 'no'}", "CiliumConfig.spec.security.enable"),
    ("networkBuffers: {size: 0, count: 4}", "CiliumConfig.spec.networkBuffers"),
    ("networkBuffers: {size: big}", "CiliumConfig.spec.networkBuffers"),
])
def test_shorthand_rejects_unknown_fields_and_wrong_types(spec, field):
    with pytest.raises(ConfigError) as err:
        cilium(spec)
    assert str(err.value).startswith(f"{field}: ")


def test_the_docker_driver_is_off_by_default_and_named_after_its_socket():
    assert parse_config("").docker.plugin == ""
    config = parse_config("docker: {plugin: /run/docker/plugins/capillary.sock}")
    assert config.docker.driver == "capillary" and config.docker.host == "unix:///var/run/docker.sock"


@pytest.mark.parametrize("text, field", [("docker: {plugin: capillary.sock}", "docker.plugin"),
                                         ("docker: {plugin: /run/docker/plugins/x}", "docker.plugin"),
                                         ("docker: {host: /var/run/docker.sock}", "docker.host")])
def test_bad_docker_settings_are_named(text, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(text)


def test_the_web_page_listens_on_loopback_by_default():
    web = parse_config("").web
    assert (web.enabled, web.host, web.port, web.url) == (True, "127.0.0.1", 9966, "http://127.0.0.1:9966/")
    assert parse_config("web: {host: 0.0.0.0, port: 8080}").web.url == "https://127.0.0.1:8080/"   # TLS


@pytest.mark.parametrize("text, field", [("web: {port: 0}", "web.port"), ("web: {host: 'a b'}", "web.host"),
                                         ("web: {enabled: 1}", "web.enabled"), ("web: {tls: true}", "web.tls")])
def test_bad_web_settings_are_named(text, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(text)
