"""Server-side parser for the ``Cookie`` request header.

Why not ``http.cookies.SimpleCookie`` or a framework's parser: those are built for ``Set-Cookie`` syntax or
for lenient convenience, and on real browser traffic they drop every cookie after one they dislike (so a
single odd third-party cookie hides the session cookie), they normalise whitespace with ``str.strip()`` (so
``"\\u3000__Host-session"`` would pass for the ``__Host-`` cookie whose prefix guarantees we rely on), they
unquote and unescape values (so a value is no longer what the browser stored), and some take quadratic time
on backslash runs. The session cookie is an authentication input, so this module does the least possible:

* split on every ``;`` (browsers never put ``;`` inside a cookie, quoted or not: RFC 6265 section 4.1.1 and
  the http-state vectors VALUE0004/MOZILLA0012, where ``foo="bar;baz"`` is sent back as ``foo="bar``);
* trim only SP and HTAB, the whitespace the HTTP grammar allows around a cookie-pair, from each piece and
  from the name and value around the first ``=``; every other character, including other Unicode or
  ASCII whitespace, is part of the name or value;
* never unquote, unescape or case-fold: names compare byte-exact and every returned name and value is a
  substring of the input, so what we look up is exactly what the browser sent;
* keep every pair, duplicates included, in header order: the caller decides what duplicates mean.

A piece without ``=`` is a nameless cookie (the RFC 6265bis retrieval algorithm serialises a cookie with an
empty name as its value alone) and is returned as name ``""`` with the piece as value; ``=v`` yields the
same pair.

Everything is ``str.split`` / ``str.strip`` / ``str.partition``: linear in the header length, no regular
expressions, no I/O, because this runs on every request.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["cookie_values", "parse_cookie_header", "parse_cookie_headers", "without_cookie"]

# Only the HTTP "optional whitespace" characters. Never use bare str.strip(): it would also strip U+3000,
# U+00A0, VT, FF, CR, LF ... and so turn a cookie named "\u3000__Host-session" into "__Host-session".
_OWS = " \t"


def parse_cookie_header(header: str) -> list[tuple[str, str]]:
    """Return the ``(name, value)`` pairs of one Cookie header value, in order, duplicates kept.

    Nothing is rejected here: a parser that raises or gives up lets one malformed cookie (which the
    client may not even control) deny the whole request; validating the pairs it cares about is the
    caller's job. CR, LF and other controls therefore come back literally inside names and values.
    """
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    for raw in header.split(";"):
        piece = raw.strip(_OWS)
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        if eq:
            # The piece is already trimmed on the outside, so only the sides touching "=" need it.
            append((name.rstrip(_OWS), value.lstrip(_OWS)))
        else:
            append(("", piece))
    return pairs


def parse_cookie_headers(headers: Iterable[str]) -> list[tuple[str, str]]:
    """Parse several Cookie header lines as one, in order.

    HTTP/2 and HTTP/3 clients may send each cookie as its own header line (RFC 9113 section 8.2.3), and
    a proxy may or may not have joined them, so the result must not depend on how they were split.
    """
    pairs: list[tuple[str, str]] = []
    for header in headers:
        pairs.extend(parse_cookie_header(header))
    return pairs


def cookie_values(pairs: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Return every value sent under exactly ``name``, in header order.

    All of them, not the first or last: a client can hold several cookies of one name (different Path or
    Domain, or one planted by a sibling subdomain), and choosing among them is a security decision the
    caller must make knowingly rather than inherit from a parser.
    """
    return [value for pair_name, value in pairs if pair_name == name]


def without_cookie(headers: Iterable[str], name: str) -> tuple[str | None, bool]:
    """Rebuild one Cookie header value from ``headers`` with every ``name`` cookie removed.

    Used to keep the session token from reaching the upstream. The other pieces are kept byte-exact (as
    trimmed pieces, nameless ones included) and in order, so the upstream sees the cookies it would have
    seen, joined with ``"; "`` as browsers do. Returns ``(None, removed)`` when no piece is left, so the
    caller can drop the header instead of sending an empty one, and ``removed`` tells whether anything
    was taken out (when it is False the header need not be rewritten).
    """
    kept: list[str] = []
    removed = False
    for header in headers:
        for raw in header.split(";"):
            piece = raw.strip(_OWS)
            if not piece:
                continue
            piece_name, eq, _ = piece.partition("=")
            if (piece_name.rstrip(_OWS) if eq else "") == name:
                removed = True
            else:
                kept.append(piece)
    return ("; ".join(kept) if kept else None), removed
