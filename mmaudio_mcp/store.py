"""Durable job rows: the record that makes sure no paid job is ever lost.

`JobStore` is the seam (a Redis or PostgreSQL backend can replace SQLite without touching `jobs` or `server`);
`SqliteJobStore` is the default, a WAL-mode database in the state folder, used from worker threads so that the
event loop never blocks on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import anyio
import anyio.to_thread

from mmaudio_mcp.models import JobRecord, JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

_T = TypeVar("_T")
SCHEMA_VERSION: Final = 2
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    local_id     TEXT PRIMARY KEY,
    request_id   TEXT UNIQUE,
    status       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    record       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_UPSERT: Final = """
INSERT INTO jobs (local_id, request_id, status, created_at, updated_at, record) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (local_id) DO UPDATE SET
    request_id = excluded.request_id, status = excluded.status,
    updated_at = excluded.updated_at, record = excluded.record
"""
_TERMINAL: Final = tuple(status.value for status in JobStatus if status.is_terminal)


class JobStore(Protocol):
    """Where jobs are kept between calls and across restarts."""

    async def save(self, record: JobRecord) -> None:
        """Insert or replace the row for record.local_id, durably, before returning."""
        ...

    async def get(self, request_id: str) -> JobRecord | None:
        """Return the job with this request_id, if any."""
        ...

    async def recent(self, limit: int = 20) -> list[JobRecord]:
        """Return the newest jobs first."""
        ...

    async def unfinished(self) -> list[JobRecord]:
        """Return every job that has not reached a terminal status (including SUBMITTING ones)."""
        ...

    async def owner_of(self, api_key: str) -> str:
        """Return the salted hash that stands for this API key in stored jobs (the key itself is never kept)."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources."""
        ...


class SqliteJobStore:
    """A `JobStore` in one SQLite file; one connection, serialized, driven from worker threads."""

    def __init__(self, path: Path) -> None:
        """Name the database; it is opened (and created if needed) on first use."""
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._lock = anyio.Lock()

    @classmethod
    def in_folder(cls, state_dir: Path) -> SqliteJobStore:
        """The store kept as `jobs.sqlite3` in state_dir, opened on first use."""
        return cls(state_dir / "jobs.sqlite3")

    @classmethod
    async def open(cls, state_dir: Path) -> SqliteJobStore:
        """Open (creating if needed) `jobs.sqlite3` in state_dir now, so that a problem shows at once."""
        store = cls.in_folder(state_dir)
        await store._run(lambda _: None)
        return store

    async def save(self, record: JobRecord) -> None:
        row = (
            record.local_id,
            record.request_id,
            record.status.value,
            record.created_at.isoformat(),
            record.updated_at.isoformat(),
            record.model_dump_json(),
        )
        await self._run(lambda conn: conn.execute(_UPSERT, row))

    async def get(self, request_id: str) -> JobRecord | None:
        rows = await self._query("SELECT record FROM jobs WHERE request_id = ?", (request_id,))
        return rows[0] if rows else None

    async def recent(self, limit: int = 20) -> list[JobRecord]:
        return await self._query("SELECT record FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))

    async def unfinished(self) -> list[JobRecord]:
        marks = ", ".join("?" * len(_TERMINAL))
        sql = f"SELECT record FROM jobs WHERE status NOT IN ({marks}) ORDER BY created_at"  # noqa: S608 (placeholders)
        return await self._query(sql, _TERMINAL)

    async def owner_of(self, api_key: str) -> str:
        salt = await self._run(_salt)
        return hmac.new(salt, api_key.encode(), hashlib.sha256).hexdigest()[:32]

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await anyio.to_thread.run_sync(conn.close)

    async def _query(self, sql: str, args: tuple[object, ...]) -> list[JobRecord]:
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [JobRecord.model_validate_json(row[0]) for row in rows]

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            if self._closed:
                raise RuntimeError("the job store is closed")
            if self._conn is None:
                self._conn = await anyio.to_thread.run_sync(_connect, self.path)
            conn = self._conn
            # Autocommit: every statement is its own durable transaction, committed before we return.
            return await anyio.to_thread.run_sync(work, conn)


def _salt(conn: sqlite3.Connection) -> bytes:
    """This installation's random salt for owner hashes, made on first use."""
    conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('owner_salt', ?)", (secrets.token_hex(16),))
    return bytes.fromhex(conn.execute("SELECT value FROM meta WHERE name = 'owner_salt'").fetchone()[0])


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a crash of this process (only a power loss can drop the last commits).
    conn.execute("PRAGMA synchronous=NORMAL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise RuntimeError(f"{path} was written by a newer mmaudio-mcp (schema {version}); upgrade mmaudio-mcp.")
    conn.executescript(_SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


__all__ = ["JobStore", "SqliteJobStore"]
