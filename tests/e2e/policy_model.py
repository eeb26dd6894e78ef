"""The reachability model of the Kubernetes network policy tests: namespaces x, y, z, each
with pods a, b, c, every pod serving TCP and UDP on ports 80 and 81. Probing is a real
connection from every pod to every other pod."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import PROBER, Servers

NAMESPACES = ("x", "y", "z")
PODS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in ("a", "b", "c"))
PORTS = (80, 81)
PROTOCOLS = ("tcp", "udp")


Allowed = Callable[[str, str, str, int], bool]    # (src, dst, proto, port) -> reachable


class Model:
    def __init__(self, node) -> None:
        self.node = node
        manifests = [namespace_doc(ns, {"ns": ns}) for ns in NAMESPACES]
        manifests += [pod_doc(ns, p, {"pod": p}) for ns in NAMESPACES for p in ("a", "b", "c")]
        node.apply(docs(*manifests))
        pods = node.pods()
        self.ip = {ref: pods[ref]["status"]["podIP"] for ref in PODS}
        self.netns = {ref: pods[ref]["spec"]["netns"] for ref in PODS}
        self.servers = Servers()
        for ref in PODS:
            self.servers.start(self.netns[ref], *PORTS)

    def close(self) -> None:
        self.servers.close()

    def probe_all(self, sources=PODS, ports=PORTS, protocols=PROTOCOLS) -> dict[tuple, bool]:
        """Every (src, dst, proto, port) -> reached, probing from all sources in parallel."""
        procs = {}
        for src in sources:
            targets = [[proto, self.ip[dst], port] for dst in PODS if dst != src
                       for proto in protocols for port in ports]
            procs[src] = subprocess.Popen(["nsenter", f"--net={self.netns[src]}", "--", sys.executable, PROBER,
                                           json.dumps(targets)], stdout=subprocess.PIPE, text=True)
        by_ip = {ip: ref for ref, ip in self.ip.items()}
        out = {}
        for src, proc in procs.items():
            stdout, _ = proc.communicate(timeout=60)
            for key, ok in json.loads(stdout).items():
                proto, ip, port = key.split()
                out[(src, by_ip[ip], proto, int(port))] = ok
        return out

    def check(self, allowed: Allowed, **kwargs) -> None:
        """Probe everything; fail listing every pair whose reachability differs from ALLOWED."""
        got = self.probe_all(**kwargs)
        wrong = [f"{s} -> {d} {p}/{port}: expected {'allowed' if allowed(s, d, p, port) else 'denied'}"
                 for (s, d, p, port), ok in sorted(got.items()) if ok != allowed(s, d, p, port)]
        assert not wrong, f"{len(wrong)} of {len(got)} probes differ:\n" + "\n".join(wrong[:40])


def everything(src: str, dst: str, proto: str, port: int) -> bool:
    return True
