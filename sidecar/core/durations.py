"""Durations as operators write them: ``150ms``, ``90s``, ``30m``, ``12h``, ``7d`` or plain seconds.

Pure and stdlib-only. Arithmetic is exact (:class:`fractions.Fraction`), so ``150ms`` is the float nearest
0.15 and :func:`format_duration` round-trips through :func:`parse_duration`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

__all__ = ["ACCEPTED_FORMS", "format_duration", "parse_duration"]

ACCEPTED_FORMS = "use 150ms, 90s, 30m, 12h, 7d or plain seconds"

# Largest first: format_duration picks the largest unit that divides the value exactly.
_UNITS: tuple[tuple[str, Fraction], ...] = (
    ("d", Fraction(86400)),
    ("h", Fraction(3600)),
    ("m", Fraction(60)),
    ("s", Fraction(1)),
    ("ms", Fraction(1, 1000)),
)
_FACTORS = dict(_UNITS)
_PATTERN = re.compile(r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h|d)?")


def _invalid(value: object, why: str = "") -> ValueError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    detail = f": {why}" if why else f" ({ACCEPTED_FORMS})"
    return ValueError(f"invalid duration {shown}{detail}")


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` saying what is accepted when it is not a duration.

    Accepts ``<number><unit>`` with unit ``ms``, ``s``, ``m``, ``h`` or ``d`` (number: digits with an
    optional decimal fraction), a numeric string of plain seconds, or an int/float of seconds. The result
    must be finite and greater than 0.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not "1 second"
        raise _invalid(value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _invalid(value, "must be a finite number of seconds")
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.fullmatch(value)
        if match is None:
            raise _invalid(value)
        amount = Fraction(match["number"]) * _FACTORS[match["unit"] or "s"]
        try:
            seconds = float(-amount if match["sign"] == "-" else amount)
        except OverflowError as exc:
            raise _invalid(value, "too large") from exc
    else:
        raise _invalid(value)
    if seconds <= 0:
        raise _invalid(value, "must be greater than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """Return the shortest exact form of ``seconds``: the largest unit dividing it, e.g. ``1800`` → ``30m``.

    A value that is not a whole number of milliseconds is rendered in fractional milliseconds (``0.5ms``).
    ``parse_duration(format_duration(x)) == x`` for every positive finite ``x``.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration: must be a finite number >= 0")
    if seconds == 0:
        return "0s"
    shortest = repr(float(seconds))  # the shortest decimal that round-trips to this float
    exact = Fraction(shortest)
    for unit, factor in _UNITS:
        count = exact / factor
        if count.denominator == 1:
            return f"{count.numerator}{unit}"
    return f"{format(Decimal(shortest).scaleb(3).normalize(), 'f')}ms"
