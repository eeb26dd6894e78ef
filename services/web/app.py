"""The page's HTTP side (aiohttp): the token check, the page, the map, the flow stream
(server-sent events), "walk this" and a policy's preview.

Every request needs the node's web token (natsserver.web_token; `capillary web` prints a
link with it): as a cookie, which `/?token=...` and the login form set, or as
`Authorization: Bearer ...`. There is no anonymous access, on loopback or beyond (where
the page is HTTPS: service.py).
"""
from __future__ import annotations

import asyncio
import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from services.runtime.bus import ServiceError
from services.web.hub import Filter

if TYPE_CHECKING:
    from services.web.service import WebService

STATIC = Path(__file__).parent / "static"
COOKIE = "capillary_web"
BATCH_EVERY = 0.25              # seconds between two batches of the flow stream
PUBLIC = ("/login",)
SERVICE = web.AppKey("service", object)
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>capillary: sign in</title></head>
<body style="font-family:sans-serif;margin:4em">
<h1>capillary</h1><p>{message}</p>
<form method="post" action="/login"><label>token <input name="token" type="password" size="70" autofocus></label>
<button type="submit">sign in</button></form>
<p>The token: <code>capillary web --token</code> on the node (it needs the admin context).</p></body></html>"""


def _authorized(request: web.Request, token: str) -> bool:
    given = request.cookies.get(COOKIE, "")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[len("Bearer "):]
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _with_cookie(response: web.StreamResponse, token: str, secure: bool) -> web.StreamResponse:
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/", secure=secure)
    return response


@web.middleware
async def auth(request: web.Request, handler):
    token = request.app[SERVICE].token()
    if request.path in PUBLIC:
        return await handler(request)
    offered = request.query.get("token")
    if offered is not None and request.method == "GET":
        if hmac.compare_digest(offered.encode(), token.encode()):
            query = {k: v for k, v in request.query.items() if k != "token"}
            raise _with_cookie(web.HTTPFound(request.rel_url.with_query(query)), token, request.secure)
        return web.Response(status=401, text=LOGIN_PAGE.format(message="That token is not this node's."),
                            content_type="text/html")
    if _authorized(request, token):
        return await handler(request)
    if request.path.startswith("/api/"):
        return web.json_response({"error": "unauthorized: sign in with the node's web token"}, status=401)
    raise web.HTTPFound("/login")


async def login_form(_request: web.Request) -> web.Response:
    return web.Response(text=LOGIN_PAGE.format(message="Sign in with this node's web token."),
                        content_type="text/html")


async def login(request: web.Request) -> web.StreamResponse:
    token = request.app[SERVICE].token()
    form = await request.post()
    if hmac.compare_digest(str(form.get("token", "")).strip().encode(), token.encode()):
        raise _with_cookie(web.HTTPFound("/"), token, request.secure)
    return web.Response(status=401, text=LOGIN_PAGE.format(message="That token is not this node's."),
                        content_type="text/html")


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def namespaces(request: web.Request) -> web.Response:
    try:
        names = await request.app[SERVICE].namespaces()
    except ServiceError as exc:
        return web.json_response({"error": f"namespaces unknown: {exc.message}"}, status=503)
    return web.json_response({"namespaces": names})


async def service_map(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].service_map(request.query.get("namespace", "default")))


def _filter(query) -> Filter:
    port = query.get("port", "") or "0"
    if not port.isdigit():
        raise ValueError(f"port: {port!r} is not a number")
    return Filter(verdict=query.get("verdict", ""), namespace=query.get("namespace", ""),
                  pod=query.get("pod", ""), port=int(port))


async def flow_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a `flows` event every BATCH_EVERY seconds with the sample of the
    flows the filter matched meanwhile, their count, and the backend's own counts."""
    try:
        flt = _filter(request.query)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    svc = request.app[SERVICE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    sub = svc.hub.subscribe(flt)
    try:
        while not svc.stopping.is_set():
            batch = {**sub.take(), **svc.counts()}
            # default=str: codec.decode_flow does not check field types (bytes would not serialise)
            await response.write(f"event: flows\ndata: {json.dumps(batch, default=str)}\n\n".encode())
            try:
                await asyncio.wait_for(svc.stopping.wait(), timeout=BATCH_EVERY)
            except asyncio.TimeoutError:
                pass
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        svc.hub.unsubscribe(sub)
    return response


async def walk(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        source, destination = str(body["source"]), str(body["destination"])
        port, protocol = int(body.get("port", 0)), str(body.get("protocol", "tcp")).lower()
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"walk: needs source, destination, port and protocol ({exc})"},
                                 status=400)
    try:
        result, text = await request.app[SERVICE].walk(source, destination, port, protocol)
    except ServiceError as exc:
        return web.json_response({"error": exc.message}, status=400)
    return web.json_response({"walk": result, "text": text})


MAX_POLICY_TEXT = 4 << 20      # bytes of a previewed policy (services.wire.limits' file limit)


async def preview(request: web.Request) -> web.Response:
    """POST {"policy": "<YAML or JSON of one policy>"}: what applying it would change, as
    `capillary apply --dry-run` reports it (policy.preview; nothing is written)."""
    try:
        body = await request.json()
        text = body["policy"]
        if not isinstance(text, str) or len(text.encode()) > MAX_POLICY_TEXT:
            raise ValueError(f"policy must be text of at most {MAX_POLICY_TEXT} bytes")
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"preview: needs policy, the policy's text ({exc})"}, status=400)
    try:
        result, lines = await request.app[SERVICE].preview(text)
    except ServiceError as exc:
        return web.json_response({"error": exc.message}, status=400)
    return web.json_response({"preview": result, "text": "\n".join(lines)})


def make_app(service: "WebService") -> web.Application:
    app = web.Application(middlewares=[auth])
    app[SERVICE] = service
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/namespaces", namespaces)
    app.router.add_get("/api/map", service_map)
    app.router.add_get("/api/flows", flow_stream)
    app.router.add_post("/api/walk", walk)
    app.router.add_post("/api/preview", preview)
    return app
