"""What every reader answers: a copy of what its decoder built, made of plain values only (``to_plain``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, cast

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, Refused

_MAX_INT_BITS = 64


def _key(key: object, what: str) -> str | int:
    if type(key) is str:
        return _text(key, what)
    if type(key) is int:
        return _int(key, what)
    raise Refused(f"{what} has a dict key of type {type(key).__name__}; only str and int keys are read")


def _text(value: str, what: str) -> str:
    # A str with lone surrogates cannot be encoded later (a header, a log line): refused where it enters.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(f"{what} holds a string with unpaired surrogates") from None
    return value


def _int(value: int, what: str) -> int:
    # Identities fit in 64 bits; a huge int costs quadratic time wherever it is later printed.
    if value.bit_length() > _MAX_INT_BITS:
        raise Refused(f"{what} holds an integer of {value.bit_length()} bits, over {_MAX_INT_BITS}")
    return value


def _leaf(value: object, what: str) -> object:
    if value is None or type(value) in (bool, float, bytes):
        return value
    if type(value) is str:
        return _text(value, what)
    if type(value) is int:
        return _int(value, what)
    if type(value) is bytearray:
        return bytes(value)
    raise Refused(f"{what} holds a value of type {type(value).__name__}")


_SEQUENCES = (list, tuple, set, frozenset)
_CONTAINERS = frozenset({dict, *_SEQUENCES})
_AS_IS = frozenset({type(None), bool, float, bytes})
# One container being copied: where its entries are read from (dict items or sequence items), its copy, its id.
_Frame = tuple[Iterator[Any], dict[str | int, object] | list[object], int]


def _open(value: object) -> _Frame | None:
    if type(value) is dict:
        return iter(value.items()), {}, id(value)
    if type(value) in _SEQUENCES:
        return iter(cast("Iterable[object]", value)), [], id(value)
    return None


def to_plain(root: object, what: str) -> object:
    """A copy of ``root`` made of dict (str or int keys), list, str, bytes, int (64 bits), float, bool and None.

    Tuples, sets and frozensets become lists, bytearrays bytes; any other type is refused. The walk is iterative,
    refuses a container that contains itself, nesting deeper than MAX_DEPTH and more than MAX_ELEMENTS values
    (a value reached twice through shared references counts twice, so a DAG cannot expand unbounded).
    ``what`` names the format in messages.
    """
    frame = _open(root)
    if frame is None:
        return _leaf(root, what)
    stack = [frame]
    open_ids = {frame[2]}
    elements = 1
    while stack:
        items, target, _ = stack[-1]
        child_frame = None
        is_dict = isinstance(target, dict)
        # Scalars are copied in this inner loop; a container child suspends it and is walked first (depth first,
        # so ``open_ids`` holds exactly the containers on the path from the root).
        for entry in items:
            elements += 1
            if elements > MAX_ELEMENTS:
                raise Refused(f"{what} holds more than {MAX_ELEMENTS} values")
            key, child = entry if is_dict else (None, entry)
            kind = type(child)
            if kind in _AS_IS:
                value = child
            else:
                child_frame = _open(child) if kind in _CONTAINERS else None
                value = _leaf(child, what) if child_frame is None else child_frame[1]
            if isinstance(target, dict):
                target[_key(key, what)] = value
            else:
                target.append(value)
            if child_frame is not None:
                break
        if child_frame is None:
            open_ids.discard(stack.pop()[2])
            continue
        if child_frame[2] in open_ids:
            raise Refused(f"{what} holds a container that contains itself")
        if len(stack) >= MAX_DEPTH:
            raise Refused(f"{what} nests deeper than {MAX_DEPTH}")
        stack.append(child_frame)
        open_ids.add(child_frame[2])
    return frame[1]
