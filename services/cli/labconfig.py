"""Each lab node's config file, and the secrets every node of one cluster shares."""
from __future__ import annotations

from pathlib import Path

import yaml

from services.cli.lab import Lab, LabNode
from services.runtime import natsserver
from services.runtime.config import NodeConfig, parse_config

NATS_PORT = 4222
CLUSTER_PORT = 6222


def node_document(lab: Lab, node: LabNode, routing: str = "native", heartbeat_timeout: int = 6) -> dict:
    peers = [f"{p.underlay_ip}:{CLUSTER_PORT}" for p in lab.nodes if p is not node]
    return {
        "kind": "NodeConfig", "node": node.name, "stateDir": str(Path(node.workdir) / "state"),
        "podCIDR": node.pod_cidr,
        "datapath": {"bpfRoot": f"{node.bpf_root}/capillary"},
        "nats": {"host": node.underlay_ip, "port": NATS_PORT},
        "cluster": {"name": lab.name, "underlayIP": node.underlay_ip, "port": CLUSTER_PORT,
                    "routes": peers, "routing": routing, "heartbeatInterval": 1,
                    "heartbeatTimeout": heartbeat_timeout},
    }


def write_configs(lab: Lab, routing: str = "native", heartbeat_timeout: int = 6) -> list[NodeConfig]:
    """Every node's config.yaml; the first node's NATS passwords and CA are given to the rest."""
    configs = []
    for node in lab.nodes:
        text = yaml.safe_dump(node_document(lab, node, routing, heartbeat_timeout))
        config = parse_config(text)
        node.config_path.write_text(text)
        configs.append(config)
    natsserver.ensure_credentials(configs[0])
    from services.runtime import certs
    certs.ensure(natsserver.tls_dir(configs[0]), configs[0].nats.host, {configs[0].cluster.underlayIP},
                 route=True)
    for config in configs[1:]:
        natsserver.share_secrets(configs[0].nats_dir, config)
    return configs
