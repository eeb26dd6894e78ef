"""The one msgpack codec every service and the CLI use on the bus."""
from __future__ import annotations

from typing import Any

import msgpack


class DecodeError(ValueError):
    """A payload that is not a msgpack map."""


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def decode(data: bytes) -> dict:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise DecodeError(f"payload is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError(f"payload must be a msgpack map, got {type(obj).__name__}")
    return obj
