"""Print a capillary node's flows as they happen, from any machine or container that can
reach its NATS server. Needs only nats-py and msgpack (`pip install nats-py msgpack`).

    python subscribe_flows.py CONTEXT_FILE [NATS_URL] [SUBJECT]

CONTEXT_FILE is a NATS context file of the node: <stateDir>/nats/flows.context.json, the
read-only `flows` user (it may subscribe to flows and do nothing else). When NATS listens
beyond loopback it runs with TLS: the context names the node's CA and client certificate
("ca", "cert", "key"; copy <stateDir>/nats/tls/ca.pem, client.pem and client-key.pem
along with it and fix those paths). NATS_URL overrides the url in it (e.g.
tls://192.0.2.2:4222 from another machine);
SUBJECT defaults to every flow of every node: capillary.flows.> (capillary.flows.<node>.<VERDICT>).
Each message is a msgpack map whose "flow" is a Hubble flow; one line per flow is printed.
"""
import asyncio
import json
import ssl
import sys

import msgpack
import nats


KINDS = {1: "drop", 4: "trace", 5: "policy-verdict"}


def endpoint(flow: dict, side: str, ip_field: str) -> str:
    ep = flow[side]
    l4 = next(iter(flow.get("l4", {}).values()), {})
    port = l4.get(f"{side}_port")
    name = f"{ep['namespace']}/{ep['pod_name']}" if "pod_name" in ep else flow["IP"][ip_field]
    return f"{name}:{port}" if port else name


def describe(flow: dict) -> str:
    kind = KINDS.get(flow["event_type"]["type"], "?")
    detail = {"trace": flow.get("trace_observation_point"), "drop": flow.get("drop_reason_desc"),
              "policy-verdict": flow.get("traffic_direction")}.get(kind, "")
    return (f"{endpoint(flow, 'source', 'source')} -> {endpoint(flow, 'destination', 'destination')} "
            f"{kind}:{detail} {flow['verdict']} ({flow['Summary']})")


async def main(context: str, url: str | None, subject: str) -> None:
    with open(context) as f:
        ctx = json.load(f)
    tls = {}
    if ctx.get("ca"):   # the server's certificate must chain to the node's CA
        context = ssl.create_default_context(cafile=ctx["ca"])
        if ctx.get("cert"):
            context.load_cert_chain(ctx["cert"], ctx["key"])
        tls = {"tls": context}
    nc = await nats.connect(url or ctx["url"], user=ctx["user"], password=ctx["password"], **tls)

    async def show(msg) -> None:
        flow = msgpack.unpackb(msg.data, raw=False)["flow"]
        print(f"{msg.subject}: {describe(flow)}", flush=True)

    await nc.subscribe(subject, cb=show)
    print(f"subscribed to {subject} on {nc.connected_url.netloc}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await nc.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None,
                         sys.argv[3] if len(sys.argv) > 3 else "capillary.flows.>"))
    except KeyboardInterrupt:
        pass
