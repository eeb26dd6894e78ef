"""A real NATS cluster for tests: a lab (one network namespace per node on an underlay
bridge), each node's nats-server rendered from its capillary config (routes, TLS, JetStream),
and nothing left behind on close()."""
from __future__ import annotations

import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path

from services.cli import lab as labmod
from services.cli.labconfig import write_configs
from services.runtime import natsserver
from services.runtime.bus import Bus, Credentials
from services.runtime.config import ADMIN, NodeConfig


class NatsCluster:
    def __init__(self, lab: labmod.Lab, configs: list[NodeConfig]) -> None:
        self.lab = lab
        self.configs = configs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, index: int) -> None:
        config, node = self.configs[index], self.lab.nodes[index]
        conf = natsserver.write_config(config)
        log = open(config.state_path / "nats.log", "ab")
        self.procs[node.name] = subprocess.Popen(
            labmod.in_node(node, natsserver.nats_server_binary(), "-c", str(conf)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        natsserver.wait_listening(node.underlay_ip, config.nats.port, 30, self.procs[node.name])

    def kill(self, index: int) -> None:
        proc = self.procs.pop(self.lab.nodes[index].name)
        proc.kill()
        proc.wait()

    def credentials(self, index: int, user: str = ADMIN) -> Credentials:
        return Credentials.load(self.configs[index].credentials_path(user))

    async def connect(self, index: int, user: str = ADMIN, name: str = "test") -> Bus:
        return await Bus.connect(self.credentials(index, user), name=name)

    def close(self) -> list[str]:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()
        return labmod.destroy(self.lab)


@contextmanager
def nats_cluster(workdir: Path, nodes: int = 3):
    lab = labmod.plan(f"t{secrets.token_hex(3)}", nodes, workdir)
    labmod.build(lab)
    cluster = NatsCluster(lab, [])
    try:
        cluster.configs = write_configs(lab)
        for config in cluster.configs:
            config.state_path.mkdir(parents=True, exist_ok=True)
        for i in range(nodes):
            cluster.start(i)
        yield cluster
    finally:
        left = cluster.close()
        assert not left, f"the NATS cluster left things behind: {left}"
