"""The CNI plugin starts once per command, so what it imports is part of every ADD.

These run the plugin's modules in a fresh interpreter and look at what got imported, so a
heavy import creeping back into the ADD path fails here, without timing anything.
"""
from __future__ import annotations

import json
import subprocess
import sys

# Libraries the plugin's commands never use, each costing tens of ms of start-up: the netlink
# library, the BPF toolchain, metrics, the certificate maker.
HEAVY = ("pyroute2", "bcc", "prometheus_client", "cryptography", "services.datapath.netlink")
NODE_CLIENT = ("asyncio", "nats", "services.cni.plugin", "services.runtime.bus")


def imported(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing MODULES."""
    code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def loaded(names: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if p in names or any(n.startswith(p + ".") for n in names))


def test_the_add_path_imports_no_heavy_library():
    # ADD runs services.cni.__main__ and, from it, services.cni.plugin (all the commands).
    assert loaded(imported("services.cni.__main__", "services.cni.plugin"), HEAVY) == []


def test_version_does_not_import_the_node_client():
    assert loaded(imported("services.cni.__main__"), NODE_CLIENT) == []
