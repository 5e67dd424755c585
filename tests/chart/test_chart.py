"""helm/session-sidecar rendered by the real Helm engine (helm-python-sdk: Helm v4's Go SDK over ctypes).

Every ci/*-values.yaml (plus cases built here, e.g. inline assertion keys generated per run) is linted and
rendered; every built-in object validates against the upstream Kubernetes schemas (kubernetes-validate, strict);
the config the chart renders is loaded by ``python -m sidecar config check`` with the SIDECAR_* variables the
Deployment would take from the rendered Secret and the files it would mount from it, so the chart's values and
the sidecar's config cannot drift apart.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

try:
    import helm_python as helm
except (ImportError, OSError) as exc:  # not installed, or its native libhelm_c cannot load on this platform
    pytest.skip(
        f"helm-python-sdk cannot be imported ({exc}); pip install -e '.[dev]': the chart tests need the Helm engine",
        allow_module_level=True,
    )
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="dev extra kubernetes-validate")

from sidecar.config import AssertionKey, Config, load_config  # noqa: E402 - after the skips

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "session-sidecar"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
CI_NAMES = [path.name.removesuffix("-values.yaml") for path in CI_FILES]
KUBERNETES_VERSION = "1.37.0"
RELEASE, NAMESPACE = "auth", "identity"
CONFIG_PATH = "/etc/session-sidecar/config.yaml"
SECRETS_DIR = "/etc/session-sidecar/secrets"
METRICS_DIR = "/var/lib/session-sidecar/metrics"
KEY_FILE_MODE = 0o440  # root-owned, group fsGroup: readable by the non-root sidecar only
NOT_BUILT_IN = {"monitoring.coreos.com/v1"}  # the ServiceMonitor CRD: not in the upstream schemas

Doc = dict[str, Any]
Rendered = tuple[str, dict[str, Any], dict[str, str], list[Doc]]


def ci_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text(encoding="utf-8"))
    return data or {}


@functools.cache
def private_key_pem(kind: str = "ec", label: str = "") -> str:
    """A fresh unencrypted PKCS#8 PEM private key (EC P-256 or Ed25519), one per (kind, label) per test run: test
    keys are generated, never committed."""
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def assertion_inline_values() -> dict[str, Any]:
    """The default ci values plus assertions signed with inline keys (into the chart's Secret), two workers."""
    values = copy.deepcopy(ci_values("default"))
    values["workers"] = 2
    values["listen"] = {"httpPort": 9292}
    values["assertion"] = {
        "enabled": True,
        "issuer": "https://auth.example.com",
        "keys": [
            {"kid": "ec-1", "private_key": private_key_pem("ec", "ec-1")},
            {"kid": "ed.2", "private_key": private_key_pem("ed25519", "ed.2")},
        ],
    }
    return values


def redis_url_secret_values() -> dict[str, Any]:
    """A redis.url with credentials: the whole URL goes into the Secret, the sidecar reads it from the env."""
    return {"redis": {"url": "redis://sidecar:s3cret-url-pass@redis-master.data.svc:6379/1"}}


# Cases built here rather than in ci/: their values hold keys generated per run (or a password in a URL).
GENERATED: dict[str, Callable[[], dict[str, Any]]] = {
    "assertion-inline": assertion_inline_values,
    "redis-url-secret": redis_url_secret_values,
}
CASES = CI_NAMES + list(GENERATED)


def case_values(name: str) -> dict[str, Any]:
    return GENERATED[name]() if name in GENERATED else ci_values(name)


@pytest.fixture(scope="module")
def chart() -> Any:
    return helm.Chart.load(CHART)


def render(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(manifests: dict[str, str]) -> list[Doc]:
    docs: list[Doc] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


@pytest.fixture(scope="module", params=CASES)
def rendered(request: pytest.FixtureRequest, chart: Any) -> Rendered:
    values = case_values(request.param)
    manifests = render(chart, values)
    return request.param, values, manifests, documents(manifests)


def test_every_ci_file_is_there() -> None:
    assert set(CI_NAMES) == {"default", "sentinel", "cluster", "sidecar-mode", "existing-secret"}


def test_chart_metadata(chart: Any) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == "0.1.0"
    assert chart.name == "session-sidecar"
    assert chart.schema is not None


@pytest.mark.parametrize("name", CASES)
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(
        CHART, case_values(name), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}"
    )
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == [], problems


def test_every_built_in_object_is_valid_kubernetes(
    rendered: Rendered,
) -> None:
    name, _, _, docs = rendered
    assert docs, f"{name}: nothing rendered"
    for doc in docs:
        if doc["apiVersion"] in NOT_BUILT_IN:
            continue
        ident = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["namespace"] == NAMESPACE, ident
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{ident}: {exc.message} at {list(exc.path)}")


def test_notes_render(rendered: Rendered) -> None:
    _, values, manifests, _ = rendered
    notes = manifests["session-sidecar/templates/NOTES.txt"]
    if values.get("mode") == "sidecar":
        assert "127.0.0.1:9191" in notes
        assert "snippet" in notes
    else:
        assert "extensionProviders" in notes
        assert "envoyExtAuthzGrpc" in notes
        assert "action: CUSTOM" in notes
        assert f"auth-session-sidecar.{NAMESPACE}.svc.cluster.local" in notes
        assert "Linkerd" in notes
    assert "statusOnError" in notes or values.get("mode") == "sidecar"


NOTES = "session-sidecar/templates/NOTES.txt"
SECRET_TEMPLATE = "session-sidecar/templates/secret.yaml"


@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("redis://user:hunter2-secret@redis:6379/0", "hunter2-secret", "redis://***@redis:6379/0"),
        # Unencoded "/", "?", "#" and "@" in the password: the userinfo does not end at the first of them.
        ("redis+sentinel://u:S3cr3t/Pa55@h:26379/m", "S3cr3t/Pa55", "redis+sentinel://***@h:26379/m"),
        ("redis://:p#ss/w?rd@h:6379/0", "p#ss/w?rd", "redis://***@h:6379/0"),
        ("rediss://u:at@sign@h:6380/0", "at@sign", "rediss://***@h:6380/0"),
        ("redis://:0nly?qu3ry@h:6379/0", "0nly?qu3ry", "redis://***@h:6379/0"),
    ],
)
def test_a_redis_url_password_is_rendered_into_the_secret_only(chart: Any, url: str, password: str, shown: str) -> None:
    manifests = render(chart, {"redis": {"url": url}})
    assert shown in manifests[NOTES]
    pieces = {password, *(piece for piece in re.split(r"[/?#@]", password) if len(piece) >= 4)}
    for path, text in manifests.items():
        if path == SECRET_TEMPLATE:
            continue
        for piece in pieces:
            assert piece not in text, f"{path} shows {piece!r} of the Redis password"
    docs = documents(manifests)
    assert one(docs, "Secret")["stringData"]["redis-url"] == url
    container, _ = sidecar_container(docs, "central")
    assert secret_env(docs, container)["SIDECAR_REDIS__URL"] == url
    config = yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"])
    assert "url" not in config["redis"], "the URL comes from the Secret"


def test_a_redis_url_without_credentials_stays_in_the_config(chart: Any) -> None:
    docs = documents(render(chart, {"redis": {"url": "redis://redis-master.data.svc:6379/0"}}))
    config = yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"])
    assert config["redis"]["url"] == "redis://redis-master.data.svc:6379/0"
    assert "Secret" not in kinds(docs)


# --- the sidecar's config: rendered by the chart, loaded by the sidecar ---------------------------------------


def secret_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The SIDECAR_* variables the container would get from the rendered Secret (an existing Secret: none)."""
    secrets = {d["metadata"]["name"]: d.get("stringData") or {} for d in docs if d["kind"] == "Secret"}
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        if ref["name"] not in secrets:
            assert ref.get("optional") is True, f"{var['name']}: a Secret not rendered here must be optional"
            continue
        data = secrets[ref["name"]]
        assert ref["key"] in data, f"{var['name']}: key {ref['key']!r} missing from Secret {ref['name']}"
        env[var["name"]] = data[ref["key"]]
    return env


def assert_contains(effective: Any, rendered: Any, where: str) -> None:
    """Every key the chart rendered has the same value in the effective config (which adds the defaults)."""
    if isinstance(rendered, dict):
        assert isinstance(effective, dict), where
        for key, value in rendered.items():
            assert key in effective, f"{where}.{key}: not in the effective config"
            assert_contains(effective[key], value, f"{where}.{key}")
    elif isinstance(rendered, list):
        assert isinstance(effective, list), where
        assert len(effective) == len(rendered), where
        for i, (got, want) in enumerate(zip(effective, rendered, strict=True)):
            assert_contains(got, want, f"{where}[{i}]")
    else:
        assert effective == rendered, f"{where}: the sidecar runs with {effective!r}, the chart rendered {rendered!r}"


def sidecar_container(docs: list[Doc], mode: str) -> tuple[Doc, list[Doc]]:
    """The sidecar container and pod volumes: the Deployment's, or (sidecar mode) the pasteable snippet's."""
    if mode == "sidecar":
        snippet = one(docs, "ConfigMap", f"{RELEASE}-session-sidecar-snippet")["data"]
        containers = yaml.safe_load(snippet["container.yaml"])
        volumes = yaml.safe_load(snippet["volumes.yaml"])
        assert len(containers) == 1
        return containers[0], volumes
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container, pod["volumes"]


def stand_in(key: str) -> str:
    """What an existing Secret (not rendered here) would hold under ``key``."""
    if key == "api-token":
        return "an-api-bearer-token-from-the-existing-secret"
    assert key.startswith("assertion-key-"), key
    return private_key_pem("ec", key)


def mounted_secret_files(docs: list[Doc], container: Doc, volumes: list[Doc], into: Path) -> dict[str, str]:
    """Write the files the pod would see under SECRETS_DIR (from the rendered Secret, or stand-ins for an existing
    one) into ``into``; return {path in the pod: path written}."""
    mounts = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == SECRETS_DIR]
    if not mounts:
        return {}
    (mount,) = mounts
    assert mount.get("readOnly") is True, "the secrets are mounted read-only"
    source = next(v for v in volumes if v["name"] == mount["name"])["secret"]
    secrets = {d["metadata"]["name"]: d.get("stringData") or {} for d in docs if d["kind"] == "Secret"}
    data = secrets.get(source["secretName"])
    files: dict[str, str] = {}
    for item in source["items"]:
        if data is None:
            content = stand_in(item["key"])
        else:
            assert item["key"] in data, f"key {item['key']!r} missing from Secret {source['secretName']}"
            content = data[item["key"]]
        local = into / item["path"]
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content, encoding="utf-8")
        files[f"{SECRETS_DIR}/{item['path']}"] = str(local)
    return files


def with_paths(value: Any, files: dict[str, str]) -> Any:
    """``value`` with every path under SECRETS_DIR replaced by the file written for it (each must be mounted)."""
    if isinstance(value, dict):
        return {key: with_paths(item, files) for key, item in value.items()}
    if isinstance(value, list):
        return [with_paths(item, files) for item in value]
    if isinstance(value, str) and value.startswith(f"{SECRETS_DIR}/"):
        assert value in files, f"the config names {value}, which the pod does not mount"
        return files[value]
    return value


def test_the_rendered_config_loads_in_the_sidecar(rendered: Rendered, tmp_path: Path) -> None:
    name, values, _, docs = rendered
    text = one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"]
    config = yaml.safe_load(text)
    container, volumes = sidecar_container(docs, values.get("mode", "central"))
    env = secret_env(docs, container)
    if config["api"]["enabled"]:  # the Secret's api-token, mounted at SECRETS_DIR in the pod
        assert config["api"]["token_file"] == f"{SECRETS_DIR}/api-token"
    # The Secret's files (api-token, assertion keys) as the pod mounts them, and the config pointing at them.
    config = with_paths(config, mounted_secret_files(docs, container, volumes, tmp_path / "secrets"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = config_check(path, env)
    assert result.returncode == 0, f"{name}: config check failed:\n{result.stderr}{result.stdout}"
    effective = yaml.safe_load(result.stdout)
    # What the chart wrote is what the sidecar runs with (the sidecar normalises nothing the chart renders).
    assert_contains(effective, config, name)
    # The secrets arrived from the Secret, and only from it.
    assert "password" not in config["redis"]
    assert "keys" not in config.get("token", {})
    if values.get("redis", {}).get("password"):
        assert effective["redis"]["password"] == "<redacted>"
    assert len(effective["token"]["keys"]) == len(values.get("token", {}).get("keys", []))
    assert len(effective["session"]["encryption_keys"]) == len(values.get("session", {}).get("encryption_keys", []))
    assertion = values.get("assertion", {})
    assert effective["assertion"]["enabled"] is bool(assertion.get("enabled"))
    expected_kids = [key["kid"] for key in assertion.get("keys", [])] if assertion.get("enabled") else []
    assert [key["kid"] for key in effective["assertion"]["keys"]] == expected_kids
    assert "-----BEGIN" not in text, "a private key in the ConfigMap"


def config_check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m sidecar config check --config PATH`` with only ``env`` as SIDECAR_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "config", "check", "--config", str(path)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_encryption_keys_from_the_secret_env() -> None:
    """The chart hands session.encryption_keys to the sidecar as SIDECAR_SESSION__ENCRYPTION_KEYS (this once failed:
    SessionConfig named SigningKey before it existed, so the variable was not read as a list)."""
    key = ci_values("default")["session"]["encryption_keys"][0]
    config = load_config(None, {"SIDECAR_SESSION__ENCRYPTION_KEYS": key})
    assert [k.kid for k in config.session.encryption_keys] == [key.partition(":")[0]]


# Keys of the config sections that exist only in the chart (they build a config key, or feed the Secret).
CHART_ONLY = {
    "listen": {"host", "grpcPort", "httpPort", "httpEnabled", "adminPort", "apiPort"},
    "redis": {"mode", "tls", "host", "port", "db", "sentinel", "cluster"},
}
# Config keys the chart does not expose as values, and why.
NOT_IN_VALUES = {
    "listen": {"grpc", "http", "admin", "api"},  # built from listen.host/*Port, the mode and api.enabled
    "redis": {"password_file", "sentinel_password_file"},  # the passwords come from the Secret as env
    "api": {"token_file"},  # the Secret's api-token, mounted by the chart
}


# An item of assertion.keys: private_key (the PEM) is the chart's; it goes into the Secret, mounted as the
# config's private_key_file; private_key_pem and algorithm are what the sidecar reads from that file.
ASSERTION_KEY_CHART_ONLY = {"private_key"}
ASSERTION_KEY_NOT_IN_VALUES = {"private_key_file", "private_key_pem", "algorithm"}


def test_values_map_one_to_one_onto_the_config(chart: Any) -> None:
    defaults = chart.values
    schema = chart.schema
    for section, field in Config.model_fields.items():
        assert section in defaults, f"values.yaml has no {section} section"
        model = field.annotation
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            continue  # routes: a list, passed through as is
        keys = set(defaults[section])
        fields = set(model.model_fields)
        assert keys - fields <= CHART_ONLY.get(section, set()), f"{section}: values keys the sidecar lacks"
        assert fields - keys <= NOT_IN_VALUES.get(section, set()), f"{section}: config keys missing from values"
        # The schema knows exactly the keys values.yaml has (unknown keys are rejected, as in the sidecar).
        assert set(schema["properties"][section]["properties"]) == keys, f"{section}: schema and values.yaml differ"
    # The items of assertion.keys (empty by default, so read from the schema).
    item = schema["properties"]["assertion"]["properties"]["keys"]["items"]
    assert item["additionalProperties"] is False
    keys, fields = set(item["properties"]), set(AssertionKey.model_fields)
    assert keys - fields == ASSERTION_KEY_CHART_ONLY
    assert fields - keys == ASSERTION_KEY_NOT_IN_VALUES


def test_the_sources_list_reaches_the_config_as_given(chart: Any) -> None:
    sources = [{"kind": "native"}, {"kind": "express", "secrets_file": "/run/express/secrets", "email": "email"}]
    docs = documents(render(chart, {"sources": sources}))
    config = yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"])
    assert config["sources"] == sources
    default = yaml.safe_load(one(documents(render(chart, {})), "ConfigMap")["data"]["config.yaml"])
    assert default["sources"] == [{"kind": "native"}]


def test_redis_urls(chart: Any) -> None:
    def url(values: dict[str, Any]) -> str:
        docs = documents(render(chart, values))
        return yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"])["redis"][
            "url"
        ]

    assert url({}) == "redis://redis-master:6379/0"
    assert url(ci_values("sentinel")) == (
        "redis+sentinel://redis-sentinel-0.redis:26379,redis-sentinel-1.redis:26379,"
        "redis-sentinel-2.redis:26379/mymaster/2"
    )
    assert url(ci_values("cluster")) == (
        "redis+cluster://redis-cluster-0.redis:7000,redis-cluster-1.redis:7000,redis-cluster-2.redis:7000"
    )
    assert url(ci_values("existing-secret")) == "rediss://redis.example.internal:6380/0"
    assert url({"redis": {"url": "unix:///run/redis.sock", "mode": "cluster"}}) == "unix:///run/redis.sock"


# --- the workload -------------------------------------------------------------------------------------------


def test_central_deployment(chart: Any) -> None:
    docs = documents(render(chart, ci_values("default")))
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "PodDisruptionBudget"} <= kinds(docs)
    assert {"HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds(docs)
    assert "ServiceMonitor" not in kinds(docs)  # off by default
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["serve", "--config", CONFIG_PATH, "--workers", "1"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 9191, "http": 9192, "admin": 9090}
    assert container["readinessProbe"]["grpc"] == {"port": 9191, "service": "envoy.service.auth.v3.Authorization"}
    assert container["livenessProbe"]["grpc"] == {"port": 9191}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert env == {
        "SIDECAR_TOKEN__KEYS": "token-keys",
        "SIDECAR_SESSION__ENCRYPTION_KEYS": "encryption-keys",
        "SIDECAR_REDIS__PASSWORD": "redis-password",
    }
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert CONFIG_PATH in mounts
    service = one(docs, "Service")
    protocols = {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]}
    assert protocols == {"grpc": "grpc", "http": "http", "admin": "http"}
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["listen"] == {
        "grpc": "0.0.0.0:9191",
        "http": "0.0.0.0:9192",
        "admin": "0.0.0.0:9090",
        "api": "",
        "idle_timeout": "1m",
        "max_connections": 1000,
        "grpc_threads": 4,
    }


def test_workers(chart: Any) -> None:
    docs = documents(render(chart, ci_values("sentinel")))
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--workers", "2"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 9191, "http": 9292, "grpc-1": 9192, "http-1": 9293, "admin": 9090}
    service_ports = {p["name"]: p["port"] for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports == ports
    env = {e["name"] for e in container["env"]}
    assert env == {"SIDECAR_REDIS__PASSWORD", "SIDECAR_REDIS__SENTINEL_PASSWORD", "PROMETHEUS_MULTIPROC_DIR"}


def test_existing_secret(chart: Any) -> None:
    docs = documents(render(chart, ci_values("existing-secret")))
    assert "Secret" not in kinds(docs)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"]]
    assert {r["name"] for r in refs} == {"session-sidecar-secrets"}
    assert all(r["optional"] for r in refs)
    assert {e["name"] for e in container["env"]} >= {
        "SIDECAR_TOKEN__KEYS",
        "SIDECAR_SESSION__ENCRYPTION_KEYS",
        "SIDECAR_REDIS__PASSWORD",
    }


def test_cluster_api_and_service_monitor(chart: Any) -> None:
    docs = documents(render(chart, ci_values("cluster")))
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert secret_volume["secret"]["items"] == [{"key": "api-token", "path": "api-token", "mode": KEY_FILE_MODE}]
    assert {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_no_assertion_no_key_mounts(chart: Any) -> None:
    docs = documents(render(chart, ci_values("default")))
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["assertion"] == {
        "enabled": False,
        "header": "x-user-assertion",
        "issuer": "session-sidecar",
        "ttl": "1m",
        "claims": ["sub", "email", "roles", "sid"],
        "audience": "",
        "keys": [],
    }
    assert config["headers"]["max_bytes"] == 8192
    assert config["log"] == {"level": "info", "format": "json", "sample_allows": 0.01}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "secrets" not in {v["name"] for v in pod["volumes"]}
    assert not any(k.startswith("assertion-key-") for k in one(docs, "Secret")["stringData"])
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert all(p["port"] != 9090 for rule in rules for p in rule["ports"])  # no adminFrom, no JWKS: admin closed


def test_inline_assertion_keys_are_mounted_read_only(chart: Any) -> None:
    values = assertion_inline_values()
    docs = documents(render(chart, values))
    data = one(docs, "Secret")["stringData"]
    for key in values["assertion"]["keys"]:
        assert data[f"assertion-key-{key['kid']}"] == key["private_key"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    assert volume["secretName"] == f"{RELEASE}-session-sidecar"
    assert volume["items"] == [
        {"key": "assertion-key-ec-1", "path": "assertion-key-ec-1.pem", "mode": KEY_FILE_MODE},
        {"key": "assertion-key-ed.2", "path": "assertion-key-ed.2.pem", "mode": KEY_FILE_MODE},
    ]
    # 0440 is readable by the sidecar because the files' group (fsGroup) is the group it runs as.
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
    assert container["securityContext"]["runAsUser"] != 0
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["assertion"]["keys"] == [
        {"kid": "ec-1", "private_key_file": f"{SECRETS_DIR}/assertion-key-ec-1.pem"},
        {"kid": "ed.2", "private_key_file": f"{SECRETS_DIR}/assertion-key-ed.2.pem"},
    ]
    assert config["assertion"]["issuer"] == "https://auth.example.com"
    # Rotating a key rolls the pods.
    rotated = copy.deepcopy(values)
    rotated["assertion"]["keys"][0]["private_key"] = private_key_pem("ec", "rotated")
    before = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    after = one(documents(render(chart, rotated)), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert after["checksum/secret"] != before


def test_assertion_keys_beside_the_api_token(chart: Any) -> None:
    values = copy.deepcopy(ci_values("cluster"))
    values["assertion"] = {"enabled": True, "keys": [{"kid": "k1", "private_key": private_key_pem("ed25519", "k1")}]}
    docs = documents(render(chart, values))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    assert volume["items"] == [
        {"key": "api-token", "path": "api-token", "mode": KEY_FILE_MODE},
        {"key": "assertion-key-k1", "path": "assertion-key-k1.pem", "mode": KEY_FILE_MODE},
    ]
    assert set(one(docs, "Secret")["stringData"]) == {"api-token", "assertion-key-k1"}


def test_assertion_keys_from_the_existing_secret(chart: Any) -> None:
    docs = documents(render(chart, ci_values("existing-secret")))
    assert "Secret" not in kinds(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    assert volume["secretName"] == "session-sidecar-secrets"
    assert volume["items"] == [
        {"key": "assertion-key-ec-2025-06", "path": "assertion-key-ec-2025-06.pem", "mode": KEY_FILE_MODE},
        {"key": "assertion-key-ed-2025-01", "path": "assertion-key-ed-2025-01.pem", "mode": KEY_FILE_MODE},
    ]
    assert "optional" not in volume  # a missing key must stop the pod, not start it without its signing key
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert [k["private_key_file"] for k in config["assertion"]["keys"]] == [
        f"{SECRETS_DIR}/assertion-key-ec-2025-06.pem",
        f"{SECRETS_DIR}/assertion-key-ed-2025-01.pem",
    ]
    assert config["assertion"]["claims"] == ["sub", "roles"]
    assert config["assertion"]["ttl"] == "30s"


def test_jwks_is_reachable_on_the_service_admin_port(chart: Any) -> None:
    docs = documents(render(chart, assertion_inline_values()))
    (admin,) = [p for p in one(docs, "Service")["spec"]["ports"] if p["name"] == "admin"]
    assert admin == {"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP", "appProtocol": "http"}
    notes = render(chart, assertion_inline_values())["session-sidecar/templates/NOTES.txt"]
    assert f"http://{RELEASE}-session-sidecar.{NAMESPACE}.svc.cluster.local:9090/.well-known/jwks.json" in notes
    assert "RequestAuthentication" in notes
    # The NetworkPolicy admits the JWKS fetchers on the admin port only when named (jwksFrom): never `from`.
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert all(p["port"] != 9090 for rule in rules for p in rule["ports"])
    istiod = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}}]
    values = assertion_inline_values()
    values["networkPolicy"] = {"enabled": True, "from": istiod, "jwksFrom": istiod}
    rules = one(documents(render(chart, values)), "NetworkPolicy")["spec"]["ingress"]
    assert {"ports": [{"port": 9090, "protocol": "TCP"}], "from": istiod} in rules


def test_service_monitor_scrapes_metrics_on_the_admin_port(chart: Any) -> None:
    docs = documents(render(chart, ci_values("cluster")))
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "admin"
    assert endpoint["path"] == "/metrics"
    assert "admin" in {p["name"] for p in one(docs, "Service")["spec"]["ports"]}


@pytest.mark.parametrize("name", ["sentinel", "assertion-inline"])
def test_workers_share_metrics_through_an_empty_dir(chart: Any, name: str) -> None:
    docs = documents(render(chart, case_values(name)))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"] == METRICS_DIR
    mount = next(m for m in container["volumeMounts"] if METRICS_DIR.startswith(m["mountPath"]))
    assert not mount.get("readOnly")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"sizeLimit": "64Mi"}  # node disk, not memory: it does not eat the memory limit


def test_one_worker_needs_no_metrics_dir(chart: Any) -> None:
    """A single process keeps its metrics in memory; PROMETHEUS_MULTIPROC_DIR would switch it to files."""
    for name in ("default", "sidecar-mode"):
        docs = documents(render(chart, ci_values(name)))
        container, volumes = sidecar_container(docs, ci_values(name).get("mode", "central"))
        assert "PROMETHEUS_MULTIPROC_DIR" not in {e["name"] for e in container.get("env") or []}
        assert "metrics" not in {v["name"] for v in volumes}


def test_sidecar_mode(chart: Any) -> None:
    docs = documents(render(chart, ci_values("sidecar-mode")))
    assert kinds(docs) == {"ConfigMap"}  # no Deployment, Service, HPA, PDB, ServiceAccount (no inline secrets)
    config = yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"])
    assert config["listen"] == {
        "grpc": "127.0.0.1:9191",
        "http": "",
        "admin": "127.0.0.1:9090",
        "api": "",
        "idle_timeout": "1m",
        "max_connections": 1000,
        "grpc_threads": 4,
    }
    container, volumes = sidecar_container(docs, "sidecar")
    assert container["args"] == ["serve", "--config", CONFIG_PATH, "--workers", "1"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The snippet is a valid container + volumes: validate it inside a Pod.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}, container], "volumes": volumes},
    }
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"the sidecar snippet: {exc.message} at {list(exc.path)}")


# --- issue #16: what the defaults expose ---------------------------------------------------------------------

ISTIO = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}}]
MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
LOGIN = [{"podSelector": {"matchLabels": {"app": "login"}}}]


def ingress_rules(chart: Any, values: dict[str, Any]) -> list[Doc]:
    rules: list[Doc] = one(documents(render(chart, values)), "NetworkPolicy")["spec"]["ingress"]
    return rules


def admitted(rules: list[Doc], port: int) -> list[Doc]:
    """The peers admitted to ``port``, rule by rule (a rule without ``from`` would be every source)."""
    return [peer for rule in rules if port in {p["port"] for p in rule["ports"]} for peer in rule["from"]]


def test_network_policy_without_callers_fails_rather_than_admitting_everyone(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        render(chart, {"networkPolicy": {"enabled": True}})
    assert (
        "networkPolicy.enabled needs networkPolicy.from: the peers that call ext_authz (the mesh proxies, "
        "an ingress); an empty from would admit no one"
    ) in str(caught.value)


def test_network_policy_admits_only_the_named_peers_port_by_port(chart: Any) -> None:
    values = {"networkPolicy": {"enabled": True, "from": ISTIO, "adminFrom": MONITORING}}
    rules = ingress_rules(chart, values)
    assert all(rule.get("from") for rule in rules), "a rule without from admits every source"
    assert admitted(rules, 9191) == ISTIO
    assert admitted(rules, 9192) == ISTIO
    # /metrics (and /healthz, /readyz) on the admin port: the separately named source only.
    assert admitted(rules, 9090) == MONITORING
    # No adminFrom: the admin port is closed, whoever may call ext_authz.
    rules = ingress_rules(chart, {"networkPolicy": {"enabled": True, "from": ISTIO}})
    assert admitted(rules, 9090) == []


def test_jwks_fetchers_reach_the_admin_port_only_when_named(chart: Any) -> None:
    values = assertion_inline_values()
    values["networkPolicy"] = {"enabled": True, "from": ISTIO}
    assert admitted(ingress_rules(chart, values), 9090) == [], "the ext_authz callers do not get /metrics"
    values["networkPolicy"]["jwksFrom"] = MONITORING
    assert admitted(ingress_rules(chart, values), 9090) == MONITORING


def test_readiness_follows_the_store_through_the_authz_health_service(chart: Any) -> None:
    from sidecar.app import AUTHZ_SERVICE_NAME  # noqa: PLC0415 - the name the sidecar turns NOT_SERVING

    for name in ("default", "sidecar-mode"):
        container, _ = sidecar_container(documents(render(chart, ci_values(name))), ci_values(name).get("mode", ""))
        assert container["readinessProbe"]["grpc"] == {"port": 9191, "service": AUTHZ_SERVICE_NAME}
        # Liveness asks "" (the process answers): a store outage must not restart every replica.
        assert container["livenessProbe"]["grpc"] == {"port": 9191}


def test_every_mounted_secret_file_is_0440(chart: Any) -> None:
    values = copy.deepcopy(ci_values("cluster"))
    values["assertion"] = {"enabled": True, "keys": [{"kid": "k1", "private_key": private_key_pem("ed25519", "k1")}]}
    for docs in (documents(render(chart, values)), documents(render(chart, ci_values("existing-secret")))):
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
        assert volume["defaultMode"] == KEY_FILE_MODE
        assert volume["items"] and all(item["mode"] == KEY_FILE_MODE for item in volume["items"]), volume["items"]


@pytest.mark.parametrize(
    ("values", "budget"),
    [
        ({"replicaCount": 1}, {"maxUnavailable": 1}),
        ({"replicaCount": 1, "pdb": {"minAvailable": "100%"}}, {"maxUnavailable": 1}),
        ({"autoscaling": {"enabled": True, "minReplicas": 1}}, {"maxUnavailable": 1}),
        ({}, {"minAvailable": 1}),
        ({"replicaCount": 3, "pdb": {"minAvailable": 2}}, {"minAvailable": 2}),
        ({"replicaCount": 4, "pdb": {"minAvailable": "50%"}}, {"minAvailable": "50%"}),
    ],
)
def test_the_disruption_budget_lets_a_node_drain(chart: Any, values: dict[str, Any], budget: dict[str, Any]) -> None:
    spec = one(documents(render(chart, values)), "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in spec.items() if k != "selector"} == budget


def test_a_single_replica_says_its_budget_allows_eviction(chart: Any) -> None:
    notes = render(chart, {"replicaCount": 1})[NOTES]
    assert "one replica: the PodDisruptionBudget allows its eviction (maxUnavailable: 1)" in notes
    assert "PodDisruptionBudget" not in render(chart, {})[NOTES]


def test_the_api_listens_on_its_own_port_with_its_own_service_port(chart: Any) -> None:
    docs = documents(render(chart, ci_values("cluster")))
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["listen"]["grpc"] == "0.0.0.0:9191"
    assert config["listen"]["api"] == "0.0.0.0:9193"
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["api"] == 9193
    (api,) = [p for p in one(docs, "Service")["spec"]["ports"] if p["name"] == "api"]
    assert api == {"name": "api", "port": 9193, "targetPort": "api", "protocol": "TCP", "appProtocol": "grpc"}
    # Off: no listener, no port.
    docs = documents(render(chart, ci_values("default")))
    assert yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])["listen"]["api"] == ""
    assert "api" not in {p["name"] for p in one(docs, "Service")["spec"]["ports"]}


def test_the_api_port_admits_only_its_own_callers(chart: Any) -> None:
    values = copy.deepcopy(ci_values("cluster"))
    values["networkPolicy"] = {"enabled": True, "from": ISTIO, "apiFrom": LOGIN}
    rules = ingress_rules(chart, values)
    assert admitted(rules, 9191) == ISTIO
    assert admitted(rules, 9193) == LOGIN
    values["networkPolicy"] = {"enabled": True, "from": ISTIO}
    with pytest.raises(helm.HelmRenderError) as caught:
        render(chart, values)
    assert "api.enabled with networkPolicy.enabled needs networkPolicy.apiFrom" in str(caught.value)


def test_each_worker_has_its_own_api_port(chart: Any) -> None:
    values = copy.deepcopy(ci_values("sentinel"))
    values["api"] = {"enabled": True, "token": "an-api-bearer-token-of-enough-length"}
    values["networkPolicy"] = {"enabled": True, "from": ISTIO, "apiFrom": LOGIN}
    docs = documents(render(chart, values))
    service_ports = {p["name"]: p["port"] for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports["api"] == 9193
    assert service_ports["api-1"] == 9194
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert admitted(rules, 9194) == LOGIN
    assert admitted(rules, 9192) == ISTIO  # worker 1's gRPC port


def test_the_minimal_install_warns_that_every_pod_reaches_it(chart: Any) -> None:
    notes = render(chart, {})[NOTES]
    assert "networkPolicy.enabled is false: every pod in the cluster can reach ports 9191, 9192 and 9090" in notes
    assert "networkPolicy.enabled is false" not in render(chart, ci_values("default"))[NOTES]


def test_the_new_listen_and_forward_auth_keys_reach_the_config(chart: Any) -> None:
    docs = documents(render(chart, ci_values("cluster")))
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["listen"]["idle_timeout"] == "30s"
    assert config["listen"]["max_connections"] == 500
    assert config["forward_auth"] == {"trusted_hops": 1, "proxy": "ingress-nginx"}
    defaults = yaml.safe_load(one(documents(render(chart, {})), "ConfigMap")["data"]["config.yaml"])
    assert defaults["listen"]["idle_timeout"] == "1m"
    assert defaults["listen"]["max_connections"] == 1000
    assert defaults["forward_auth"] == {"trusted_hops": 0, "proxy": "any"}


# --- bad values fail with the chart's own message -----------------------------------------------------------


PEM = private_key_pem("ed25519", "bad-values")


def test_sidecar_mode_with_assertions_and_workers(chart: Any) -> None:
    values = copy.deepcopy(ci_values("sidecar-mode"))
    values["workers"] = 2
    values["assertion"] = {"enabled": True, "keys": [{"kid": "k1", "private_key": private_key_pem("ec", "k1")}]}
    manifests = render(chart, values)
    docs = documents(manifests)
    assert kinds(docs) == {"ConfigMap", "Secret"}
    container, volumes = sidecar_container(docs, "sidecar")
    assert {e["name"]: e.get("value") for e in container["env"]} == {"PROMETHEUS_MULTIPROC_DIR": METRICS_DIR}
    assert {v["name"] for v in volumes} == {"config", "secrets", "tmp", "metrics"}
    secret = next(v for v in volumes if v["name"] == "secrets")["secret"]
    assert secret["items"] == [{"key": "assertion-key-k1", "path": "assertion-key-k1.pem", "mode": KEY_FILE_MODE}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": NAMESPACE},
        "spec": {
            "securityContext": {"fsGroup": 65532},
            "containers": [{"name": "app", "image": "example/app:1"}, container],
            "volumes": volumes,
        },
    }
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"the sidecar snippet: {exc.message} at {list(exc.path)}")
    # The pasted snippet reads 0440 key files only when the app's pod has the sidecar's group as fsGroup: say so.
    assert "fsGroup: 65532" in manifests["session-sidecar/templates/NOTES.txt"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "daemonset"}, 'mode must be central or sidecar (got "daemonset")'),
        ({"redis": {"mode": "replicated"}}, 'redis.mode must be standalone, sentinel or cluster (got "replicated")'),
        ({"redis": {"mode": "sentinel"}}, "redis.mode sentinel needs redis.sentinel.hosts"),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"hosts": ["s:26379"]}}},
            "redis.mode sentinel needs redis.sentinel.hosts (host:port entries) and redis.sentinel.masterName",
        ),
        ({"redis": {"mode": "cluster"}}, "redis.mode cluster needs redis.cluster.nodes"),
        ({"redis": {"failure_policy": "allow"}}, 'redis.failure_policy must be deny or stale (got "allow")'),
        (
            {"redis": {"failure_policy": "stale"}, "cache": {"enabled": False}},
            "redis.failure_policy stale needs cache.enabled: true",
        ),
        ({"existingSecret": "mine", "redis": {"password": "x"}}, "existingSecret is set: leave token.keys"),
        ({"existingSecret": "mine", "token": {"keys": ["k:x"]}}, "existingSecret is set: leave token.keys"),
        ({"api": {"enabled": True}}, "api.enabled needs api.token"),
        ({"workers": 0}, "workers must be between 1 and 64 (got 0)"),
        ({"workers": 2}, "workers 2: listen.grpcPort 9191..9192 and listen.httpPort 9192..9193 collide"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "autoscaling.maxReplicas must be"),
        (
            {"existingSecret": "mine", "redis": {"url": "redis://u:p/w@h:6379/0"}},
            'existingSecret is set and redis.url holds credentials ("@"): leave them out of redis.url and put the '
            "password in the existing Secret's redis-password",
        ),
        (
            {"replicaCount": 2, "pdb": {"minAvailable": 2}},
            "pdb.minAvailable 2 leaves no pod of the 2 replicas evictable, so every node drain would block: "
            "set it below 2 (or a percentage below 100%)",
        ),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 3}, "pdb": {"minAvailable": 5}},
            "pdb.minAvailable 5 leaves no pod of the 3 replicas evictable",
        ),
        ({"pdb": {"minAvailable": "100%"}}, "pdb.minAvailable 100% leaves no pod of the 2 replicas evictable"),
        (
            {"api": {"enabled": True, "token": "an-api-bearer-token-of-enough-length"}, "listen": {"apiPort": 9191}},
            "workers 1: listen.grpcPort 9191..9191 and listen.apiPort 9191..9191 collide",
        ),
        (
            {
                "workers": 2,
                "listen": {"httpPort": 9292, "apiPort": 9089},
                "api": {"enabled": True, "token": "an-api-bearer-token-of-enough-length"},
            },
            "workers 2: listen.apiPort 9089..9090 and listen.adminPort 9090..9090 collide",
        ),
        ({"assertion": {"enabled": True}}, "assertion.enabled needs at least one key in assertion.keys"),
        (
            {"assertion": {"enabled": True, "keys": [{"kid": "k1"}]}},
            'assertion.keys[0] (kid "k1") needs private_key (a PEM EC P-256 or Ed25519 private key), '
            "or an existingSecret with key assertion-key-k1",
        ),
        (
            {"assertion": {"enabled": True, "keys": [{"kid": "k1", "private_key": PEM}, {"kid": "k1"}]}},
            'assertion.keys[1]: duplicate kid "k1"',
        ),
        (
            {"assertion": {"enabled": True, "header": "x-assertion", "keys": [{"kid": "k1", "private_key": PEM}]}},
            'assertion.header "x-assertion" does not start with any of headers.strip_prefixes (x-user-, x-session-), '
            "so a client-supplied (replayed) assertion would reach the upstream",
        ),
        (
            {
                "headers": {"strip_prefixes": ["x-user-"]},
                "assertion": {"enabled": True, "header": "x-session-jwt", "keys": [{"kid": "k", "private_key": PEM}]},
            },
            'assertion.header "x-session-jwt" does not start with any of headers.strip_prefixes (x-user-)',
        ),
        (
            {"assertion": {"enabled": True, "header": "x-user-id", "keys": [{"kid": "k1", "private_key": PEM}]}},
            'assertion.header: same header as headers.user_id ("x-user-id")',
        ),
        (
            {"existingSecret": "mine", "assertion": {"enabled": True, "keys": [{"kid": "k1", "private_key": PEM}]}},
            "existingSecret is set: leave token.keys, session.encryption_keys, redis.password, "
            "redis.sentinel_password, api.token and assertion.keys[].private_key empty",
        ),
    ],
)
def test_bad_values_fail_with_the_charts_message(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        render(chart, values)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"redis": {"urll": "redis://x"}}, "/redis"),  # a typo: unknown keys are errors, as in the sidecar
        ({"listen": {"grpcPort": 70000}}, "/listen/grpcPort"),
        ({"log": {"level": "verbose"}}, "/log/level"),
        ({"routes": [{"prefix": "public"}]}, "/routes/0/prefix"),
        ({"cache": {"enabled": "yes"}}, "/cache/enabled"),
        ({"headers": {"maxBytes": 4096}}, "/headers"),
        ({"headers": {"max_bytes": 100}}, "/headers/max_bytes"),
        ({"log": {"format": "logfmt"}}, "/log/format"),
        ({"log": {"sample_allows": 2}}, "/log/sample_allows"),
        ({"assertion": {"enable": True}}, "/assertion"),
        ({"assertion": {"enabled": "true"}}, "/assertion/enabled"),
        ({"assertion": {"ttl": True}}, "/assertion/ttl"),
        ({"assertion": {"claims": ["sub", "name"]}}, "/assertion/claims/1"),
        ({"assertion": {"claims": ["email"]}}, "/assertion/claims"),
        ({"assertion": {"issuer": ""}}, "/assertion/issuer"),
        ({"assertion": {"keys": [{"kid": "k 1", "private_key": "x"}]}}, "/assertion/keys/0/kid"),
        ({"assertion": {"keys": [{"kid": "k1", "private_key_file": "/k.pem"}]}}, "/assertion/keys/0"),
        ({"assertion": {"keys": [{"kid": "k1", "private_key": "not a PEM"}]}}, "/assertion/keys/0/private_key"),
        ({"assertion": {"keys": [{"private_key": "x"}]}}, "/assertion/keys/0"),
        ({"networkPolicy": {"jwksFrom": {}}}, "/networkPolicy/jwksFrom"),
        ({"networkPolicy": {"apiFrom": {}}}, "/networkPolicy/apiFrom"),
        ({"listen": {"apiPort": 0}}, "/listen/apiPort"),
        ({"listen": {"max_connections": 0}}, "/listen/max_connections"),
        ({"listen": {"max_connections": 100001}}, "/listen/max_connections"),
        ({"listen": {"idle_timeout": True}}, "/listen/idle_timeout"),
        ({"forward_auth": {"trusted_hops": 11}}, "/forward_auth/trusted_hops"),
        ({"forward_auth": {"trusted_hops": -1}}, "/forward_auth/trusted_hops"),
        ({"forward_auth": {"proxy": "haproxy"}}, "/forward_auth/proxy"),
        ({"forward_auth": {"hops": 1}}, "/forward_auth"),
        ({"sources": []}, "/sources"),
        ({"sources": [{"kind": "memcached"}]}, "/sources/0/kind"),
        ({"sources": [{"kind": "express", "secrets": ["inline"]}]}, "/sources/0"),
        ({"sources": [{"kind": "php", "redis": {"host": "x"}}]}, "/sources/0/redis"),
        ({"pdb": {"minAvailable": "half"}}, "/pdb/minAvailable"),
        ({"pdb": {"minAvailable": -1}}, "/pdb/minAvailable"),
    ],
)
def test_the_schema_rejects(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert where in str(caught.value)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_the_default_image_is_the_one_make_image_builds(chart: Any) -> None:
    # Nothing publishes an image: the chart's default must name what `make image` (image/build.sh) produces.
    build = (CHART.parents[1] / "image" / "build.sh").read_text()
    assert 'IMAGE="${IMAGE:-localhost/session-sidecar:$VERSION}"' in build
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    deployment = one(documents(render(chart, {})), "Deployment")
    images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images == {f"localhost/session-sidecar:{app_version}"}
