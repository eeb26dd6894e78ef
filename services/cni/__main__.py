"""`capillary-cni`: the CNI plugin (``type: capillary``), run by container runtimes.

The runtime sets CNI_COMMAND (ADD, DEL, CHECK, VERSION, STATUS, GC) and the other CNI_*
variables and writes the network config on stdin; the result or the spec's error JSON goes
to stdout. Errors exit 1; a failed ADD leaves nothing behind (endpointd undoes a half-made
pod, and the plugin deletes a pod it cannot report).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

from services.cni import plugin
from services.cni.labels import runtime_labels
from services.cni.spec import (NOT_AVAILABLE, SPEC_VERSION, TRY_AGAIN_LATER, CniError, Environment, NetConf,
                               parse_config, parse_environment, version_result)


async def run(env: Environment, conf: NetConf) -> dict | None:
    if env.command == "VERSION":
        return version_result()
    try:
        bus = await plugin.connect(conf)
    except CniError as exc:
        if env.command == "DEL" and exc.code == TRY_AGAIN_LATER and not os.path.exists(plugin.context_file(conf)):
            return None        # no node was ever set up here: nothing of ours can exist
        if env.command == "STATUS":
            raise CniError(NOT_AVAILABLE, exc.msg, exc.details) from None
        raise
    try:
        if env.command == "ADD":
            labels = {**runtime_labels(env), **conf.labels}
            return await plugin.add(bus, env, conf, labels)
        if env.command == "DEL":
            await plugin.delete(bus, env, conf)
        elif env.command == "CHECK":
            await plugin.check(bus, env, conf)
        elif env.command == "GC":
            await plugin.gc(bus, conf)
        elif env.command == "STATUS":
            await plugin.status(bus)
        return None
    finally:
        await bus.nc.close()


def main() -> int:
    version = SPEC_VERSION
    try:
        env = parse_environment(dict(os.environ))
        conf = parse_config(sys.stdin.buffer.read(), env.command)
        version = conf.cni_version
        out = asyncio.run(run(env, conf))
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
