"""The CNI plugin starts once per command, so what it imports is part of every ADD.

These run the plugin's modules in a fresh interpreter started as the installed wrapper
starts it (services.cni.install: -I -S and its module path) and look at what got imported,
so a heavy import creeping back into the ADD path fails here, without timing anything.
"""
from __future__ import annotations

import json
import subprocess

from services.cni.install import command

# Libraries the plugin's commands never use, each costing milliseconds to tens of them of
# start-up: the netlink library, the BPF toolchain, metrics, the certificate maker, nats-py
# and asyncio (the plugin speaks NATS over a blocking socket), the schemas' dataclasses,
# YAML and the node config (read only when a network config names no NATS context), pathlib
# (and urllib.parse with it), and ctypes (the netns module: CHECK reads a container's routes,
# ADD has its gateway from endpointd's reply).
HEAVY = ("pyroute2", "bcc", "prometheus_client", "cryptography", "services.datapath.netlink", "asyncio", "nats",
         "dataclasses", "yaml", "services.wire.messages", "services.runtime.config", "services.runtime.bus",
         "structlog", "subprocess", "pathlib", "ctypes", "services.datapath.netns")
NODE_CLIENT = ("services.cni.plugin", "services.runtime.natsclient", "socket")


def imported(*modules: str) -> set[str]:
    """The modules a fresh interpreter, started as the wrapper starts it, holds after
    importing MODULES."""
    python, *flags, _launch, path = command()
    code = (f"import sys; sys.path[:0] = {path!r}.split(':')\nimport json\nimport {', '.join(modules)}\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([python, *flags, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def loaded(names: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if p in names or any(n.startswith(p + ".") for n in names))


def test_the_add_path_imports_no_heavy_library():
    # ADD runs services.cni.__main__ and, from it, services.cni.plugin (all the commands).
    assert loaded(imported("services.cni.__main__", "services.cni.plugin"), HEAVY) == []


def test_version_does_not_import_the_node_client():
    assert loaded(imported("services.cni.__main__"), NODE_CLIENT) == []


def test_the_wrapper_runs_this_checkout_isolated_from_the_environment():
    python, *flags, launch, path = command()
    assert flags == ["-I", "-S"] and launch.endswith("services/cni/launch.py")
    assert launch.startswith(path.split(":")[0] + "/")
