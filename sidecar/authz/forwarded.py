"""Which request an HTTP ext_authz call is about, and which client sent it: the trust rules of ``listen.http``.

Behind Envoy's ``http_service`` the request line *is* the original request. Behind nginx ``auth_request``,
ingress-nginx and Traefik ``forwardAuth`` the sidecar is asked on ``/forward-auth`` and the original request is
named by headers the proxy sets. Those proxies also pass on every header the client sent that they do not set
themselves, so a header name the sidecar reads may have been written by the client: nginx forwards a client's
``X-Forwarded-Uri``, Traefik a client's ``X-Original-URI``. Two rules keep the client out of the decision:

- **No choice for the client.** A proxy sets (and so overwrites) at least one header of each kind, so a
  client-sent one either repeats what the proxy says or contradicts it. When the URI headers name different
  paths, the route policy sees all of them and the strictest rule applies (as it does for the readings of one
  path in ``sidecar.core.policy``): the client can only make its request harder to allow. When the method, host
  or scheme headers disagree, the request is denied with ``403`` (``forwarded_conflict``). That holds for the
  README's recipes and for a recipe that forgets to clear a header.
- **Narrowing.** ``forward_auth.proxy`` names the proxy in front; only the headers that proxy sets are read, the
  rest are ignored. ``envoy`` turns ``/forward-auth`` into an ordinary path (Envoy never needs it).

The client address (for the abuse counter only, never for a decision) is the TCP peer unless
``forward_auth.trusted_hops`` says how many proxies in front append to ``X-Forwarded-For``; then it is the entry
the outermost trusted one appended, counted from the right, as Envoy's ``xff_num_trusted_hops`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.request import RequestView

FORWARD_AUTH_PATH = "/forward-auth"
_FORWARD_AUTH_QUERY = FORWARD_AUTH_PATH + "?"

PROXIES = ("any", "envoy", "nginx", "ingress-nginx", "traefik")
MAX_TRUSTED_HOPS = 10
_MAX_SOURCE = 64
MAX_URIS = 8  # distinct original URIs one forward-auth request may name; more is a conflict, not a longer loop


@dataclass(frozen=True, slots=True)
class HeaderSet:
    """The original-request headers one proxy sets (lower case)."""

    uri: tuple[str, ...] = ()  # path and query
    url: tuple[str, ...] = ()  # absolute URL (scheme, host, path and query)
    method: tuple[str, ...] = ()
    host: tuple[str, ...] = ()
    scheme: tuple[str, ...] = ()


_NGINX = HeaderSet(
    uri=("x-original-uri",), method=("x-original-method",), host=("x-forwarded-host",), scheme=("x-forwarded-proto",)
)
_INGRESS_NGINX = HeaderSet(uri=("x-original-uri",), url=("x-original-url",), method=("x-original-method",))
_TRAEFIK = HeaderSet(
    uri=("x-forwarded-uri",), method=("x-forwarded-method",), host=("x-forwarded-host",), scheme=("x-forwarded-proto",)
)
_ANY = HeaderSet(
    uri=("x-forwarded-uri", "x-original-uri"),
    url=("x-original-url",),
    method=("x-forwarded-method", "x-original-method"),
    host=("x-forwarded-host",),
    scheme=("x-forwarded-proto",),
)
HEADER_SETS: dict[str, HeaderSet | None] = {
    "any": _ANY,
    "envoy": None,
    "nginx": _NGINX,
    "ingress-nginx": _INGRESS_NGINX,
    "traefik": _TRAEFIK,
}
# Every header name any proxy's set holds: what the HTTP adapter must keep all values of.
FORWARDED_NAMES = frozenset(
    name
    for headers in HEADER_SETS.values()
    if headers is not None
    for name in (*headers.uri, *headers.url, *headers.method, *headers.host, *headers.scheme)
)


@dataclass(frozen=True, slots=True)
class ForwardedTrust:
    """``forward_auth.*``: which proxy is in front (``any`` reads every known header set, with agreement) and how
    many proxies append to ``X-Forwarded-For`` (0: the TCP peer is the client address)."""

    proxy: str = "any"
    trusted_hops: int = 0

    def __post_init__(self) -> None:
        if self.proxy not in HEADER_SETS:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}")
        if not 0 <= self.trusted_hops <= MAX_TRUSTED_HOPS:
            raise ValueError(f"trusted_hops must be between 0 and {MAX_TRUSTED_HOPS}")


DEFAULT_TRUST = ForwardedTrust()


def is_forward_auth(target: str, trust: ForwardedTrust = DEFAULT_TRUST) -> bool:
    if HEADER_SETS[trust.proxy] is None:
        return False
    return target == FORWARD_AUTH_PATH or target.startswith(_FORWARD_AUTH_QUERY)


def _first_item(value: str) -> str:
    """The first element of a comma-separated list (proxies append to X-Forwarded-*)."""
    return value.split(",", 1)[0].strip(" \t")


def split_url(url: str) -> tuple[str, str, str] | None:
    """(scheme, host, path and query) of an absolute URL (ingress-nginx's X-Original-URL); None for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return None
    slash = rest.find("/")
    if slash < 0:
        return scheme, rest, "/"
    return scheme, rest[:slash], rest[slash:]


class _Agreement:
    """The values the present headers of one kind name, in arrival order: more than ``limit`` is a conflict."""

    __slots__ = ("conflicts", "kind", "limit", "values")

    def __init__(self, kind: str, limit: int = 1) -> None:
        self.kind = kind
        self.limit = limit
        self.values: list[str] = []
        self.conflicts = False

    def offer(self, value: str, *, fold: bool = False) -> None:
        if fold:
            value = value.lower()
        if value not in self.values:
            if len(self.values) == self.limit:
                self.conflicts = True
                return
            self.values.append(value)

    @property
    def value(self) -> str | None:
        return self.values[0] if self.values else None


@dataclass(frozen=True, slots=True)
class Original:
    """The original request as the forwarded headers name it (None: not named), or the kinds that disagree."""

    uris: tuple[str, ...]  # every distinct URI named, in arrival order: the policy applies the strictest
    method: str | None
    host: str | None
    scheme: str | None
    conflicts: tuple[str, ...]


def original_request(headers: tuple[tuple[str, str], ...], wanted: HeaderSet) -> Original:
    """Read every value of every header in ``wanted``: the URIs they name, and the one method, host and scheme
    (the kinds whose headers disagree are ``conflicts``)."""
    uri, method = _Agreement("uri", MAX_URIS), _Agreement("method")
    host, scheme = _Agreement("host"), _Agreement("scheme")
    for name, value in headers:
        if name in wanted.uri:
            uri.offer(value.strip(" \t"))
        elif name in wanted.url:
            url = value.strip(" \t")
            parts = split_url(url)
            if parts is None:
                if url.startswith("/"):
                    uri.offer(url)  # a bare path: what X-Original-URI would say
                else:
                    uri.conflicts = True  # neither a URL nor a path: it names nothing the policy could use
                continue
            scheme.offer(parts[0], fold=True)
            host.offer(parts[1], fold=True)
            uri.offer(parts[2])
        elif name in wanted.method:
            method.offer(value.strip(" \t"))
        elif name in wanted.host:
            host.offer(_first_item(value), fold=True)
        elif name in wanted.scheme:
            scheme.offer(_first_item(value), fold=True)
    kinds = (uri, method, host, scheme)
    return Original(
        uris=tuple(uri.values),
        method=method.value,
        host=host.value,
        scheme=scheme.value,
        conflicts=tuple(kind.kind for kind in kinds if kind.conflicts),
    )


def client_address(headers: tuple[tuple[str, str], ...], peer: str, trusted_hops: int) -> str:
    """The peer, or with ``trusted_hops`` proxies in front the X-Forwarded-For entry the outermost of them wrote
    (the ``trusted_hops``-th from the right over all X-Forwarded-For lines); the peer when there are fewer."""
    if trusted_hops == 0:
        return peer[:_MAX_SOURCE]
    entries: list[str] = []
    for name, value in headers:
        if name == "x-forwarded-for":
            entries.extend(value.split(","))
            if len(entries) > 1024:  # bounded whatever the client sends; only the right end matters
                del entries[: len(entries) - 1024]
    if len(entries) < trusted_hops:
        return peer[:_MAX_SOURCE]
    return entries[-trusted_hops].strip(" \t")[:_MAX_SOURCE]


def to_request_view(
    method: str,
    target: str,
    headers: tuple[tuple[str, str], ...],
    peer: str = "",
    trust: ForwardedTrust = DEFAULT_TRUST,
) -> RequestView:
    """The original request: the request line itself, or on ``/forward-auth`` the one the forwarded headers name.

    ``headers`` are (lower-case name, value) in arrival order; they reach the core unchanged either way. When the
    forwarded headers name several URIs, the first is ``path`` and the others ``alternates`` (the policy applies
    the strictest rule of all); when their method, host or scheme disagree, the view carries ``conflict`` and the
    core denies it.
    """
    host = ""
    proto: str | None = None
    for name, value in headers:
        if name == "host":
            if not host:
                host = value
        elif name == "x-forwarded-proto" and proto is None:
            proto = value
    scheme = proto.split(",", 1)[0].strip(" \t") if proto else "http"  # _first_item, inline: once per request
    # Most requests are no forward-auth ones (all of Envoy's): told apart by a prefix before anything else.
    wanted = HEADER_SETS[trust.proxy] if target.startswith(FORWARD_AUTH_PATH) else None
    source = client_address(headers, peer, trust.trusted_hops) if trust.trusted_hops else peer[:_MAX_SOURCE]
    if wanted is None or not is_forward_auth(target, trust):
        return RequestView(method, scheme or "http", host, target, headers, source)
    conflict = ""
    alternates: tuple[str, ...] = ()
    original = original_request(headers, wanted)
    if original.conflicts:
        conflict = ",".join(original.conflicts)
    else:
        if original.uris:
            target, alternates = original.uris[0], original.uris[1:]
        method = original.method or method
        host = original.host or host
        scheme = original.scheme or "http"
    return RequestView(
        method=method,
        scheme=scheme or "http",
        host=host,
        path=target,
        headers=headers,
        source=source,
        conflict=conflict,
        alternates=alternates,
    )
