"""A child the supervisor restarts at the moment the node begins to stop must not outlive the
node: a routed left running re-adds the iptables rules a purge has just removed. Real child
processes (`sleep`), no NATS."""
from __future__ import annotations

import asyncio
import os

from services.runtime.config import NodeConfig
from services.runtime.supervisor import Child, Supervisor


class StopDuringSpawn(Supervisor):
    """The node's stop arrives while a child is being started."""

    async def _spawn(self, child: Child) -> None:
        await super()._spawn(child)
        self._stopping.set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_child_started_as_the_node_stops_is_stopped_by_its_watch(tmp_path):
    child = Child("sleeper", ["sleep", "60"])

    async def main() -> None:
        sup = StopDuringSpawn(NodeConfig(stateDir=str(tmp_path)), None)
        await asyncio.wait_for(sup._watch(child), timeout=15)    # returns: it does not wait on the child

    try:
        asyncio.run(main())
        assert not alive(child.proc.pid), "the child started during the stop is still running"
    finally:
        if child.proc is not None and alive(child.proc.pid):
            os.kill(child.proc.pid, 9)
