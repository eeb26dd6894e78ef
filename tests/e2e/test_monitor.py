"""`capillary monitor`: raw datapath events from a real node, filtered by type and endpoint,
as text lines in cilium-dbg monitor's shape or as JSON; flowd publishes them only while a
monitor holds a lease."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from services.datapath.numbers import EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_EGRESS, TRACE_FROM_LXC
from services.runtime.bus import Bus, Credentials
from services.wire import codec, subjects
from services.wire.messages import MonitorAttach, MonitorEvents
from tests.support import disruption
from tests.support.node import REPO, docs, namespace_doc, pod_doc
from tests.support.traffic import probe

DENY_ALL_TO_B = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "b-closed", "namespace": "mon"},
                 "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}}


@pytest.fixture(scope="module")
def mon(node):
    node.apply(docs(namespace_doc("mon"), pod_doc("mon", "a", {"app": "a"}), pod_doc("mon", "b", {"app": "b"})))
    node.apply(yaml.safe_dump(DENY_ALL_TO_B))
    try:
        yield node
    finally:
        node.cli("delete", "networkpolicy", "b-closed", "-n", "mon")
        node.cli("delete", "namespace", "mon")


def start_monitor(node, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--config", str(node.config_path),
                             "monitor", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    return proc


def lines_after_traffic(node, proc: subprocess.Popen, traffic, skip: int = 0) -> list[str]:
    for _ in range(skip):
        proc.stdout.readline()                   # the "Listening ..." header
    time.sleep(0.5)                              # the lease is taken before the header is printed
    traffic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out.splitlines()


def test_drops_of_one_endpoint_as_text(mon):
    node = mon
    b = node.pods()["mon/b"]["status"]
    a = node.pods()["mon/a"]["status"]
    proc = start_monitor(node, "--type", "drop", "--related-to", str(b["endpointID"]), "-n", "1")
    assert proc.stdout.readline().startswith(f"Listening for datapath events on node {node.name}")
    lines = lines_after_traffic(node, proc, lambda: probe(node.netns("mon/a"), "tcp", b["podIP"], 80, sport=42001),
                                skip=1)
    assert lines == [f"xx drop (Policy denied) to endpoint {b['endpointID']}, ifindex {a['hostInterface']}, "
                     f"identity {a['identity']}->{b['identity']}: {a['podIP']}:42001 -> {b['podIP']}:80 tcp SYN"]


def test_every_type_as_json(mon):
    node = mon
    b = node.pods()["mon/b"]["status"]
    proc = start_monitor(node, "-o", "json", "--related-to", str(node.pods()["mon/a"]["status"]["endpointID"]),
                         "-n", "2")
    events = [json.loads(line) for line in lines_after_traffic(
        node, proc, lambda: probe(node.netns("mon/a"), "udp", b["podIP"], 53, sport=42002))]
    # a's from-endpoint trace and its egress verdict (b's ingress verdict and the drop are b's)
    assert [(e["type"], e["subtype"], e["direction"]) for e in events] == \
        [(EVENT_TRACE, TRACE_FROM_LXC, METRIC_EGRESS), (EVENT_POLICY_VERDICT, 0, METRIC_EGRESS)]
    assert events[0]["packet"]["l4"] == {"UDP": {"source_port": 42002, "destination_port": 53}}


def test_raw_events_flow_only_while_a_lease_is_held(mon):
    """Held, given back (lease 0) and run out: events only in the first case. No probe races
    a lease: each starts after the lease was taken, or after it ended."""
    node = mon
    b_ip = node.pods()["mon/b"]["status"]["podIP"]

    async def scenario() -> tuple[int, int, int]:
        bus = await Bus.connect(Credentials.load(node.state_dir / "nats" / "admin.context.json"), name="lease-test")
        got: list[int] = []

        async def on_batch(msg) -> None:
            got.append(len(MonitorEvents.from_wire(codec.decode(msg.data)).events))

        async def events_of_a_probe(sport: int) -> int:
            before = sum(got)
            await asyncio.to_thread(probe, node.netns("mon/a"), "tcp", b_ip, 80, sport)
            await bus.nc.flush()
            await asyncio.sleep(1.0)                  # the probe's events reach NATS, if they go
            return sum(got) - before

        try:
            await bus.nc.subscribe(subjects.monitor(node.name), cb=on_batch)
            await bus.request(subjects.OBSERVER_MONITOR, MonitorAttach(monitor="lease-test", lease=60.0))
            held = await events_of_a_probe(42003)
            await bus.request(subjects.OBSERVER_MONITOR, MonitorAttach(monitor="lease-test", lease=0))
            given_back = await events_of_a_probe(42004)
            await bus.request(subjects.OBSERVER_MONITOR, MonitorAttach(monitor="lease-test", lease=0.5))
            await asyncio.sleep(1.0)                  # the lease runs out
            run_out = await events_of_a_probe(42005)
            return held, given_back, run_out
        finally:
            await bus.close()

    held, given_back, run_out = asyncio.run(scenario())
    assert held >= 4 and given_back == 0 and run_out == 0   # the monitors before gave theirs back


def test_bad_arguments(mon):
    proc = mon.cli("monitor", "--type", "capture", check=False)
    assert proc.returncode == 2 and "invalid choice: 'capture'" in proc.stderr
    proc = mon.cli("monitor", "-n", "-1", check=False)
    assert proc.returncode == 1 and "--count: -1" in proc.stderr


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # as `cmd &` in a non-interactive shell


@pytest.mark.parametrize("command", [["monitor"], ["observe", "-f"], ["observe", "-f", "--last", "3"], ["walk"]])
def test_ctrl_c_ends_every_follow_mode_even_when_started_with_sigint_ignored(mon, command):
    """A job a script starts in the background inherits SIGINT ignored; Ctrl-C (or kill
    -INT) must still end the command, at once and cleanly."""
    sink = None
    if command == ["walk"]:     # a UDP probe nobody answers: the walk waits for its timeout
        sink = subprocess.Popen(["nsenter", f"--net={mon.netns('mon/a')}", "--", sys.executable, "-c",
                                 "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                 "s.bind(('0.0.0.0', 5353)); print('ready', flush=True); time.sleep(600)"],
                                stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        command = ["walk", "mon/b", "mon/a", "--protocol", "udp", "--port", "5353", "--timeout", "600"]
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--config", str(mon.config_path), *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=_ignoring_sigint)
    try:
        disruption.wait_connected(proc)
        if command[0] == "walk":
            time.sleep(2)       # into the probe
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == (130 if command[0] == "walk" else 0), err
        assert "Traceback" not in err
    finally:
        for p in (proc, sink):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait()

