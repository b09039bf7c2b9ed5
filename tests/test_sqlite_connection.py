"""The one SQLite connection plumbing that the job store and the ledger share (mmaudio_mcp.sqlite_connection)."""

from __future__ import annotations

import shutil
from functools import partial
from typing import TYPE_CHECKING

import anyio
import pytest

from mmaudio_mcp.errors import StoreError
from mmaudio_mcp.ledger import Ledger, SpendCap, read_spent
from mmaudio_mcp.sqlite_connection import SqliteConnection
from mmaudio_mcp.store import SqliteJobStore

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

CAP = SpendCap(jobs=5)


async def test_the_ledger_follows_a_state_folder_deleted_while_running_into_the_new_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After the state folder is deleted, the ledger's next paid submit is counted in the new database that a
    restart reads (not in the deleted file), and the job store, on the same file, is the one that logs it."""
    state = tmp_path / "state"
    store, ledger = await SqliteJobStore.open(state), Ledger.in_folder(state)
    assert await ledger.reserve(None, "local-1", CAP) is None
    shutil.rmtree(state)
    await store.recent()
    assert await ledger.reserve(None, "local-2", CAP) is None
    await ledger.aclose()
    await store.aclose()
    assert (await read_spent(state, CAP)).count == 1
    assert caplog.text.count("deleted or replaced") == 1


async def test_work_runs_one_unit_at_a_time_and_a_closed_connection_refuses_more(tmp_path: Path) -> None:
    """Concurrent callers never share the connection at once; after aclose, work raises instead of reopening."""
    db = SqliteConnection(tmp_path / "db.sqlite3", lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
    inside: list[int] = []

    def add(conn: sqlite3.Connection, n: int) -> None:
        inside.append(n)
        assert len(inside) == 1, "two units of work ran at once"
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        inside.remove(n)

    async with anyio.create_task_group() as tasks:
        for n in range(20):
            tasks.start_soon(db.run, partial(add, n=n))
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 20
    await db.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await db.run(lambda conn: conn.execute("SELECT 1"))


async def test_shielded_work_is_finished_even_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    """A shielded unit (the ledger's) is written whole although the call that asked for it was cancelled."""
    db = SqliteConnection(tmp_path / "db.sqlite3", lambda conn: conn.execute("CREATE TABLE t (n)"), shielded=True)
    started = anyio.Event()

    def slow_insert(conn: sqlite3.Connection) -> None:
        anyio.from_thread.run_sync(started.set)
        conn.execute("INSERT INTO t VALUES (1)")

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(db.run, slow_insert)
            await started.wait()
            scope.cancel()
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 1
    await db.aclose()


async def test_a_folder_that_cannot_be_made_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    """Opening fails as the job store's faults do: a StoreError with the path and the variable that moves it."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    db = SqliteConnection(blocker / "state" / "jobs.sqlite3", lambda conn: None)
    with pytest.raises(StoreError, match="MMAUDIO_STATE_DIR"):
        await db.run(lambda conn: conn.execute("SELECT 1"))
