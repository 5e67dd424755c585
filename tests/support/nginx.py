"""A real nginx (Debian's nginx-light: it has auth_request) on loopback, for the forward-auth recipes.

``start_nginx`` wraps a ``server { }`` body (e.g. mesh-config/nginx/forward-auth.conf) in a main config whose
every path is under ``workdir``, runs nginx in the foreground without a master process and waits until it
listens. Tests skip with a clear reason where nginx is not installed (``make test`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import processes
from tests.support.servers import LOOPBACK, Server

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")


def nginx_binary() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def main_config(workdir: Path, port: int, upstreams: dict[str, int], server_body: str) -> str:
    blocks = "\n".join(
        f"    upstream {name} {{ server {LOOPBACK}:{p}; keepalive 4; }}" for name, p in upstreams.items()
    )
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir / "nginx-access.log"};
{temp}
{blocks}
    server {{
        listen {LOOPBACK}:{port};
        server_name app.example.com;
{server_body}
    }}
}}
"""


def start_nginx(workdir: Path, upstreams: dict[str, int], server_body: str) -> tuple[Server, int]:
    """nginx serving ``server_body`` on a free loopback port, with ``upstreams`` (name → loopback port)."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (make test installs Debian's nginx-light)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(main_config(workdir, port, upstreams, server_body))
    check = subprocess.run(
        [binary, "-t", "-p", str(workdir), "-c", str(conf)], check=False, capture_output=True, text=True
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t refused the config:\n{check.stderr}")
    server = Server("nginx", workdir / "nginx.log")
    with server.log.open("wb") as log:
        proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    server.attach(proc)
    try:
        server.wait_listening(port)
    except BaseException:
        server.stop()
        raise
    return server, port
