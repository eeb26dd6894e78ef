"""Fuzz targets for the bus: the msgpack codec and every message class.

Properties: decode() returns a map or raises DecodeError, nothing else; from_wire() returns a
message or raises SchemaError naming a field, nothing else; a message that decodes encodes
back to an equal payload, and every number in it lies in the range of its field."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.wire import codec, messages
from services.wire.messages import Message, SchemaError
from tests.fuzz.conftest import budget, count
from tests.fuzz.strategies import MSGPACK_SCALARS, deep, mutate, trees

MESSAGES = sorted((c for c in vars(messages).values()
                   if isinstance(c, type) and issubclass(c, Message) and c is not Message),
                  key=lambda c: c.__name__)


@settings(max_examples=budget(1000))
@given(st.binary(max_size=64))
@example(b"\x81\x91\x01\x01")                                   # found: TypeError (unhashable key)
@example(b"\x81\x81\x01\x01\x01")
@example(b"\x81\xa1a\xc7\x01\x05a")                             # found: ExtType reached handlers
@example(b"\x81\xa1a" + b"\x91" * 2000 + b"\x01")
def test_decode_of_any_bytes_is_a_map_or_a_decode_error(data):
    count("codec.decode(bytes)")
    try:
        out = codec.decode(data)
    except codec.DecodeError:
        return
    assert isinstance(out, dict)


@settings(max_examples=budget(200))
@given(trees())
@example({"a": deep(70)})                                       # found: deep payloads passed
def test_decode_of_any_msgpack_is_a_map_or_a_decode_error(tree):
    count("codec.decode(msgpack)")
    try:
        data = msgpack.packb(tree, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return                                                  # not representable in msgpack
    try:
        out = codec.decode(data)
    except codec.DecodeError:
        return
    assert isinstance(out, dict)


# ---- every message class -------------------------------------------------------------------

def _for_type(tp: Any) -> st.SearchStrategy:
    """Valid values of a message field type (from its type hints)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, bounds = typing.get_args(tp)[:2]
        if base is int:
            return st.integers(bounds.low, bounds.high)
        return st.floats(bounds.low, bounds.high, allow_nan=False)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.one_of(st.none(), _for_type(inner[0]))
    if origin is list:
        return st.lists(_for_type(typing.get_args(tp)[0]), max_size=3)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return st.dictionaries(_for_type(kt), _for_type(vt), max_size=3)
    if isinstance(tp, type) and issubclass(tp, Message):
        return valid_payloads(tp)
    return {str: st.text(max_size=10), int: st.integers(-(2 ** 63), 2 ** 63 - 1),
            float: st.floats(allow_nan=False, allow_infinity=False), bool: st.booleans(),
            bytes: st.binary(max_size=10),
            Any: trees(MSGPACK_SCALARS, max_leaves=8, keys=st.text(max_size=8))}[tp]


def valid_payloads(cls: type[Message]) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls, include_extras=True)
    required, optional = {}, {}
    for f in dataclasses.fields(cls):
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        (required if no_default else optional)[f.name] = _for_type(hints[f.name])
    head = {"v": st.just(1), "kind": st.just(cls.KIND)} if cls.KIND else {}
    return st.fixed_dictionaries({**head, **required}, optional=optional)


def _in_range(cls: type[Message], msg: Message) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(msg, f.name)
        if typing.get_origin(tp) is Annotated:
            bounds = typing.get_args(tp)[1]
            assert bounds.low <= value <= bounds.high, f"{cls.__name__}.{f.name} = {value}"
        if isinstance(value, float):
            assert math.isfinite(value)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=budget(15))
@given(data=st.data())
def test_every_message_round_trips_and_refuses_mutations_with_a_schema_error(cls, data):
    payload = data.draw(valid_payloads(cls))
    count(f"messages.{cls.__name__}")
    msg = cls.from_wire(payload)
    _in_range(cls, msg)
    assert cls.from_wire(codec.decode(codec.encode(msg.to_wire()))) == msg
    broken = mutate(payload, data)
    try:
        again = cls.from_wire(broken)
    except SchemaError as exc:
        assert str(exc).split(":")[0], exc
        return
    _in_range(cls, again)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=budget(10))
@given(tree=trees(max_leaves=12))
def test_every_message_refuses_random_trees_with_a_schema_error(cls, tree):
    count(f"messages.{cls.__name__}")
    try:
        cls.from_wire(tree)
    except SchemaError:
        pass
