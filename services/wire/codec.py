"""The one msgpack codec every service and the CLI use on the bus.

decode() is the bus's front door: whatever arrives, it returns a bounded map (limits.py)
or raises DecodeError, never anything else.
"""
from __future__ import annotations

from typing import Any

import msgpack

from services.wire.limits import LimitError, check_tree


class DecodeError(ValueError):
    """A payload that is not a msgpack map."""


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _no_ext(code: int, _data: bytes) -> Any:
    raise DecodeError(f"payload is not valid msgpack: extension type {code} is not used on this bus")


def _same(obj: dict) -> dict:
    return obj


def decode(data: bytes, share_gil: bool = False) -> dict:
    """DATA's msgpack map, checked (raises DecodeError). SHARE_GIL: call back into Python
    at each map, where the interpreter may let another thread run (services.runtime.gil);
    for large bodies decoded on a worker thread."""
    hook = {"object_hook": _same} if share_gil else {}
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext,
                              timestamp=1, **hook)   # a msgpack timestamp reads as a float
    except DecodeError:
        raise
    except msgpack.StackError:
        raise DecodeError("payload is not valid msgpack: nested too deep") from None
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        # TypeError: a map key that Python cannot hash (a list or a map), as b"\x81\x91\x01\x01".
        raise DecodeError(f"payload is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError(f"payload must be a msgpack map, got {type(obj).__name__}")
    try:
        check_tree(obj, "payload", max_nodes=None)
    except LimitError as exc:
        raise DecodeError(str(exc)) from None
    return obj


def decode_flow(data: bytes) -> dict:
    """The flow of a payload on flows(node, verdict) (FlowEvent(flow).to_wire()), for
    subscribers that keep up with the export rate. The envelope is checked (a map of schema
    version <= SCHEMA_VERSION, kind "flow", and the flow a map), the tree is not walked as
    decode() walks it: only flowd and admin may publish there (subjects.GRANTS), and
    msgpack's own nesting limit bounds the depth. Raises DecodeError."""
    from services.wire.messages import SCHEMA_VERSION, FlowEvent
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext, timestamp=1)
    except DecodeError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise DecodeError(f"payload is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict) or obj.get("kind") != FlowEvent.KIND:
        raise DecodeError("payload is not a flow event")
    version, flow = obj.get("v"), obj.get("flow")
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION or not isinstance(flow, dict):
        raise DecodeError(f"flow event of schema version {version!r} (this side reads 1-{SCHEMA_VERSION}) "
                          "or without a flow map")
    return flow


def peek(data: bytes, path: tuple[str, ...], fields: tuple[str, ...]) -> dict:
    """FIELDS of the map found at PATH (keys from DATA's top map down), read without decoding
    the rest, which msgpack skips in C: a few milliseconds for a body that takes a tenth of
    a second to decode. {} when DATA holds no such map. Nothing read here is checked as
    decode() checks it: for ordering requests by what they change, never to act on."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_no_ext, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    out: dict = {}
    try:
        for step in (*path, None):
            for _ in range(unpacker.read_map_header()):
                key = unpacker.unpack()
                if step is not None and key == step:
                    break
                if step is None and key in fields:
                    out[key] = unpacker.unpack()
                    if len(out) == len(fields):
                        return out
                else:
                    unpacker.skip()
            else:
                if step is not None:        # PATH leads nowhere
                    return {}
    except (msgpack.UnpackException, ValueError, TypeError, DecodeError):
        return {}
    return out
