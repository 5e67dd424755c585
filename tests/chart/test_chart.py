"""helm/session-sidecar rendered by the real Helm engine (helm-python-sdk: Helm v4's Go SDK over ctypes).

Every ci/*-values.yaml is linted and rendered; every built-in object validates against the upstream Kubernetes
schemas (kubernetes-validate, strict); the config the chart renders is loaded by ``python -m sidecar config
check`` with the SIDECAR_* variables the Deployment would take from the rendered Secret, so the chart's values
and the sidecar's config cannot drift apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import helm_python as helm
except (ImportError, OSError) as exc:  # not installed, or its native libhelm_c cannot load on this platform
    pytest.skip(
        f"helm-python-sdk cannot be imported ({exc}); pip install -e '.[dev]': the chart tests need the Helm engine",
        allow_module_level=True,
    )
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="dev extra kubernetes-validate")

from sidecar.config import Config, load_config  # noqa: E402 - after the skips

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "session-sidecar"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
CI_NAMES = [path.name.removesuffix("-values.yaml") for path in CI_FILES]
KUBERNETES_VERSION = "1.37.0"
RELEASE, NAMESPACE = "auth", "identity"
CONFIG_PATH = "/etc/session-sidecar/config.yaml"
SECRETS_DIR = "/etc/session-sidecar/secrets"
NOT_BUILT_IN = {"monitoring.coreos.com/v1"}  # the ServiceMonitor CRD: not in the upstream schemas

Doc = dict[str, Any]
Rendered = tuple[str, dict[str, Any], dict[str, str], list[Doc]]


def ci_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text(encoding="utf-8"))
    return data or {}


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


@pytest.fixture(scope="module", params=CI_NAMES)
def rendered(request: pytest.FixtureRequest, chart: Any) -> Rendered:
    values = ci_values(request.param)
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


@pytest.mark.parametrize("name", CI_NAMES)
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, ci_values(name), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}")
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


def test_notes_hide_redis_credentials(chart: Any) -> None:
    notes = render(chart, {"redis": {"url": "redis://user:hunter2-secret@redis:6379/0"}})[
        "session-sidecar/templates/NOTES.txt"
    ]
    assert "hunter2-secret" not in notes
    assert "redis://***@redis:6379/0" in notes


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


def test_the_rendered_config_loads_in_the_sidecar(rendered: Rendered, tmp_path: Path) -> None:
    name, values, _, docs = rendered
    text = one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"]
    config = yaml.safe_load(text)
    container, _ = sidecar_container(docs, values.get("mode", "central"))
    env = secret_env(docs, container)
    if config["api"]["enabled"]:  # the Secret's api-token, mounted at SECRETS_DIR in the pod
        assert config["api"]["token_file"] == f"{SECRETS_DIR}/api-token"
        token = tmp_path / "api-token"
        token.write_text(one(docs, "Secret")["stringData"]["api-token"], encoding="utf-8")
        config["api"]["token_file"] = str(token)
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
    "listen": {"host", "grpcPort", "httpPort", "httpEnabled", "adminPort"},
    "redis": {"mode", "tls", "host", "port", "db", "sentinel", "cluster"},
}
# Config keys the chart does not expose as values, and why.
NOT_IN_VALUES = {
    "listen": {"grpc", "http", "admin"},  # built from listen.host/*Port and the mode
    "redis": {"password_file", "sentinel_password_file"},  # the passwords come from the Secret as env
    "api": {"token_file"},  # the Secret's api-token, mounted by the chart
}


def test_values_map_one_to_one_onto_the_config(chart: Any) -> None:
    defaults = chart.values
    for section, field in Config.model_fields.items():
        assert section in defaults, f"values.yaml has no {section} section"
        model = field.annotation
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            continue  # routes: a list, passed through as is
        keys = set(defaults[section])
        fields = set(model.model_fields)
        assert keys - fields <= CHART_ONLY.get(section, set()), f"{section}: values keys the sidecar lacks"
        assert fields - keys <= NOT_IN_VALUES.get(section, set()), f"{section}: config keys missing from values"


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
    assert container["readinessProbe"]["grpc"] == {"port": 9191}
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
    assert config["listen"] == {"grpc": "0.0.0.0:9191", "http": "0.0.0.0:9192", "admin": "0.0.0.0:9090"}


def test_workers(chart: Any) -> None:
    docs = documents(render(chart, ci_values("sentinel")))
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--workers", "2"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 9191, "http": 9292, "grpc-1": 9192, "http-1": 9293, "admin": 9090}
    service_ports = {p["name"]: p["port"] for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports == ports
    env = {e["name"] for e in container["env"]}
    assert env == {"SIDECAR_REDIS__PASSWORD", "SIDECAR_REDIS__SENTINEL_PASSWORD"}


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
    assert secret_volume["secret"]["items"] == [{"key": "api-token", "path": "api-token"}]
    assert {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_sidecar_mode(chart: Any) -> None:
    docs = documents(render(chart, ci_values("sidecar-mode")))
    assert kinds(docs) == {"ConfigMap"}  # no Deployment, Service, HPA, PDB, ServiceAccount (no inline secrets)
    config = yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-session-sidecar")["data"]["config.yaml"])
    assert config["listen"] == {"grpc": "127.0.0.1:9191", "http": "", "admin": "127.0.0.1:9090"}
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


# --- bad values fail with the chart's own message -----------------------------------------------------------


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
    ],
)
def test_the_schema_rejects(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert where in str(caught.value)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)
