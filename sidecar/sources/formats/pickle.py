"""Python pickles as Django's Redis cache backends store a session: plain containers and scalars, never a global.

Django's ``RedisCache`` (``django.core.cache.backends.redis``) and django-redis pickle the session dict with the
highest protocol (2 to 5 in practice). ``RedisCache`` stores a plain ``int`` as its decimal digits, unpickled;
a session is a dict, so ``loads`` only reads pickles and leaves that case to its caller.

Unpickling is code execution in general: GLOBAL and REDUCE together call any function. So the bytes are first
walked with ``pickletools.genops`` (which decodes opcodes and never builds anything) while a model of the
unpickler's stack follows them, and refused when they hold an opcode that names a global, calls, builds an
instance or reaches a persistent id; when they nest marks or tuples deeper than ``MAX_DEPTH``, pop what the stack
does not hold, push more values than the element bound allows, or write a memo slot far beyond any value (the C
unpickler grows its memo to twice the largest index: a 4-byte index would cost gigabytes); when they hold an
integer over 64 bits, or use a tuple or frozenset as a dict key or set item (keys whose hashes all collide would
make the unpickler's dict inserts quadratic). Only
then does an ``Unpickler`` whose ``find_class`` and ``persistent_load`` refuse run, as a second wall. What it
builds is copied by ``to_plain`` into the plain values every reader answers.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import NoReturn

from sidecar.core.session import shown
from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats.plain import to_plain

# The opcodes that load a class or function, call one, set an instance's state, or resolve an id through a hook
# (and protocol 5's out-of-band buffers, which need a caller-supplied list).
_FORBIDDEN = frozenset(
    {
        "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX",
        "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER",
    }
)  # fmt: skip
_MEMO_WRITES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
# The opcodes whose argument is an int of any size (INT and LONG in decimal, LONG1 and LONG4 in binary).
_BIG_INTS = frozenset({"INT", "LONG", "LONG1", "LONG4"})
# Integers over 64 bits are refused in the scan, before any dict is built: ints of the form k * (2**61 - 1) all
# hash alike, so 4,900 such keys took 13 times as long to load as distinct ones (to_plain refused them only
# after). Ints of at most 64 bits fall about 8 to a hash value.
_MAX_INT_BITS = 64
# A dict of n entries pushes 2n + 1 new values (keys, values, the dict): the output walk bounds values to
# MAX_ELEMENTS, so the scan allows that many keys besides. Memo slots are bounded alike.
_MAX_PUSHES = 2 * MAX_ELEMENTS + 1


def loads(data: bytes) -> object:
    """The plain value pickled in ``data``; Refused when it holds anything but containers and scalars."""
    if len(data) > MAX_INPUT_BYTES:
        raise Refused(f"pickle of {len(data)} bytes, over the {MAX_INPUT_BYTES}-byte bound")
    _scan(data)
    try:
        value = _NoGlobals(io.BytesIO(data)).load()
    except Refused:
        raise
    except Exception as exc:  # the scan passed what the unpickler then rejects: a bad memo index, a type error
        raise Refused(f"pickle does not load: {type(exc).__name__}: {exc}") from None
    return to_plain(value, "pickle")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> NoReturn:
        raise Refused(f"pickle names the global {shown(f'{module}.{name}')}")

    def persistent_load(self, pid: object) -> NoReturn:
        raise Refused("pickle holds a persistent id")


def _scan(data: bytes) -> None:
    machine = _Machine()
    end = -1
    try:
        for opcode, arg, pos in pickletools.genops(data):
            name = opcode.name
            if name in _FORBIDDEN:
                raise Refused(f"pickle opcode {name} at byte {pos}: it loads or calls code")
            if name in _BIG_INTS and isinstance(arg, int) and arg.bit_length() > _MAX_INT_BITS:
                raise Refused(f"pickle integer of {arg.bit_length()} bits at byte {pos}, over {_MAX_INT_BITS}")
            if name == "PROTO" and pos:  # pickle.dumps writes it first or not at all; repeated, it is only padding
                raise Refused(f"pickle opcode PROTO at byte {pos}, not at the start")
            machine.step(name, arg, pos)
            if name == "STOP" and pos is not None:
                end = pos + 1
    except Refused:
        raise
    except Exception as exc:  # genops raises ValueError (and friends) on unknown opcodes and truncated arguments
        raise Refused(f"not a pickle: {exc}") from None
    if end < 0:
        raise Refused("pickle has no STOP opcode")
    if end != len(data):
        raise Refused(f"{len(data) - end} bytes after the pickle's STOP opcode")


def _shape(opcode: pickletools.OpcodeInfo) -> tuple[int, bool, int]:
    """What an opcode pops below its mark (or in all, without one), whether it pops to a mark, what it pushes."""
    before = opcode.stack_before
    if pickletools.markobject in before:
        return before.index(pickletools.markobject), True, len(opcode.stack_after)
    return len(before), False, len(opcode.stack_after)


_SHAPES = {opcode.name: _shape(opcode) for opcode in pickletools.opcodes}


class _Machine:
    """The unpickler's stack, with each value reduced to its height in nested tuples and frozensets.

    Those are the containers Python hashes (as dict keys, set items) by plain C recursion: a chain of 200,000
    TUPLE1 opcodes, 200 KB, would overflow the C stack inside the unpickler, before any walk of ours. Their
    height is fixed when they are built, so the simulation bounds it; lists, dicts and sets count 0 (they are
    unhashable, and their own depth is bounded by the walk after loading).

    A value of height above 0 is refused as a dict key or a set item: a tuple's hash is computed from its
    items' and can be inverted, so keys could be made to collide (as with big ints). No key of that kind is read
    anyway (``to_plain`` keeps str and int keys only), and a set of tuples is no value a session is read for.
    """

    _TUPLES = frozenset({"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"})
    _GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
    _MEMO = frozenset({*_MEMO_WRITES, "MEMOIZE"})
    # Opcodes that give back the container (or value) they took: not a new value.
    _SAME = frozenset({"MEMOIZE", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"})
    # Opcodes that hash what they pop (below the container they fill, if any): which of the popped values.
    _HASHED = {
        "SETITEM": slice(1, 2),
        "SETITEMS": slice(1, None, 2),
        "ADDITEMS": slice(1, None),
        "FROZENSET": slice(None),
    }

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.marks: list[int] = []  # the stack's length at each open MARK
        self.memo: dict[int, int] = {}
        self.values = 0

    def step(self, name: str, arg: object, pos: int | None) -> None:
        stack = self.stack
        if name == "MARK":
            self.marks.append(len(stack))
            if len(self.marks) > MAX_DEPTH:
                raise Refused(f"pickle nests marks deeper than {MAX_DEPTH}")
            return
        below, marked, after = _SHAPES[name]
        popped: list[int] = []
        if marked:
            if not self.marks:
                raise Refused(f"pickle pops to a MARK that is not there at byte {pos}")
            at = self.marks.pop()
            popped = stack[at:]
            del stack[at:]
        if below:
            if len(stack) - below < (self.marks[-1] if self.marks else 0):
                raise Refused(f"pickle pops more than its stack holds at byte {pos}")
            popped = stack[-below:] + popped
            del stack[-below:]
        if name in self._HASHED:
            self._check_hashed(name, popped, pos)
        if name in self._MEMO:
            self._memoize(name, arg, popped, pos)
        if not after:
            return
        if name in self._TUPLES:
            height = 1 + max(popped, default=0)
            if height > MAX_DEPTH:
                raise Refused(f"pickle nests tuples deeper than {MAX_DEPTH} at byte {pos}")
            stack.append(height)
        elif name == "EMPTY_TUPLE":
            stack.append(1)
        elif name in self._GETS:
            stack.append(self.memo.get(arg, 0) if isinstance(arg, int) else 0)
        elif name == "DUP" or name == "MEMOIZE":  # noqa: PLR1714  (two string compares beat a set build here)
            stack.extend(popped * after)
        else:
            stack.extend((0,) * after)
        if name not in self._SAME:
            self.values += 1
            if self.values > _MAX_PUSHES:
                raise Refused(f"pickle pushes more than {_MAX_PUSHES} values")

    def _check_hashed(self, name: str, popped: list[int], pos: int | None) -> None:
        if any(popped[self._HASHED[name]]):
            what = "a dict key" if name.startswith("SETITEM") else "a set item"
            raise Refused(f"pickle uses a tuple or frozenset as {what} at byte {pos}")

    def _memoize(self, name: str, arg: object, popped: list[int], pos: int | None) -> None:
        if not popped and len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise Refused(f"pickle memoizes from an empty stack at byte {pos}")
        slot = len(self.memo) if name == "MEMOIZE" else arg
        if not isinstance(slot, int) or not 0 <= slot <= _MAX_PUSHES:
            raise Refused(f"pickle writes memo slot {slot}, beyond any value it can hold")
        self.memo[slot] = popped[0] if popped else self.stack[-1]
