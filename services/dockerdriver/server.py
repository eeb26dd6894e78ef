"""The plugin's HTTP server: JSON POSTs on a unix socket, as dockerd's plugin client sends them.

Just enough HTTP/1.1 for that client: a request line, headers, a Content-Length body, and
keep-alive. A handler returns a dict (200) or raises DriverError (500, {"Err": message},
which libnetwork shows to the user).
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

log = structlog.get_logger()
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_BODY = 1 << 20
Handler = Callable[[dict], Awaitable[dict]]


class DriverError(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict] | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    length = 0
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if not 0 <= length <= MAX_BODY:
        raise DriverError(f"request body of {length} bytes is over {MAX_BODY}")
    body = await reader.readexactly(length) if length else b""
    try:
        payload = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise DriverError(f"request body is not JSON: {exc}") from None
    return (parts[1] if len(parts) > 1 else "/"), payload if isinstance(payload, dict) else {}


def _response(status: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    reason = "OK" if status == 200 else "Internal Server Error"
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def serve(path: Path, routes: dict[str, Handler]) -> asyncio.AbstractServer:
    """Serve ROUTES (URL path -> handler) on the unix socket at PATH (replacing a stale one)."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except (DriverError, ValueError) as exc:
                    writer.write(_response(500, {"Err": str(exc)}))
                    break
                if request is None:
                    break
                url, payload = request
                handler = routes.get(url)
                try:
                    if handler is None:
                        raise DriverError(f"{url} is not implemented by capillary")
                    status, body = 200, await handler(payload)
                except DriverError as exc:
                    status, body = 500, {"Err": str(exc)}
                    log.info("docker request refused", url=url, error=str(exc))
                except Exception as exc:
                    log.exception("docker request failed", url=url)
                    status, body = 500, {"Err": f"{type(exc).__name__}: {exc}"}
                writer.write(_response(status, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    server = await asyncio.start_unix_server(on_client, path=str(path))
    os.chmod(path, 0o600)
    return server
