"""TLS and ACL against a real Redis 7 (Debian's redis-server, built with TLS): verification is on by default,
credentials come from the config (files), and every failure is a clear StoreUnavailable, never an allow."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar import wiring
from sidecar.config import load_config
from sidecar.errors import StoreUnavailable
from sidecar.store.connect import RedisSettings
from sidecar.store.redis import RedisStore
from tests.support import servers
from tests.support.processes import free_port, stop, wait_for_port

pytestmark = pytest.mark.integration

ACL_USER, ACL_PASSWORD = "sidecar-app", "correct-horse-battery-staple"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pem(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@dataclass
class Pki:
    ca: str
    cert: str
    key: str


def make_pki(directory: Path) -> Pki:
    """A throw-away CA and a server certificate for 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("sidecar test CA"))
        .issuer_name(_name("sidecar test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Pki(
        ca=_write_pem(directory / "ca.pem", ca.public_bytes(pem)),
        cert=_write_pem(directory / "server.pem", cert.public_bytes(pem)),
        key=_write_pem(
            directory / "server.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Pki]]:
    binary = servers.redis7_binary()
    if binary is None:
        pytest.skip("Debian redis-server not installed: make test installs it")
    workdir = tmp_path_factory.mktemp("tls-redis")
    pki = make_pki(workdir)
    port = free_port()
    args = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--tls-cert-file", pki.cert, "--tls-key-file", pki.key, "--tls-ca-cert-file", pki.ca,
        "--tls-auth-clients", "no",
        "--user", "default", "off", "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    with (workdir / "redis.log").open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 15.0, proc=proc, name="tls redis")
        time.sleep(0.2)
        yield port, pki
    finally:
        stop(proc)


def store_for(port: int, **settings: object) -> RedisStore:
    options = {"username": ACL_USER, "password": ACL_PASSWORD, **settings}
    return RedisStore.connect(RedisSettings(url=f"rediss://127.0.0.1:{port}/0", timeout=2.0, **options), "tls:")  # type: ignore[arg-type]


async def test_tls_with_the_ca_and_acl_credentials_works(tls_redis: tuple[int, Pki]) -> None:
    port, pki = tls_redis
    store = store_for(port, tls_ca_file=pki.ca)
    try:
        await store.ping()
        assert await store.shared_secret("proposal") == "proposal"
    finally:
        await store.close()


async def test_an_untrusted_certificate_is_refused_by_default(tls_redis: tuple[int, Pki]) -> None:
    port, _ = tls_redis
    store = store_for(port)  # system trust store: our test CA is not in it
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.ping()
    finally:
        await store.close()


async def test_verification_can_be_turned_off_explicitly(tls_redis: tuple[int, Pki]) -> None:
    port, _ = tls_redis
    store = store_for(port, tls_verify=False)
    try:
        await store.ping()
    finally:
        await store.close()


async def test_wrong_password_is_an_authentication_failure(tls_redis: tuple[int, Pki]) -> None:
    port, pki = tls_redis
    store = store_for(port, tls_ca_file=pki.ca, password="wrong")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.ping()
        assert "wrong" not in str(raised.value)
    finally:
        await store.close()


async def test_credentials_and_ca_from_config_files_reach_the_server(
    tls_redis: tuple[int, Pki], tmp_path: Path
) -> None:
    port, pki = tls_redis
    password_file = tmp_path / "redis-password"
    password_file.write_text(ACL_PASSWORD + "\n")
    config = load_config(
        environ={
            "SIDECAR_REDIS__URL": f"rediss://127.0.0.1:{port}/0",
            "SIDECAR_REDIS__USERNAME": ACL_USER,
            "SIDECAR_REDIS__PASSWORD_FILE": str(password_file),
            "SIDECAR_REDIS__TLS_CA_FILE": pki.ca,
        }
    )
    store = wiring.open_store(config, 2.0)
    try:
        await store.ping()
    finally:
        await store.close()
