"""Bounds on every input capillary reads: bus payloads, manifests, policies, config files.

Whatever crosses a trust boundary is checked against these before anything walks it, so a
hostile or broken input costs a bounded amount of work and ends in an error that names the
limit, never in a RecursionError, a hang or an exception the caller did not expect:

- nesting depth (MAX_DEPTH): recursive code downstream (validation, copies, dumps) stays far
  from Python's recursion limit;
- size: MAX_NODES containers and scalars in one document, MAX_TEXT_BYTES of text in a file;
- YAML: aliases (``*name``) are refused outright, so an anchor bomb cannot expand; integers
  longer than MAX_INT_DIGITS are refused before Python converts them;
- numbers in bus messages: the range of the datapath field they fill (U16, ENDPOINT_ID, ...,
  used as annotations in services.wire.messages), so nothing is truncated on its way to a map.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO

import yaml

MAX_DEPTH = 64                     # nested maps and lists in one document
# A NetworkPolicy allowing 100,000 ipBlock peers (a documented limit, see README "Limits")
# is about 400,000 values and 4 MB of YAML; these leave room above it.
MAX_NODES = 1_000_000              # maps, lists and scalars in one document
MAX_TEXT_BYTES = 16 * 1024 * 1024  # one manifest or config file
MAX_INT_DIGITS = 40                # a YAML/JSON integer literal (u64 needs 20)


class LimitError(ValueError):
    """An input over one of the bounds above; the message names the bound."""


@dataclass(frozen=True)
class Range:
    """The values a number field may hold: those of the datapath field or counter it fills."""

    low: int | float
    high: int | float


# Number fields, by what they fill (bpf/lib/*.h and services/datapath/maps/*).
U16 = Annotated[int, Range(0, 0xFFFF)]
U32 = Annotated[int, Range(0, 0xFFFFFFFF)]
COUNT = Annotated[int, Range(0, 0xFFFFFFFFFFFFFFFF)]      # a u64 counter
INDEX = Annotated[int, Range(0, 0x7FFFFFFF)]              # a position or a request size
ENDPOINT_ID = Annotated[int, Range(1, 0xFFFF)]            # struct endpoint_info.endpoint_id
IDENTITY = U32                                            # struct policy_key.identity
IFINDEX = Annotated[int, Range(1, 0x7FFFFFFF)]
PORT = U16
PID = Annotated[int, Range(0, 0x7FFFFFFF)]
SECONDS = Annotated[float, Range(0.0, 1e11)]              # a unix time or a duration


def check_tree(obj: Any, what: str = "document", max_nodes: int | None = MAX_NODES) -> None:
    """Raise LimitError when OBJ nests deeper than MAX_DEPTH or holds more than MAX_NODES
    nodes (a value reachable twice counts twice; None: no count, as for msgpack, whose size
    the bus's max_payload already bounds). Iterative, one level of the tree at a time (a
    100,000-peer policy is 400,000 values: only its maps and lists are visited one by one,
    scalars are counted by their container's length)."""
    level, depth, nodes = [obj], 1, 1
    while level:
        below = []
        for value in level:
            if isinstance(value, dict):
                nodes += 2 * len(value)
                below += [c for c in value if isinstance(c, _CONTAINERS)]
                below += [c for c in value.values() if isinstance(c, _CONTAINERS)]
            elif isinstance(value, _CONTAINERS):
                nodes += len(value)
                below += [c for c in value if isinstance(c, _CONTAINERS)]
            else:
                continue
            if depth >= MAX_DEPTH and len(value):
                raise LimitError(f"{what}: nested deeper than {MAX_DEPTH} levels")
            if max_nodes is not None and nodes > max_nodes:
                raise LimitError(f"{what}: more than {max_nodes} values")
        level, depth = below, depth + 1


_CONTAINERS = (dict, list, tuple)


def check_text(text: str | bytes, what: str) -> None:
    if len(text) > MAX_TEXT_BYTES:
        raise LimitError(f"{what}: {len(text)} bytes is over the limit of {MAX_TEXT_BYTES}")


def read_text(stream: BinaryIO, what: str) -> str:
    """At most MAX_TEXT_BYTES of UTF-8 from STREAM (a file, or stdin's buffer): a larger
    input, or an endless one such as /dev/zero, is a LimitError, not a hang."""
    data = stream.read(MAX_TEXT_BYTES + 1)
    check_text(data, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LimitError(f"{what}: not UTF-8 text (byte {exc.start})") from None


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise LimitError(f"an integer of {len(text)} digits is over the limit of {MAX_INT_DIGITS}")
    return int(text)


def load_json(text: str, what: str) -> Any:
    """TEXT as JSON within the bounds; ValueError (json's own) when it is not JSON."""
    check_text(text, what)
    try:
        obj = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise LimitError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    check_tree(obj, what)
    return obj


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, deep nesting and overlong integers as it composes."""

    def __init__(self, stream: str, what: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._what = what

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not "
                                              "supported: write the value out", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise LimitError(f"{self._what}: nested deeper than {MAX_DEPTH} levels "
                                 f"(line {self.peek_event().start_mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INT_DIGITS:
            raise LimitError(f"{self._what}: line {node.start_mark.line + 1}: an integer of {len(node.value)} "
                             f"characters is over the limit of {MAX_INT_DIGITS}")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def load_yaml_all(text: str, what: str) -> list[Any]:
    """Every document in the YAML stream TEXT, within the bounds. Raises LimitError, or
    yaml.YAMLError for text that is not YAML."""
    check_text(text, what)
    loader = _BoundedLoader(text, what)
    try:
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
    except RecursionError:
        # The scanner and parser are iterative; this is a last line of defence only.
        raise LimitError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    for doc in docs:
        check_tree(doc, what)
    return docs
