"""`capillary status` against a server whose JetStream does not answer (a nats-server that
has just restarted, a cluster electing leaders): it says so instead of failing with a
traceback and printing nothing. Against a real nats-server started without JetStream."""
from __future__ import annotations

from services.cli.client import Client
from services.cli.node import _nats_state
from services.runtime.bus import Bus, Credentials
from services.runtime.config import NodeConfig
from tests.support.natsbare import BareNats


async def test_status_reports_jetstream_that_does_not_answer():
    nats = BareNats()
    try:
        client = Client(NodeConfig())
        client.bus = await Bus.connect(Credentials(nats.url, "", ""), "status-test", retry=False)
        try:
            state = await _nats_state(client)
        finally:
            await client.bus.close()
    finally:
        nats.close()
    assert state["connected"] and state["server_version"]
    assert state["jetstream"]["error"], state
    assert "streams" not in state["jetstream"]
