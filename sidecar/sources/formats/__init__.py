"""Readers for what other frameworks store in Redis: pure functions from bytes to plain Python values.

Each reader parses only a whitelisted subset of its format (JDK serialization, pickle, PHP serialize, msgpack,
JSON) and never executes anything: no class is loaded, no constructor or hook runs. Every reader is bounded by
its input (size, nesting depth, element count) and answers a value or raises ``Refused`` naming what it refused.
What comes out is built from ``dict``, ``list``, ``str``, ``bytes``, ``int``, ``float``, ``bool`` and ``None``.
"""

from __future__ import annotations

from sidecar.errors import CorruptRecord

# The bounds every reader applies, whatever its format: nothing a framework keeps for a logged-in user comes
# near them, and together they bound a reader's time and memory by a small multiple of its input.
MAX_INPUT_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_ELEMENTS = 10_000


class Refused(CorruptRecord):
    """Stored data outside the subset a reader accepts: a class, global or construct it does not read, a value
    over the bounds, or bytes that do not parse. The message names what was refused."""
