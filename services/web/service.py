"""The page's backend process: the bus as the `web` user, the flow subscription feeding the
hub, the pod list, and the HTTP server."""
from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time

import structlog
from aiohttp import web

from services.cli import dryrun, walk, walkpath
from services.cli.client import Client
from services.policyd.parse import POLICY_KINDS
from services.runtime import natsserver, tls
from services.runtime.bus import Bus, Credentials, ServiceError
from services.runtime.config import NodeConfig
from services.wire import codec, subjects
from services.wire.limits import LimitError
from services.wire.manifests import ManifestError, load_documents
from services.wire.messages import INVALID, ListRequest, PolicyPreview, PolicyPreviewRequest
from services.web.app import make_app
from services.web.hub import Hub
from services.web.workloads import card_of_pod

log = structlog.get_logger().bind(service="web")

PODS_EVERY = 2.0            # seconds between two pod lists
WALK_TIMEOUT = 2.0          # the probe's answer timeout, as `capillary walk`'s default
PREVIEW_TIMEOUT = 60.0      # policy.preview, as `capillary apply --dry-run`


class WebService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.hub = Hub()
        self.stopping = asyncio.Event()
        self.bus: Bus | None = None
        self.pods: list[dict] = []
        self.pods_error = "not listed yet"      # unknown until a list succeeds
        self._walking = asyncio.Lock()          # one probe at a time
        self._rate = (time.monotonic(), 0, 0.0)

    def token(self) -> str:
        """Read per request: a node whose admin context was remade has a new token."""
        try:
            return self.config.web_token_path.read_text().strip()
        except OSError as exc:
            raise web.HTTPServiceUnavailable(text=f"no web token at {self.config.web_token_path}: "
                                                  f"{exc.strerror}") from None

    async def _on_flow(self, msg) -> None:
        try:
            flow = codec.decode_flow(msg.data)
        except codec.DecodeError:
            self.hub.reject()
            return
        self.hub.add(flow)

    async def _list_pods(self) -> None:
        while not self.stopping.is_set():
            try:
                pods = await self.bus.request(subjects.POD_LIST, ListRequest(), timeout=10.0)
                self.pods = [{"ref": f"{p['spec']['namespace']}/{p['spec']['name']}",
                              "card": card_of_pod(p["spec"]["namespace"], p["spec"].get("labels", {}),
                                                  p["status"]["identity"])} for p in pods]
                self.pods_error = ""
            except ServiceError as exc:
                self.pods_error = exc.message
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=PODS_EVERY)
            except asyncio.TimeoutError:
                pass

    async def namespaces(self) -> list[str]:
        listed = await self.bus.request(subjects.NAMESPACE_LIST, ListRequest(), timeout=10.0)
        return sorted(ns["name"] for ns in listed)

    def counts(self) -> dict:
        """Flows received by the backend, in all and per second (over the last second or more)."""
        then, received, rate = self._rate
        now = time.monotonic()
        if now - then >= 1.0:
            rate = (self.hub.received - received) / (now - then)
            self._rate = (now, self.hub.received, rate)
        return {"received": self.hub.received, "rate": round(rate, 1), "undecodable": self.hub.undecodable}

    def service_map(self, namespace: str) -> dict:
        return {**self.hub.service_map(namespace, self.pods), **self.counts(),
                "pods_error": self.pods_error}

    async def walk(self, source: str, destination: str, port: int, protocol: str) -> tuple[dict, str]:
        """`capillary walk SOURCE DESTINATION --port PORT --protocol PROTOCOL`, its own code."""
        client = Client(self.config)
        client.bus = self.bus
        async with self._walking:
            result = await walk.run(client, source, destination, port, protocol, WALK_TIMEOUT)
        return result.to_json(), walkpath.render(result)

    async def preview(self, text: str) -> tuple[dict, list[str]]:
        """`capillary apply -f - --dry-run` of the one policy in TEXT (YAML or JSON): policyd's
        answer to policy.preview, and the lines the CLI prints for it. Nothing is written."""
        try:
            docs = load_documents(text)
        except (LimitError, ManifestError) as exc:
            raise ServiceError(INVALID, f"policy: {exc}") from None
        if len(docs) != 1:
            raise ServiceError(INVALID, f"policy: {len(docs)} documents; the preview takes exactly one policy")
        if (docs[0].api_version, docs[0].kind) not in POLICY_KINDS:
            raise ServiceError(INVALID, f"{docs[0].label}: a preview takes a policy, not a {docs[0].kind}")
        result = await self.bus.request(subjects.POLICY_PREVIEW, PolicyPreviewRequest(docs[0].body),
                                        timeout=PREVIEW_TIMEOUT)
        return result, dryrun.text(PolicyPreview.from_wire(result))

    def _tls(self) -> ssl.SSLContext | None:
        """Beyond loopback: HTTPS with the node's server certificate (natsserver's CA signs it)."""
        if self.config.web.loopback:
            return None
        files = tls.TlsFiles.under(natsserver.tls_dir(self.config))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.server_cert, files.server_key)
        return context

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.token()        # no token, no page: fail at start, not at the first request
        creds = Credentials.load(self.config.credentials_path(subjects.WEB))
        self.bus = await Bus.connect(creds, name=f"web@{self.config.node}")
        await self.bus.nc.subscribe(subjects.flows(self.config.node, "*"), cb=self._on_flow,
                                    pending_msgs_limit=1_000_000)
        pods = asyncio.create_task(self._list_pods())
        runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.web.host, self.config.web.port, ssl_context=self._tls())
        await site.start()
        log.info("serving", url=self.config.web.url, pid=os.getpid())
        try:
            await self.stopping.wait()
        finally:
            pods.cancel()
            await runner.cleanup()
            await self.bus.drain()
        log.info("stopped")


