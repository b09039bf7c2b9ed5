"""Real services for the replica tests: Debian's PostgreSQL (and nginx), started in a temp folder, nothing under /var.

`start_postgres()` installs the package with apt-get when it is missing and we are root (CI runs as root on a fresh
machine), runs initdb as the `postgres` user, and serves on a unix socket only (no port to collide with). A test
that cannot get one is skipped with the reason, never passed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


def _apt_install(*packages: str) -> str | None:
    """Install Debian packages (root only); None on success, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{' '.join(packages)} not installed, and apt-get cannot install it here (not root or not Debian)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return None


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


@dataclass
class Postgres:
    """A running PostgreSQL: `url` reaches database `postgres` as user `postgres` over its unix socket."""

    base: Path
    url: str

    def database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        subprocess.run(
            [_psql(), "-h", str(self.base), "-U", "postgres", "-q", "-c", f'CREATE DATABASE "{name}"'],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return f"postgresql://postgres@/{name}?host={self.base}"


def _psql() -> str:
    return _pg_bin("psql") or "psql"


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def start_postgres() -> Iterator[Postgres]:
    """Start a throw-away PostgreSQL (about half a second), or skip with the reason."""
    if _pg_bin("initdb") is None and (why := _apt_install("postgresql")) is not None:
        pytest.skip(f"PostgreSQL is needed for this test: {why}")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    assert initdb is not None and pg_ctl is not None
    # Not pytest's tmp_path: its base is 0700, and the server runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="mmaudio-pg-"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    options = (
        f"-c listen_addresses='' -k {base} -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c shared_buffers=16MB -c max_connections=100"
    )
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-l", str(base / "pg.log"), "-w", "-o", options, "start"]),
            check=True,
            capture_output=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        log = (base / "pg.log").read_text() if (base / "pg.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr!r} {log[-500:]}") from exc
    try:
        yield Postgres(base, f"postgresql://postgres@/postgres?host={base}")
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


MOTO = "moto[server]==5.2.5"
MOTO_VENV = Path(tempfile.gettempdir()) / "mmaudio-mcp-tests-moto-5.2.5"
"""moto is heavy (about 300 MB, 64 packages): it lives in its own virtualenv, made once per machine."""


def _moto_server() -> Path | str:
    """The moto_server command, installing it into its own virtualenv if needed; else why it cannot be had."""
    binary = MOTO_VENV / "bin" / "moto_server"
    if binary.exists():
        return binary
    python = shutil.which("python3") or "python3"
    for command in ([python, "-m", "venv", str(MOTO_VENV)], [str(MOTO_VENV / "bin" / "pip"), "install", "-q", MOTO]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            shutil.rmtree(MOTO_VENV, ignore_errors=True)
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return binary


@dataclass
class S3Server:
    """A moto S3 server on loopback with one bucket; `env` holds the AWS variables that reach it."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }


@contextlib.contextmanager
def start_s3(bucket: str = "mmaudio") -> Iterator[S3Server]:
    """Start moto's S3 server (a quarter of a second once installed) with one bucket, or skip with the reason."""
    import httpx2

    binary = _moto_server()
    if isinstance(binary, str):
        pytest.skip(f"an S3 stand-in (moto) is needed for this test: {binary}")
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        httpx2.put(f"{endpoint}/{bucket}").raise_for_status()
        yield S3Server(endpoint, bucket)
    finally:
        process.terminate()
        process.wait(timeout=10)


NGINX_CONF = """
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_read_timeout 120s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""
"""Round-robin over the replicas; the Host header passed through (else every request is a 421 from the
DNS-rebinding check). deploy/nginx.conf is the same, for compose."""


@contextlib.contextmanager
def start_nginx(ports: list[int]) -> Iterator[int]:
    """nginx round-robin over loopback ports, everything under a temp folder; yields its port (or skips)."""
    if shutil.which("nginx") is None and (why := _apt_install("nginx")) is not None:
        pytest.skip(f"nginx is needed for this test: {why}")
    base = Path(tempfile.mkdtemp(prefix="mmaudio-nginx-"))
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in ports)
    conf = base / "nginx.conf"
    conf.write_text(NGINX_CONF.format(base=base, servers=servers, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run([nginx, "-c", str(conf), "-e", str(base / "nginx-error.log")], check=True, timeout=30)
    try:
        wait_for_port(port)
        yield port
    finally:
        subprocess.run(
            [nginx, "-c", str(conf), "-e", str(base / "nginx-error.log"), "-s", "stop"], timeout=30, check=False
        )
        shutil.rmtree(base, ignore_errors=True)
