"""`capillary-cni`: the CNI plugin (``type: capillary``), run by container runtimes.

The runtime sets CNI_COMMAND (ADD, DEL, CHECK, VERSION, STATUS and GC) and the other CNI_*
variables and writes the network config on stdin; the result or the spec's error JSON goes
to stdout. Errors exit 1; a failed ADD leaves nothing behind (endpointd undoes a half-made
pod, and the plugin deletes a pod it cannot report).

A runtime starts the plugin once per command, so its start-up is part of every ADD: this
module imports only the spec's side (pure, light), and the node's client (services.cni.plugin,
NATS over a blocking socket) only for the commands that talk to the node. The installed
wrapper runs it through services/cni/launch.py (see services.cni.install).
"""
from __future__ import annotations

import json
import os
import sys

from services.cni.spec import SPEC_VERSION, CniError, parse_config, parse_environment, version_result


def main() -> int:
    version = SPEC_VERSION
    try:
        env = parse_environment(dict(os.environ))
        conf = parse_config(sys.stdin.buffer.read(), env.command)
        version = conf.cni_version
        if env.command == "VERSION":
            out = version_result()
        else:
            from services.cni import plugin      # the node's client: only where a command needs it
            out = plugin.execute(env, conf)
    except CniError as exc:
        json.dump(exc.to_json(version), sys.stdout)
        sys.stdout.write("\n")
        return 1
    if out is not None:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
