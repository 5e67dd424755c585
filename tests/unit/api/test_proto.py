"""The checked-in SessionService code is exactly what `make proto` generates from proto/."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from sidecar.api.v1 import session_pb2

protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is a dev dependency (make install)")

REPO = Path(__file__).resolve().parents[3]
PROTO = "sidecar/api/v1/session.proto"
PACKAGE = "sidecar/api/v1"
GENERATED = ("session_pb2.py", "session_pb2.pyi", "session_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"-I{well_known}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(REPO / "proto" / PROTO),
        ]
    )
    assert code == 0, "grpc_tools.protoc failed"
    for name in GENERATED:
        fresh = (tmp_path / PACKAGE / name).read_bytes()
        checked_in = (REPO / PACKAGE / name).read_bytes()
        assert fresh == checked_in, f"{PACKAGE}/{name} is stale: run make proto"


def test_package_markers_exist() -> None:
    for package in ("sidecar/api", PACKAGE):
        assert (REPO / package / "__init__.py").is_file(), f"{package}/__init__.py is missing"


def test_service_has_every_rpc() -> None:
    service = session_pb2.DESCRIPTOR.services_by_name["SessionService"]
    # The proto file lives under sidecar/api/v1 but keeps its package: the wire name is the public contract.
    assert service.full_name == "sidecar.session.v1.SessionService"
    assert [m.name for m in service.methods] == [
        "Create",
        "Get",
        "Rotate",
        "Revoke",
        "RevokeSession",
        "RevokeUser",
        "ListUser",
    ]


def test_a_session_never_carries_a_token() -> None:
    fields = set(session_pb2.Session.DESCRIPTOR.fields_by_name)
    assert not any("token" in name for name in fields)
