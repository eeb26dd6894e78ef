"""The service map page's backend under flow load: can it take the node's export rate?

A nats-server with the node's users and the web process (`python -m services.web`), as a
node runs them; a publisher in its own process sends flows on capillary.flows.<node>.<verdict>
at a paced rate for a few seconds (a few dozen distinct flows of three namespaces: forwarded,
dropped, traces and policy verdicts). Meanwhile this process asks /api/map twice a second and
reads the unfiltered /api/flows stream, as an open page does. Per rate:

  sent        flows published, and the publisher's achieved rate
  received    flows the backend counted (its own `received`), and how long after the last
              publish it had them all (drain)
  map         /api/map latency: median and max
  stream      seconds between two batches of the flow stream: median and max (nominal 0.25)
  sampled     flows the stream shipped of those its batches said matched (the page's
              "showing X of Y"); matched must equal received
  cpu         the web process's CPU over the step (utime + stime / wall), and per flow
              received: on a machine shared with other work the process may get less than
              a core, and then CPU per flow, not the drain, says what one core would take

    flock /tmp/capillary-bench.lock .venv/bin/python bench/web.py [--rates 10000,20000] [--seconds 5]

Writes bench/results/web.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from bench.common import REPO, environment, log, table, write_results  # noqa: E402
from services.runtime import natsserver  # noqa: E402
from services.runtime.config import ADMIN, load_config  # noqa: E402
from services.wire import codec, subjects  # noqa: E402
from services.wire.messages import FlowEvent  # noqa: E402
from tests.support.node import free_port  # noqa: E402

NODE = "wb"
DRAIN_PATIENCE = 60.0


def sample_flows() -> list[tuple[str, bytes]]:
    """(subject, payload) of distinct flows: pods of three namespaces, ports, verdicts, kinds."""
    out = []
    for i in range(48):
        ns = ("shop", "pay", "ops")[i % 3]
        src = {"ID": i, "identity": 300 + i % 7, "labels": [f"k8s:app=app{i % 7}", f"k8s:io.kubernetes.pod.namespace={ns}"],
               "namespace": ns, "pod_name": f"app{i % 7}-{i}"}
        dst = {"ID": 100 + i, "identity": 400 + i % 5, "labels": [f"k8s:app=svc{i % 5}", f"k8s:io.kubernetes.pod.namespace={ns}"],
               "namespace": ns, "pod_name": f"svc{i % 5}-0"}
        dropped = i % 4 == 0
        kind = (1, 0) if dropped else ((4, 0) if i % 2 else (5, 0))
        flow = {"time": "2026-01-01T00:00:00.000000000Z", "uuid": f"00000000-0000-4000-8000-{i:012d}",
                "verdict": "DROPPED" if dropped else "FORWARDED", "IP": {"source": f"10.0.0.{i}", "destination": "10.0.1.1",
                                                                        "ipVersion": "IPv4"},
                "l4": {"TCP": {"source_port": 40000 + i, "destination_port": (80, 443, 5432, 6379)[i % 4]}},
                "source": src, "destination": dst, "Type": "L3_L4", "node_name": NODE,
                "event_type": {"type": kind[0], "sub_type": kind[1]}, "traffic_direction": "INGRESS",
                "is_reply": False, "interface": {"index": 3, "name": "lxc0"}, "Summary": "TCP Flags: SYN"}
        out.append((subjects.flows(NODE, flow["verdict"]), codec.encode(FlowEvent(flow).to_wire())))
    return out


async def publish(context: str, rate: int, seconds: float) -> None:
    """The publisher's process: RATE flows/s for SECONDS, paced every 10 ms; prints the count."""
    import nats
    creds = json.loads(Path(context).read_text())
    nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"])
    flows = sample_flows()
    sent, began = 0, time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(rate * elapsed)
        while sent < due:
            subject, payload = flows[sent % len(flows)]
            await nc.publish(subject, payload)
            sent += 1
        await nc.flush()
        await asyncio.sleep(0.01)
    await nc.flush()
    await nc.close()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - began}), flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def read_stream(session: aiohttp.ClientSession, url: str, into: dict) -> None:
    async with session.get(f"{url}api/flows") as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                batch = json.loads(line[6:])
                into["gaps"].append(time.monotonic() - into["last"])
                into["last"] = time.monotonic()
                into["matched"] += batch["matched"]
                into["shown"] += batch["shown"]


async def step(config, context: str, pid: int, rate: int, seconds: float) -> dict:
    url = config.web.url
    token = config.web_token_path.read_text().strip()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async def received() -> int:
            async with session.get(f"{url}api/map?namespace=shop") as r:
                return (await r.json())["received"]

        before = await received()
        stream = {"gaps": [], "last": time.monotonic(), "matched": 0, "shown": 0}
        reader = asyncio.create_task(read_stream(session, url, stream))
        await asyncio.sleep(1.0)
        stream.update(gaps=[], matched=0, shown=0)
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        pub = await asyncio.create_subprocess_exec(sys.executable, __file__, "--publish", context, str(rate),
                                                   str(seconds), stdout=asyncio.subprocess.PIPE, cwd=REPO)
        latencies = []
        while pub.returncode is None:
            t = time.monotonic()
            await received()
            latencies.append(time.monotonic() - t)
            try:
                await asyncio.wait_for(pub.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
        out = json.loads((await pub.stdout.read()).decode())
        published_at, got = time.monotonic(), await received() - before
        while got < out["sent"] and time.monotonic() - published_at < DRAIN_PATIENCE:
            await asyncio.sleep(0.05)
            got = await received() - before
        drain = time.monotonic() - published_at
        used = cpu_seconds(pid) - cpu0
        cpu = used / (time.monotonic() - wall0)
        await asyncio.sleep(0.6)        # the stream's last batch
        reader.cancel()
    return {"rate": rate, "sent": out["sent"], "achieved": out["sent"] / out["seconds"], "received": got,
            "drain_s": drain, "map_median_ms": 1000 * statistics.median(latencies), "map_max_ms": 1000 * max(latencies),
            "batch_gap_median_s": statistics.median(stream["gaps"]), "batch_gap_max_s": max(stream["gaps"]),
            "matched": stream["matched"], "shown": stream["shown"], "cpu": cpu,
            "cpu_us_per_flow": 1e6 * used / max(got, 1), "loadavg": os.getloadavg()[0]}


async def main(rates: list[int], seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="capillary-bench-web-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump({"node": NODE, "stateDir": f"{tmp}/state",
                                        "nats": {"port": free_port()}, "web": {"port": free_port()}}))
        config = load_config(path)
        with open(Path(tmp) / "nats.log", "wb") as nats_log:
            server = natsserver.start(config, nats_log)
            web = subprocess.Popen([sys.executable, "-m", "services.web", "--config", str(path)], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "web.log", "wb"))
            try:
                natsserver.wait_listening("127.0.0.1", config.web.port, 60, web)
                rows = []
                for rate in rates:
                    log(f"web backend at {rate} flows/s for {seconds:g}s")
                    rows.append(await step(config, str(config.credentials_path(ADMIN)), web.pid, rate, seconds))
            finally:
                web.terminate()
                web.wait(timeout=30)
                server.terminate()
                server.wait(timeout=30)
    print(table(["offered/s", "sent", "achieved/s", "received", "drain s", "map ms (med/max)", "batch gap s (med/max)",
                 "shown of matched", "web cpu", "cpu us/flow", "load"],
                [[str(r["rate"]), str(r["sent"]), f"{r['achieved']:.0f}", str(r["received"]), f"{r['drain_s']:.2f}",
                  f"{r['map_median_ms']:.1f}/{r['map_max_ms']:.1f}",
                  f"{r['batch_gap_median_s']:.2f}/{r['batch_gap_max_s']:.2f}",
                  f"{r['shown']}/{r['matched']}", f"{100 * r['cpu']:.1f}%", f"{r['cpu_us_per_flow']:.1f}",
                  f"{r['loadavg']:.1f}"] for r in rows]))
    print(f"written {write_results('web', {'environment': environment(), 'steps': rows})}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--publish"]:
        asyncio.run(publish(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="10000,20000")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main([int(r) for r in args.rates.split(",")], args.seconds))
