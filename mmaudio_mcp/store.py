"""Durable job rows, shared by every process on one state folder: the record that makes sure no paid job is lost.

The store contract (what any backend, SQLite here or PostgreSQL later, must do; docs/store-contract.md has more):

1. **One row per job**, keyed by `local_id` and, once Pixazo answers, by `request_id` (unique). The row is written
   before the submit, so a crash can never hide a paid job.
2. **Writes merge, they never replace.** `save(record)` applies `merge_records(stored, incoming)` to the row inside
   one write transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `SELECT ... FOR UPDATE`). A stale record cannot
   undo what another process wrote: `file` is never cleared, variants are a union (one process's variant never
   erases another's), a status never goes back (a finished job stays finished), and a value that is set is never
   overwritten by a missing one. Each write adds 1 to the row's `version`.
3. **Leases.** One process at a time polls and downloads a job: the one holding the lease (`lease_owner`,
   `lease_until` in the row). `claim` takes it when it is free, expired or already ours; `renew` extends every lease
   a holder has in one statement (the holder renews every third of the lease); `release` gives it back. A holder
   that dies stops renewing, so another process takes over at most one lease length later.
4. **Fenced writes.** `save(record, fence=holder)` applies only while `holder` holds the lease; otherwise it raises
   `LeaseLostError` and changes nothing (a paused holder whose lease was taken over cannot write a stale answer).
5. **Followers re-read.** Processes that do not hold the lease re-read the row (`get`, one indexed lookup) to see
   progress and completion; inside one process the poller wakes its waiters directly.
6. **Faults are named.** A database that cannot be opened, read or written raises `StoreError` with its path and
   what to do; a state folder deleted while running is re-created (and logged), never written into while deleted.

`SqliteJobStore` implements it in one WAL-mode file, `jobs.sqlite3`, through a `SqliteConnection` driven from worker
threads, so the event loop never blocks on disk. Times in lease columns are Unix seconds (wall clock, shared by
processes on one machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeVar

import anyio

from mmaudio_mcp.errors import StoreError
from mmaudio_mcp.models import JobRecord, JobStatus
from mmaudio_mcp.sqlite_connection import SqliteConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from pathlib import Path
    from types import TracebackType

    from anyio.abc import TaskGroup

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
SCHEMA_VERSION: Final = 3
DEFAULT_LEASE_SECONDS: Final = 20.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    local_id     TEXT PRIMARY KEY,
    request_id   TEXT UNIQUE,
    status       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    record       TEXT NOT NULL,
    lease_owner  TEXT,
    lease_until  REAL,
    version      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_owner);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_MIGRATE_2_TO_3: Final = """
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_owner);
"""
_TERMINAL: Final = tuple(status.value for status in JobStatus if status.is_terminal)
_RANK: Final = {JobStatus.SUBMITTING: 0, JobStatus.QUEUED: 1, JobStatus.PROCESSING: 2}
_CLEARABLE: Final = frozenset({"error"})
"""The only field a write may set back to None (a later success clears the last failure)."""


class LeaseLostError(Exception):
    """A fenced write came from a process that no longer holds the job's lease; nothing was written."""


class JobStore(Protocol):
    """Where jobs are kept between calls, across restarts and across processes (see the module docstring)."""

    async def save(self, record: JobRecord, *, fence: str | None = None) -> JobRecord:
        """Merge record into its row (inserting it if new), durably, and return the row as stored. With `fence`,
        write only while that holder holds the lease, else raise `LeaseLostError`."""
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

    async def claim(self, request_id: str, holder: str, seconds: float) -> bool:
        """Take (or extend) the job's lease for `seconds` if it is free, expired or already `holder`'s."""
        ...

    async def renew(self, holder: str, seconds: float) -> set[str]:
        """Extend every lease `holder` holds; return the request_ids it still holds."""
        ...

    async def release(self, request_id: str, holder: str) -> None:
        """Give the lease back if `holder` holds it."""
        ...

    async def owner_of(self, api_key: str) -> str:
        """Return the salted hash that stands for this API key in stored jobs (the key itself is never kept)."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources."""
        ...


def merge_records(stored: JobRecord | None, incoming: JobRecord) -> JobRecord:
    """The row after a write of `incoming` over `stored`: field by field, so a stale record loses nothing.

    - status never goes back: a terminal status stays (with its completion time), QUEUED never follows PROCESSING;
    - `file` is never cleared (a new file replaces it), variants are merged (incoming wins per key);
    - no field but `error` is ever unset: a value missing from `incoming` keeps the stored one;
    - local_id, created_at and owner are the row's first; `updated_at` is the later one.
    """
    if stored is None:
        return incoming
    update: dict[str, object] = {
        "local_id": stored.local_id,
        "created_at": stored.created_at,
        "owner": stored.owner,
        "updated_at": max(stored.updated_at, incoming.updated_at),
        "variants": {**stored.variants, **incoming.variants},
        "file": incoming.file or stored.file,
    }
    for name in type(incoming).model_fields:
        if name not in _CLEARABLE and getattr(incoming, name) is None and getattr(stored, name) is not None:
            update.setdefault(name, getattr(stored, name))
    if stored.status.is_terminal and incoming.status != stored.status:
        update |= {"status": stored.status, "completed_at": stored.completed_at, "run_seconds": stored.run_seconds}
        update["error"] = incoming.error or stored.error
    elif not incoming.status.is_terminal and _RANK[incoming.status] < _RANK[stored.status]:
        update["status"] = stored.status
    return incoming.model_copy(update=update)


def process_holder() -> str:
    """A lease holder name unique to this process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leases:
    """This process's leases on jobs: claimed before polling or downloading, renewed in the background, released
    when the last user in this process is done (in-process users share one lease, counted)."""

    def __init__(self, store: JobStore, seconds: float = DEFAULT_LEASE_SECONDS, holder: str | None = None) -> None:
        self.store = store
        self.seconds = seconds
        self.holder = holder or process_holder()
        self.follow_seconds = min(1.0, self.seconds / 4)
        """How often a process that does not hold a job's lease re-reads its row (and tries to take it over)."""
        self._held: dict[str, int] = {}
        self._tasks: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._keep, name="lease renewal")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            for request_id in list(self._held):
                await self._give_back(request_id)
        self._held.clear()

    def start_soon(self, work: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        """Run some start-up housekeeping beside the renewals (it ends with them)."""
        assert self._tasks is not None
        self._tasks.start_soon(work, name=name)

    def holds(self, request_id: str) -> bool:
        """Whether this process holds the job's lease (as far as it knows: renewal drops lost ones)."""
        return request_id in self._held

    async def acquire(self, request_id: str) -> bool:
        """Take the job's lease for one more user in this process; False if another process holds it."""
        if request_id in self._held:
            self._held[request_id] += 1
            return True
        if not await self.store.claim(request_id, self.holder, self.seconds):
            return False
        self._held[request_id] = self._held.get(request_id, 0) + 1
        return True

    async def release(self, request_id: str) -> None:
        """One user is done; the lease goes back to the store when the last one is."""
        count = self._held.get(request_id, 0) - 1
        if count > 0:
            self._held[request_id] = count
            return
        if self._held.pop(request_id, None) is not None:
            with anyio.CancelScope(shield=True):
                await self._give_back(request_id)

    async def _give_back(self, request_id: str) -> None:
        try:
            await self.store.release(request_id, self.holder)
        except (StoreError, RuntimeError) as exc:  # it expires by itself
            logger.warning("could not release the lease on %s: %s", request_id, exc)

    async def _keep(self) -> None:
        while True:
            await anyio.sleep(self.seconds / 3)
            if not self._held:
                continue
            try:
                still = await self.store.renew(self.holder, self.seconds)
            except (StoreError, RuntimeError) as exc:
                logger.warning("could not renew job leases: %s", exc)
                continue
            for lost in set(self._held) - still:
                logger.warning("lost the lease on %s (another process took it over)", lost)
                self._held.pop(lost, None)


class SqliteJobStore:
    """A `JobStore` in one SQLite file; one connection per process, serialized, driven from worker threads."""

    def __init__(self, path: Path) -> None:
        """Name the database; it is opened (and created if needed) on first use."""
        self.path = path
        self._db = SqliteConnection(path, lambda conn: _migrate(conn, path))

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

    async def save(self, record: JobRecord, *, fence: str | None = None) -> JobRecord:
        return await self._run(lambda conn: _merge_row(conn, record, fence))

    async def get(self, request_id: str) -> JobRecord | None:
        rows = await self._query("SELECT record FROM jobs WHERE request_id = ?", (request_id,))
        return rows[0] if rows else None

    async def recent(self, limit: int = 20) -> list[JobRecord]:
        return await self._query("SELECT record FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))

    async def unfinished(self) -> list[JobRecord]:
        marks = ", ".join("?" * len(_TERMINAL))
        sql = f"SELECT record FROM jobs WHERE status NOT IN ({marks}) ORDER BY created_at"  # noqa: S608 (placeholders)
        return await self._query(sql, _TERMINAL)

    async def claim(self, request_id: str, holder: str, seconds: float) -> bool:
        def claim(conn: sqlite3.Connection) -> bool:
            now = time.time()
            # A read first (it never waits for writers in WAL mode): a follower re-trying a held lease every tick
            # takes no write lock. The UPDATE repeats the test, so two claimers cannot both win.
            held = conn.execute("SELECT lease_owner, lease_until FROM jobs WHERE request_id = ?", (request_id,))
            row = held.fetchone()
            if row is None or (row[0] not in (None, holder) and (row[1] or 0) >= now):
                return False
            cursor = conn.execute(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE request_id = ? "
                "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                (holder, now + seconds, request_id, holder, now),
            )
            return cursor.rowcount == 1

        return await self._run(claim)

    async def renew(self, holder: str, seconds: float) -> set[str]:
        def renew(conn: sqlite3.Connection) -> set[str]:
            conn.execute("UPDATE jobs SET lease_until = ? WHERE lease_owner = ?", (time.time() + seconds, holder))
            rows = conn.execute("SELECT request_id FROM jobs WHERE lease_owner = ?", (holder,)).fetchall()
            return {row[0] for row in rows}

        return await self._run(renew)

    async def release(self, request_id: str, holder: str) -> None:
        sql = "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE request_id = ? AND lease_owner = ?"
        await self._run(lambda conn: conn.execute(sql, (request_id, holder)))

    async def lease(self, request_id: str) -> tuple[str | None, float | None, int]:
        """The row's lease holder, lease expiry (Unix seconds) and version (for diagnostics and tests)."""
        sql = "SELECT lease_owner, lease_until, version FROM jobs WHERE request_id = ?"
        row = await self._run(lambda conn: conn.execute(sql, (request_id,)).fetchone())
        return (row[0], row[1], row[2]) if row else (None, None, 0)

    async def owner_of(self, api_key: str) -> str:
        salt = await self._run(_salt)
        return hmac.new(salt, api_key.encode(), hashlib.sha256).hexdigest()[:32]

    async def aclose(self) -> None:
        await self._db.aclose()

    async def _query(self, sql: str, args: tuple[object, ...]) -> list[JobRecord]:
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [JobRecord.model_validate_json(row[0]) for row in rows]

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._db.run(work)


def _merge_row(conn: sqlite3.Connection, record: JobRecord, fence: str | None) -> JobRecord:
    """Read-merge-write in one IMMEDIATE transaction (the write lock is taken first, so no other process's write
    can come in between)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT local_id, record, lease_owner FROM jobs WHERE local_id = ? OR (request_id IS NOT NULL "
            "AND request_id = ?) ORDER BY local_id = ? DESC LIMIT 1",
            (record.local_id, record.request_id, record.local_id),
        ).fetchone()
        if fence is not None and row is not None and row[2] != fence:
            raise LeaseLostError(f"{record.request_id} is leased by another process")
        stored = JobRecord.model_validate_json(row[1]) if row else None
        merged = merge_records(stored, record)
        values = (
            merged.request_id,
            merged.status.value,
            merged.updated_at.isoformat(),
            merged.model_dump_json(),
        )
        if row is None:
            conn.execute(
                "INSERT INTO jobs (local_id, request_id, status, created_at, updated_at, record, version) "
                "VALUES (?, ?, ?, ?, ?, ?, 1)",
                (merged.local_id, values[0], values[1], merged.created_at.isoformat(), *values[2:]),
            )
        else:
            conn.execute(
                "UPDATE jobs SET request_id = ?, status = ?, updated_at = ?, record = ?, version = version + 1 "
                "WHERE local_id = ?",
                (*values, row[0]),
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return merged


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not already (it does on a full disk); the error that got us here
    is the one to report."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _salt(conn: sqlite3.Connection) -> bytes:
    """This installation's random salt for owner hashes, made on first use."""
    conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('owner_salt', ?)", (secrets.token_hex(16),))
    return bytes.fromhex(conn.execute("SELECT value FROM meta WHERE name = 'owner_salt'").fetchone()[0])


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION under the write lock (two processes may start at once)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer mmaudio-mcp (schema {version}); upgrade mmaudio-mcp.")
        has_jobs = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone() is not None
        if has_jobs and version < SCHEMA_VERSION:
            for statement in _MIGRATE_2_TO_3.strip().split(";\n"):
                conn.execute(statement)
        for statement in _SCHEMA.strip().split(";\n"):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "JobStore",
    "LeaseLostError",
    "Leases",
    "SqliteJobStore",
    "merge_records",
    "process_holder",
]
