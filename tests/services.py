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
