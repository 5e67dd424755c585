"""The Istio and Linkerd manifests of mesh-config/ (issue #6), checked offline.

- Custom resources (Istio, Linkerd) validate against the CRD schemas in ``../shared/schemas`` (``<repo>/../shared``,
  not part of this repository; the tests that need them skip when it is absent). The apiVersion must be a
  version the CRD serves, not deprecated, and the newest such version.
- Built-in kinds validate with ``kubernetes-validate`` (strict: unknown fields are errors).
- Every Envoy bootstrap shipped, including the one inside the Linkerd ConfigMap, passes ``envoy --mode validate``.
- Semantic checks: the Istio provider fails closed with a short timeout and a 503, the CUSTOM policy names a
  provider that exists and leaves only health paths out, and the Lua filter that strips identity headers is
  run in a real Envoy.
- The Linkerd per-pod Envoy runs in a real Envoy in front of the e2e stack's real sidecar and echo app: routes that
  skip ext_authz pass no client identity header (x-user-*, x-session-*, "_" spellings), checked routes carry
  only the sidecar's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import processes, servers

REPO = Path(__file__).resolve().parents[2]
MESH = REPO / "mesh-config"
SCHEMAS = REPO.parent / "shared" / "schemas"
CRD_FILES = ("istio-crds.yaml", "linkerd-crds.yaml")
# The Kubernetes version built-in kinds are validated for.
KUBERNETES_VERSION = "1.33"
IDENTITY_HEADERS = ("x-user-id", "x-user-email", "x-user-roles", "x-session-id")
HEALTH_PATHS = {"/healthz", "/readyz"}


# --------------------------------------------------------------------------------------------------- loading


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for folder in ("istio", "linkerd"):
        for path in sorted((MESH / folder).glob("*.yaml")):
            for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
                if doc is None:
                    continue
                assert isinstance(doc, dict), f"{path}: document {index} is not a mapping"
                name = doc.get("metadata", {}).get("name", "?")
                found.append((f"{folder}/{path.name}#{index}:{doc.get('kind')}/{name}", doc))
    return found


DOCUMENTS = _documents()


def _by_kind(kind: str, api_group: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind and doc["apiVersion"].split("/")[0] == api_group]


def _one(kind: str, api_group: str) -> dict[str, Any]:
    docs = _by_kind(kind, api_group)
    assert len(docs) == 1, f"expected one {kind} ({api_group}), found {len(docs)}"
    return docs[0]


def _group_version(doc: dict[str, Any]) -> tuple[str, str]:
    api_version: str = doc["apiVersion"]
    group, _, version = api_version.rpartition("/")
    return group, version


@pytest.fixture(scope="module")
def crds() -> list[dict[str, Any]]:
    if not SCHEMAS.is_dir():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (../shared/schemas beside the repository): not shipped here")
    loaded = [
        doc
        for name in CRD_FILES
        for doc in yaml.safe_load_all((SCHEMAS / name).read_text())
        if doc  # empty documents
    ]
    assert all(doc["kind"] == "CustomResourceDefinition" for doc in loaded)
    return loaded


def _crd_groups() -> set[str]:
    # Known without the schema files, so a missing ../shared never turns a custom resource into a "built-in".
    return {"networking.istio.io", "security.istio.io", "extensions.istio.io", "telemetry.istio.io"} | {
        "policy.linkerd.io",
        "linkerd.io",
    }


def _is_custom(doc: dict[str, Any]) -> bool:
    group, _ = _group_version(doc)
    return group in _crd_groups() or group.endswith((".istio.io", ".linkerd.io"))


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def _version_rank(name: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA > beta > alpha, then by number (v1 > v1beta3 > v1beta1 > v1alpha2)."""
    match = _VERSION.match(name)
    assert match, f"not a Kubernetes API version: {name}"
    major, stage, minor = match.groups()
    return ({None: 2, "beta": 1, "alpha": 0}[stage], int(major), int(minor or 0))


# --------------------------------------------------------------------------------------------------- schemas


def test_there_are_manifests() -> None:
    files = {ident.split("#")[0] for ident, _ in DOCUMENTS}
    assert {
        "istio/mesh-config.yaml",
        "istio/authorizationpolicy.yaml",
        "istio/serviceentry.yaml",
        "istio/strip-identity-headers.yaml",
        "istio/request-authentication.yaml",
        "linkerd/envoy-sidecar.yaml",
        "linkerd/server.yaml",
        "linkerd/authorizationpolicy.yaml",
        "linkerd/meshtlsauthentication.yaml",
        "linkerd/ingress-nginx.yaml",
    } <= files


@pytest.mark.parametrize(("ident", "doc"), [pytest.param(i, d, id=i) for i, d in DOCUMENTS if _is_custom(d)])
def test_custom_resource_matches_its_crd(crds: list[dict[str, Any]], ident: str, doc: dict[str, Any]) -> None:
    from jsonschema import Draft7Validator  # noqa: PLC0415  (a dev extra)

    group, version = _group_version(doc)
    matching = [crd for crd in crds if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == doc["kind"]]
    assert matching, f"{ident}: no CRD for kind {doc['kind']} in group {group}"
    versions = {v["name"]: v for v in matching[0]["spec"]["versions"]}
    assert version in versions, f"{ident}: {group} {doc['kind']} has no version {version} (has {sorted(versions)})"
    entry = versions[version]
    assert entry.get("served", False), f"{ident}: {doc['apiVersion']} is not served"
    assert not entry.get("deprecated", False), f"{ident}: {doc['apiVersion']} is deprecated"
    usable = [name for name, v in versions.items() if v.get("served", False) and not v.get("deprecated", False)]
    newest = max(usable, key=_version_rank)
    assert version == newest, f"{ident}: use {group}/{newest}, the newest served version, not {version}"

    errors = sorted(Draft7Validator(entry["schema"]["openAPIV3Schema"]).iter_errors(doc), key=str)
    assert not errors, f"{ident}:\n" + "\n".join(f"  {list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(("ident", "doc"), [pytest.param(i, d, id=i) for i, d in DOCUMENTS if not _is_custom(d)])
def test_builtin_kind_validates(ident: str, doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="dev extra kubernetes-validate")
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(
            f"{ident}: no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {KUBERNETES_VERSION}: {exc}"
        )
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{ident}: {exc.message} at {list(exc.path)}")


def test_every_document_names_its_namespace() -> None:
    for ident, doc in DOCUMENTS:
        assert doc.get("metadata", {}).get("namespace"), f"{ident}: no metadata.namespace"


# --------------------------------------------------------------------------------------------------- envoy


def _linkerd_bootstrap() -> str:
    maps = [doc for doc in _by_kind("ConfigMap", "v1") if "envoy.yaml" in doc.get("data", {})]
    assert len(maps) == 1, "expected one ConfigMap holding envoy.yaml in mesh-config/linkerd"
    text: str = maps[0]["data"]["envoy.yaml"]
    return text


def _bootstraps() -> list[tuple[str, str]]:
    shipped = [(f"envoy/{p.name}", p.read_text()) for p in sorted((MESH / "envoy").glob("*.yaml"))]
    return [*shipped, ("linkerd/envoy-sidecar.yaml:ConfigMap", _linkerd_bootstrap())]


@pytest.fixture(scope="module")
def envoy() -> str:
    try:
        return processes.envoy_binary()
    except processes.ProcessError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize(("ident", "text"), [pytest.param(i, t, id=i) for i, t in _bootstraps()])
def test_envoy_bootstrap_validates(envoy: str, tmp_path: Path, ident: str, text: str) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{ident}: envoy --mode validate failed:\n{result.stdout}\n{result.stderr}"


def _http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    found = [f for f in hcm["http_filters"] if f["name"] == name]
    assert len(found) == 1
    result: dict[str, Any] = found[0]["typed_config"]
    return result


def test_linkerd_envoy_fails_closed_and_calls_the_central_sidecar() -> None:
    config = yaml.safe_load(_linkerd_bootstrap())
    ext_authz = _http_filter(config, "envoy.filters.http.ext_authz")
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"]["code"] == 503
    assert ext_authz["encode_raw_headers"] is True
    assert ext_authz["transport_api_version"] == "V3"
    assert _seconds(ext_authz["grpc_service"]["timeout"]) < 1
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    sidecar = clusters[ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"]]
    assert sidecar["type"] == "STRICT_DNS"
    address = sidecar["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "session-sidecar.session-sidecar.svc.cluster.local", "port_value": 9191}
    app = clusters["app"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert app["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def _route_filters(route: dict[str, Any]) -> dict[str, Any]:
    filters: dict[str, Any] = route.get("typed_per_filter_config", {})
    return filters


def test_linkerd_envoy_strips_identity_headers_first_with_the_istio_filters_code() -> None:
    config = yaml.safe_load(_linkerd_bootstrap())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
    first = hcm["http_filters"][0]
    assert first["name"] == "envoy.filters.http.lua", "the strip must run before ext_authz"
    _, istio_code = _strip_filter()
    assert first["typed_config"]["default_source_code"]["inline_string"] == istio_code
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    for route in routes:
        strip_off = _route_filters(route).get("envoy.filters.http.lua", {}).get("disabled") is True
        authz_off = "envoy.filters.http.ext_authz" in _route_filters(route)
        # Only where the sidecar is asked (its allow removes the namespace) may the strip be skipped.
        assert not (strip_off and authz_off), route["match"]
    # Everything else goes through ext_authz: the catch-all route does not turn it off.
    assert routes[-1]["match"] == {"prefix": "/"}
    assert "envoy.filters.http.ext_authz" not in _route_filters(routes[-1])


# Client-sent headers of the identity namespace (as a WSGI app reads them, "_" and "-" alike) and ones that
# only look alike; the first set must never reach the app unless the sidecar set it.
SPOOFED = [
    ("X-User-Id", "admin"),
    ("x-user-roles", "admin"),
    ("x-user-assertion", "eyJhbGciOiJub25lIn0.e30."),
    ("x-user-tenant", "other-tenant"),
    ("X-Session-Id", "s"),
    ("x-session-foo", "1"),
    ("x-user-id", "second"),
    ("x_user_email", "a@example.com"),
    ("X_Session_Whatever", "1"),
]
LOOKALIKES = [("x-userland", "kept"), ("x-request-id", "kept"), ("x-sessionless", "kept")]


def _identity_namespace(names: set[str]) -> set[str]:
    return {n for n in names if n.lower().replace("_", "-").startswith(("x-user-", "x-session-"))}


def _unchecked_paths(config: dict[str, Any]) -> list[str]:
    """The exact paths of the routes that skip ext_authz (the sidecar is never asked there)."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    skipped = [r for r in routes if r.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz")]
    return [r["match"]["path"] for r in skipped]


def _local_linkerd_bootstrap(
    listen_port: int, sidecar_port: int, app_port: int, *, underscores: str | None = None
) -> dict[str, Any]:
    """The shipped Linkerd bootstrap moved onto loopback: its listener, admin, the sidecar and the app on the given
    ports; ``underscores`` overrides headers_with_underscores_action (to test the strip without that safety net)."""
    config: dict[str, Any] = yaml.safe_load(_linkerd_bootstrap())
    config["admin"]["address"]["socket_address"]["port_value"] = processes.free_port()
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if underscores is not None:
        hcm["common_http_protocol_options"]["headers_with_underscores_action"] = underscores
    ports = {"session_sidecar": sidecar_port, "app": app_port}
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[cluster["name"]]}
    return config


@contextlib.contextmanager
def _running_linkerd_envoy(stack: servers.Stack, workdir: Path, underscores: str | None = None) -> Iterator[int]:
    """The Linkerd per-pod Envoy in a real Envoy, asking the e2e stack's real sidecar, in front of its echo app."""
    port = processes.free_port()
    bootstrap = _local_linkerd_bootstrap(port, stack.grpc_port, stack.echo_port, underscores=underscores)
    config = workdir / "envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    server = servers.Server("envoy (linkerd)", workdir / "envoy.log")
    server.attach(processes.start_envoy(config, log_path=server.log))
    try:
        server.wait_listening(port)
        yield port
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["as shipped", "underscores allowed"])
def linkerd_envoy(
    request: pytest.FixtureRequest, envoy: str, stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """As shipped, and with underscores in header names allowed: the strip must not lean on DROP_HEADER."""
    underscores = "ALLOW" if request.param == "underscores allowed" else None
    with _running_linkerd_envoy(stack, tmp_path_factory.mktemp("linkerd-envoy"), underscores) as port:
        yield port


@pytest.fixture(scope="module")
def shipped_linkerd_envoy(envoy: str, stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with _running_linkerd_envoy(stack, tmp_path_factory.mktemp("linkerd-envoy-shipped")) as port:
        yield port


def _through(port: int, path: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, list[str]]]:
    """GET ``path`` through Envoy on ``port``; the status and, when the echo app answered, the headers it saw."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        return response.status, {}
    seen: dict[str, list[str]] = json.loads(body)["headers"]
    return response.status, seen


@pytest.mark.parametrize("path", sorted(HEALTH_PATHS))
def test_linkerd_envoy_health_routes_strip_the_whole_identity_namespace(linkerd_envoy: int, path: str) -> None:
    assert path in _unchecked_paths(yaml.safe_load(_linkerd_bootstrap()))
    status, seen = _through(linkerd_envoy, path, [*SPOOFED, *LOOKALIKES])
    assert status == 200
    assert not _identity_namespace(set(seen)), seen
    assert {"x-userland", "x-request-id", "x-sessionless"} <= set(seen)


def test_linkerd_envoy_every_route_without_ext_authz_is_a_tested_health_path() -> None:
    assert set(_unchecked_paths(yaml.safe_load(_linkerd_bootstrap()))) == HEALTH_PATHS


def test_linkerd_envoy_checked_route_carries_only_the_sidecars_identity(
    shipped_linkerd_envoy: int, stack: servers.Stack
) -> None:
    session = stack.create_session("alice", email="alice@example.com", roles=("dev",))
    status, seen = _through(shipped_linkerd_envoy, "/api/orders", [*SPOOFED, ("Cookie", f"SESSION={session['token']}")])
    assert status == 200
    assert seen["x-user-id"] == ["alice"]
    assert seen["x-user-email"] == ["alice@example.com"]
    assert seen["x-user-roles"] == ["dev"]
    assert _identity_namespace(set(seen)) == {"x-user-id", "x-user-email", "x-user-roles", "x-session-id"}
    status, _ = _through(shipped_linkerd_envoy, "/api/orders", SPOOFED)
    assert status == 401, "no session: the spoofed identity must not be let through"


def test_linkerd_deployment_fronts_the_app_with_envoy() -> None:
    deployment = _one("Deployment", "apps")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"app", "envoy"}
    assert "ports" not in containers["app"], "only Envoy's port may be exposed"
    config_map = {v["name"]: v for v in pod["spec"]["volumes"]}["envoy-config"]["configMap"]["name"]
    assert config_map in {doc["metadata"]["name"] for doc in _by_kind("ConfigMap", "v1")}
    service = next(doc for doc in _by_kind("Service", "v1") if doc["metadata"]["name"] == "my-app")
    assert service["spec"]["ports"][0]["targetPort"] == "http-envoy"


def test_linkerd_policy_admits_only_listed_meshed_identities_to_the_envoy_port() -> None:
    server = _one("Server", "policy.linkerd.io")
    policy = _one("AuthorizationPolicy", "policy.linkerd.io")
    authn = _one("MeshTLSAuthentication", "policy.linkerd.io")
    deployment = _one("Deployment", "apps")
    assert server["spec"]["accessPolicy"] == "deny"
    assert (
        server["spec"]["podSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert server["spec"]["port"] in ports
    assert policy["spec"]["targetRef"] == {"group": "policy.linkerd.io", "kind": "Server", "name": "my-app-envoy"}
    assert server["metadata"]["name"] == "my-app-envoy"
    assert policy["spec"]["requiredAuthenticationRefs"] == [
        {"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": authn["metadata"]["name"]}
    ]
    identities = authn["spec"]["identityRefs"]
    assert identities and all(ref["kind"] == "ServiceAccount" and ref.get("name") for ref in identities)
    assert all(doc["metadata"]["namespace"] == "my-app" for doc in (server, policy, authn, deployment))


def test_ingress_nginx_asks_forward_auth_and_copies_identity_headers() -> None:
    ingress = _one("Ingress", "networking.k8s.io")
    annotations = ingress["metadata"]["annotations"]
    assert (
        annotations["nginx.ingress.kubernetes.io/auth-url"]
        == "http://session-sidecar.session-sidecar.svc.cluster.local:9192/forward-auth"
    )
    copied = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")
    assert set(IDENTITY_HEADERS) <= set(copied)
    namespace, name = annotations["nginx.ingress.kubernetes.io/auth-proxy-set-headers"].split("/")
    headers = next(d for d in _by_kind("ConfigMap", "v1") if d["metadata"]["name"] == name)
    assert headers["metadata"]["namespace"] == namespace
    # The sidecar reads the original path from X-Original-URI; ingress-nginx only sends X-Original-URL.
    assert headers["data"]["X-Original-URI"] == "${request_uri}"


# --------------------------------------------------------------------------------------------------- istio


def _mesh_config() -> dict[str, Any]:
    config_map = next(
        doc for ident, doc in DOCUMENTS if ident.startswith("istio/mesh-config.yaml") and doc["kind"] == "ConfigMap"
    )
    assert config_map["metadata"] == {"name": "istio", "namespace": "istio-system"}
    mesh: dict[str, Any] = yaml.safe_load(config_map["data"]["mesh"])
    return mesh


def _providers() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in _mesh_config()["extensionProviders"]}


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", duration)
    assert match, f"not a duration: {duration!r}"
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def test_istio_providers_fail_closed_fast_with_503() -> None:
    providers = _providers()
    assert providers
    for name, provider in providers.items():
        grpc = provider["envoyExtAuthzGrpc"]
        assert "timeout" in grpc, f"{name}: no timeout (Istio's default is 600s)"
        assert _seconds(grpc["timeout"]) < 1, name
        assert _seconds(grpc["timeout"]) > 0.15, f"{name}: at or below the sidecar's redis.timeout"
        assert grpc["failOpen"] is False, name
        assert str(grpc["statusOnError"]) != "403", name
        assert str(grpc["statusOnError"]) == "503", name
        assert grpc["port"] == 9191, name


def test_istio_central_provider_points_at_the_sidecar_service() -> None:
    services = {p["envoyExtAuthzGrpc"]["service"] for p in _providers().values()}
    assert "session-sidecar.session-sidecar.svc.cluster.local" in services


def test_istio_local_provider_is_backed_by_a_loopback_service_entry() -> None:
    entry = _one("ServiceEntry", "networking.istio.io")
    local = [p for p in _providers().values() if p["envoyExtAuthzGrpc"]["service"] in entry["spec"]["hosts"]]
    assert local, "no provider uses the ServiceEntry's host"
    assert entry["spec"]["resolution"] == "STATIC"
    assert entry["spec"]["endpoints"] == [{"address": "127.0.0.1"}]
    assert {(p["number"], p["protocol"]) for p in entry["spec"]["ports"]} == {(9191, "GRPC")}


def _istio_policies(action: str) -> list[dict[str, Any]]:
    return [doc for doc in _by_kind("AuthorizationPolicy", "security.istio.io") if doc["spec"].get("action") == action]


def _custom_policy() -> dict[str, Any]:
    (policy,) = _istio_policies("CUSTOM")
    return policy


def test_istio_authorization_policy_is_custom_with_a_defined_provider() -> None:
    policy = _custom_policy()
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] in _providers()
    assert policy["spec"]["selector"]["matchLabels"], "a mesh-wide CUSTOM policy is not intended here"
    rules = policy["spec"]["rules"]
    assert len(rules) == 1
    (rule,) = rules
    assert set(rule) == {"to"}, "no from/when: every caller is checked"
    (target,) = rule["to"]
    assert target == {"operation": {"notPaths": sorted(HEALTH_PATHS)}}


def _strip_filter() -> tuple[dict[str, Any], str]:
    envoy_filter = _one("EnvoyFilter", "networking.istio.io")
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["patch"]["operation"] == "INSERT_FIRST"
    value = patch["patch"]["value"]
    code: str = value["typed_config"]["default_source_code"]["inline_string"]
    policy = _custom_policy()
    assert envoy_filter["spec"]["workloadSelector"]["labels"] == policy["spec"]["selector"]["matchLabels"]
    return value, code


def _lua_bootstrap(port: int, strip: dict[str, Any]) -> dict[str, Any]:
    """A listener running the EnvoyFilter's Lua filter, then one that answers with the header names it sees."""
    echo = """
function envoy_on_request(request_handle)
  local names = {}
  for name, _ in pairs(request_handle:headers()) do
    names[#names + 1] = name
  end
  request_handle:respond({[":status"] = "200"}, table.concat(names, "\\n"))
end
"""
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network"
                                        ".http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "inbound",
                                        # Istio's default: header names with underscores are accepted.
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            strip,
                                            {
                                                "name": "echo",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http"
                                                    ".lua.v3.Lua",
                                                    "default_source_code": {"inline_string": echo},
                                                },
                                            },
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http"
                                                    ".router.v3.Router"
                                                },
                                            },
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }


@pytest.fixture(scope="module")
def lua_envoy(envoy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    strip, _ = _strip_filter()
    port = processes.free_port()
    workdir = tmp_path_factory.mktemp("lua-envoy")
    config = workdir / "envoy.yaml"
    config.write_text(yaml.safe_dump(_lua_bootstrap(port, strip), sort_keys=False))
    proc = processes.start_envoy(config, log_path=workdir / "envoy.log")
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=30, proc=proc, name="envoy (lua)")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _seen_headers(port: int, path: str, headers: list[tuple[str, str]]) -> set[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
    finally:
        conn.close()
    return set(body.split("\n"))


@pytest.mark.parametrize("path", sorted(HEALTH_PATHS | {"/api/orders"}))
def test_istio_strip_filter_removes_spoofed_identity_headers(lua_envoy: int, path: str) -> None:
    seen = _seen_headers(lua_envoy, path, [*SPOOFED, *LOOKALIKES])
    assert not _identity_namespace(seen), seen
    assert {"x-userland", "x-request-id", "x-sessionless"} <= seen


def test_istio_strip_filter_prefixes_match_the_sidecar_defaults() -> None:
    from sidecar.config import HeadersConfig  # noqa: PLC0415

    _, code = _strip_filter()
    prefixes = re.search(r"local prefixes = \{(.*?)\}", code)
    assert prefixes
    shipped = set(re.findall(r'"([^"]+)"', prefixes.group(1)))
    defaults = HeadersConfig().strip_prefixes
    assert shipped == set(defaults)


def test_istio_request_authentication_verifies_the_sidecar_assertion_from_its_jwks() -> None:
    from sidecar.admin import JWKS_PATH  # noqa: PLC0415
    from sidecar.config import AssertionConfig, ListenConfig  # noqa: PLC0415

    request_authentication = _one("RequestAuthentication", "security.istio.io")
    spec = request_authentication["spec"]
    assert spec["selector"] == _custom_policy()["spec"]["selector"], "verify where the CUSTOM policy adds it"
    (rule,) = spec["jwtRules"]
    defaults = AssertionConfig()
    assert rule["issuer"] == defaults.issuer
    assert rule["fromHeaders"] == [{"name": defaults.header}], "the sidecar's header, no Bearer prefix"
    assert rule["forwardOriginalToken"] is True
    # An empty list makes Envoy skip the audience check: a token minted for another service would pass.
    assert rule["audiences"] and all(rule["audiences"])
    admin_port = ListenConfig().admin.rpartition(":")[2]
    # The CRD's CEL rule (http/https only) is not evaluated by jsonschema: pin the whole URI instead.
    assert rule["jwksUri"] == f"http://session-sidecar.session-sidecar.svc.cluster.local:{admin_port}{JWKS_PATH}"
    assert "jwks" not in rule, "jwks and jwksUri are exclusive"


def test_istio_allow_policy_requires_an_assertion_principal_except_on_health_paths() -> None:
    from sidecar.config import AssertionConfig  # noqa: PLC0415

    (policy,) = _istio_policies("ALLOW")
    assert policy["spec"]["selector"] == _custom_policy()["spec"]["selector"]
    principal = f"{AssertionConfig().issuer}/*"
    rules = policy["spec"]["rules"]
    assert {"from": [{"source": {"requestPrincipals": [principal]}}]} in rules
    for rule in rules:
        if "from" in rule:
            assert rule == {"from": [{"source": {"requestPrincipals": [principal]}}]}, rule
        else:
            # Any other rule may only open the health endpoints, which never carry an assertion.
            assert rule == {"to": [{"operation": {"paths": sorted(HEALTH_PATHS)}}]}, rule


def test_istio_strip_filter_also_removes_a_client_sent_assertion() -> None:
    from sidecar.config import AssertionConfig  # noqa: PLC0415

    _, code = _strip_filter()
    prefixes = re.search(r"local prefixes = \{(.*?)\}", code)
    assert prefixes
    assert AssertionConfig().header.startswith(tuple(re.findall(r'"([^"]+)"', prefixes.group(1))))
    # Named on its own too, so narrowing the prefixes cannot let a replayed assertion through.
    names = re.search(r"local names = \{(.*?)\}", code)
    assert names
    assert AssertionConfig().header in re.findall(r'\["([^"]+)"\] = true', names.group(1))
