"""What paid calls did, shared by every process on one state folder: re-issued calls and the spending guard.

Two tables beside the job rows, in the same `jobs.sqlite3` (created on first use; they do not touch the job schema):

- `calls`: one row per `generate_audio` call, keyed by a fingerprint of who asked for what. A call that ends without
  its caller receiving a result (cancelled, its stream closed, its process gone) is `abandoned`; an identical call
  within `REATTACH_SECONDS` joins that call's job instead of paying for another. A call whose result was sent is
  `answered`, so the same call made again is a new take.
- `spend`: one row per paid submit (per key); the spending guard counts them in a rolling window, under the write
  lock, so two processes cannot both take the last place.

Times are Unix seconds (wall clock, shared by processes on one machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from mmaudio_mcp.sqlite_connection import SqliteConnection

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from mmaudio_mcp.models import GenerationParams

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
REATTACH_SECONDS: Final = 600.0
"""How long after it started an abandoned call's job can be joined by the same call made again."""
RUNNING_GRACE: Final = 2.0
"""How long a call waits for an identical call still running to end (a client re-issues a call right after
cancelling it, and the server may not have seen the cancellation through yet); after that it is a new take."""
DEFAULT_SPEND_CAP: Final = 60
DEFAULT_SPEND_WINDOW_MINUTES: Final = 60.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS calls (
    call_id     TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    request_id  TEXT,
    holder      TEXT NOT NULL,
    state       TEXT NOT NULL,
    started     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_fingerprint ON calls (fingerprint, started);
CREATE INDEX IF NOT EXISTS calls_request ON calls (request_id);
CREATE TABLE IF NOT EXISTS spend (
    local_id TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_owner ON spend (owner, at);
CREATE TABLE IF NOT EXISTS tasks (
    task_id    TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    tool       TEXT NOT NULL,
    request_id TEXT NOT NULL,
    extra      TEXT NOT NULL,
    created    REAL NOT NULL,
    updated    REAL NOT NULL,
    ttl_ms     INTEGER,
    status     TEXT NOT NULL,
    message    TEXT,
    outcome    TEXT
)
"""


@dataclass(frozen=True)
class SpendCap:
    """At most `jobs` paid submits per key in any `window_minutes`; 0 jobs disables the guard."""

    jobs: int = DEFAULT_SPEND_CAP
    window_minutes: float = DEFAULT_SPEND_WINDOW_MINUTES

    @property
    def window_seconds(self) -> float:
        return self.window_minutes * 60


@dataclass(frozen=True)
class Spent:
    """Paid submits in the current window: how many, and when the oldest of them leaves it (Unix seconds)."""

    count: int
    frees_at: float | None


def spend_summary(spent: Spent, cap: SpendCap) -> str:
    """The spend window in one line, for people (`mmaudio-mcp jobs`)."""
    window = f"the last {cap.window_minutes:g} minutes"
    if cap.jobs <= 0:
        return f"Spending guard off (MMAUDIO_SPEND_CAP=0): {spent.count} paid jobs in {window}."
    return (
        f"Spend window: {spent.count} of {cap.jobs} paid jobs in {window} with the server's key "
        "(MMAUDIO_SPEND_CAP, MMAUDIO_SPEND_WINDOW_MINUTES)."
    )


async def read_spent(state_dir: Path, cap: SpendCap) -> Spent:
    """The server key's paid submits in the current window, read from the store in `state_dir`."""
    ledger = Ledger.in_folder(state_dir)
    try:
        return await ledger.spent(None, cap)
    finally:
        await ledger.aclose()


@dataclass(frozen=True)
class TaskRow:
    """A task (the MCP Tasks extension) as stored: the job it follows, and its outcome once it has one (the JSON of
    a CallToolResult when completed, of a JSON-RPC error when failed). Times are Unix seconds."""

    task_id: str
    owner: str | None
    tool: str
    request_id: str
    extra: str
    created: float
    updated: float
    ttl_ms: int | None
    status: str = "working"
    message: str | None = None
    outcome: str | None = None

    @property
    def expired(self) -> bool:
        return self.ttl_ms is not None and time.time() > self.created + self.ttl_ms / 1000


_TASK_COLUMNS: Final = "task_id, owner, tool, request_id, extra, created, updated, ttl_ms, status, message, outcome"


def _task(row: tuple[Any, ...]) -> TaskRow:
    return TaskRow(row[0], row[1] or None, *row[2:])


def fingerprint(params: GenerationParams, owner: str | None, extra: str | None) -> str:
    """Who asked for what: the same key, the same generation parameters and the same `extra` (e.g. the folder)."""
    what = {"owner": owner, "params": params.model_dump(mode="json"), "extra": extra}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def process_alive(holder: str) -> bool | None:
    """Whether the process that made a call still runs: True or False for a holder on this machine, None for one on
    another machine (which only its leases can vouch for)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(holder: str) -> bool:
    """Whether a call's process may still be running (a holder on another machine is assumed alive)."""
    return process_alive(holder) is not False


class Ledger:
    """The `calls` and `spend` tables in the job database; one connection per process, driven from worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Shielded: each unit is short, and what it records must not be half-done (a cancelled call is recorded as
        # such). The job store's connection to the same file says when the file was replaced; this one follows.
        self._db = SqliteConnection(path, lambda conn: conn.executescript(_SCHEMA), shielded=True, says_replaced=False)

    @classmethod
    def in_folder(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / "jobs.sqlite3")

    # --- calls ------------------------------------------------------------------------------------------------------

    async def abandoned(self, fingerprint: str, window: float = REATTACH_SECONDS) -> tuple[list[str], int]:
        """The request_ids of calls with this fingerprint, started within `window`, that ended without their result
        reaching the caller (newest first; each one returned is marked taken, so it is joined once), and how many
        such calls are still running in live processes."""

        def find(conn: sqlite3.Connection) -> tuple[list[str], int]:
            rows = conn.execute(
                "SELECT call_id, request_id, holder, state FROM calls WHERE fingerprint = ? AND started >= ? "
                "AND state IN ('abandoned', 'running') ORDER BY started DESC",
                (fingerprint, time.time() - window),
            ).fetchall()
            found = [row for row in rows if row[1] is not None and (row[3] == "abandoned" or not _alive(row[2]))]
            for row in found:
                conn.execute("UPDATE calls SET state = 'taken' WHERE call_id = ?", (row[0],))
            running = sum(1 for row in rows if row[3] == "running" and _alive(row[2]))
            return [row[1] for row in found], running

        return await self._run(find)

    async def begin(self, call_id: str, fingerprint: str, holder: str, request_id: str | None) -> None:
        """Record a call as running (forgetting calls older than a day)."""
        now = time.time()

        def begin(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM calls WHERE started < ?", (now - 86400,))
            conn.execute(
                "INSERT INTO calls (call_id, fingerprint, request_id, holder, state, started) VALUES (?, ?, ?, ?, "
                "'running', ?)",
                (call_id, fingerprint, request_id, holder, now),
            )

        await self._run(begin)

    async def bind(self, call_id: str, request_id: str) -> None:
        """The call's job got its request_id."""
        await self._run(
            lambda conn: conn.execute("UPDATE calls SET request_id = ? WHERE call_id = ?", (request_id, call_id))
        )

    async def end(self, call_id: str, *, answered: bool) -> None:
        """The call ended: its result was sent (every call on the same job counts as answered), or it was not."""

        def end(conn: sqlite3.Connection) -> None:
            if not answered:
                conn.execute("UPDATE calls SET state = 'abandoned' WHERE call_id = ? AND state = 'running'", (call_id,))
                return
            row = conn.execute("SELECT request_id FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            conn.execute("UPDATE calls SET state = 'answered' WHERE call_id = ?", (call_id,))
            if row is not None and row[0] is not None:
                conn.execute(
                    "UPDATE calls SET state = 'answered' WHERE request_id = ? AND state = 'abandoned'", (row[0],)
                )

        await self._run(end)

    # --- spend ------------------------------------------------------------------------------------------------------

    async def reserve(self, owner: str | None, local_id: str, cap: SpendCap) -> Spent | None:
        """Count one paid submit for `owner` unless the window is full; None if counted, else what was spent."""
        if cap.jobs <= 0:
            return None

        def reserve(conn: sqlite3.Connection) -> Spent | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                spent = _spent(conn, owner or "", cap.window_seconds)
                if spent.count >= cap.jobs:
                    conn.execute("ROLLBACK")
                    return spent
                conn.execute(
                    "INSERT OR IGNORE INTO spend (local_id, owner, at) VALUES (?, ?, ?)",
                    (local_id, owner or "", time.time()),
                )
                conn.execute("DELETE FROM spend WHERE at < ?", (time.time() - 7 * 86400,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return None

        return await self._run(reserve)

    async def refund(self, local_id: str) -> None:
        """A submit Pixazo refused (nothing was billed) does not count."""
        await self._run(lambda conn: conn.execute("DELETE FROM spend WHERE local_id = ?", (local_id,)))

    async def spent(self, owner: str | None, cap: SpendCap) -> Spent:
        """Paid submits by `owner` in the current window."""
        return await self._run(lambda conn: _spent(conn, owner or "", cap.window_seconds))

    # --- tasks ------------------------------------------------------------------------------------------------------

    async def create_task(self, task: TaskRow) -> None:
        """Store a new task durably (forgetting expired ones); from then on `get_task` finds it."""

        def create(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM tasks WHERE ttl_ms IS NOT NULL AND created + ttl_ms / 1000.0 < ?", (time.time(),))
            conn.execute(
                f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 (constant)
                (task.task_id, task.owner or "", *astuple(task)[2:]),
            )

        await self._run(create)

    async def get_task(self, task_id: str) -> TaskRow | None:
        """The task, or None if there is none (an expired task is returned once more, marked by `expired`)."""
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?"  # noqa: S608 (constant)
        row = await self._run(lambda conn: conn.execute(sql, (task_id,)).fetchone())
        return _task(row) if row else None

    async def delete_task(self, task_id: str) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,)))

    async def end_task(self, task_id: str, status: str, message: str, outcome: str | None) -> TaskRow | None:
        """Move a working task to a terminal status (a task already terminal keeps its first end); the row after."""

        def end(conn: sqlite3.Connection) -> TaskRow | None:
            conn.execute(
                "UPDATE tasks SET status = ?, message = ?, outcome = COALESCE(?, outcome), updated = ? "
                "WHERE task_id = ? AND status = 'working'",
                (status, message, outcome, time.time(), task_id),
            )
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()  # noqa: S608
            return _task(row) if row else None

        return await self._run(end)

    # --- plumbing ---------------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._db.aclose()

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._db.run(work)


def _spent(conn: sqlite3.Connection, owner: str, window: float) -> Spent:
    row = conn.execute(
        "SELECT COUNT(*), MIN(at) FROM spend WHERE owner = ? AND at >= ?", (owner, time.time() - window)
    ).fetchone()
    return Spent(row[0], row[1] + window if row[1] is not None else None)


__all__ = [
    "DEFAULT_SPEND_CAP",
    "DEFAULT_SPEND_WINDOW_MINUTES",
    "REATTACH_SECONDS",
    "RUNNING_GRACE",
    "Ledger",
    "SpendCap",
    "Spent",
    "TaskRow",
    "fingerprint",
    "process_alive",
    "read_spent",
    "spend_summary",
]
