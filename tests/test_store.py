"""The SQLite job store: durable across reopening, WAL mode, and honest about rows it cannot finish."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from mmaudio_mcp.models import GenerationParams, JobRecord, JobStatus
from mmaudio_mcp.store import SqliteJobStore

if TYPE_CHECKING:
    from pathlib import Path

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(n: int, status: JobStatus = JobStatus.QUEUED, *, request_id: str | None = "auto") -> JobRecord:
    return JobRecord(
        local_id=f"local-{n}",
        request_id=f"mmaudio-v2-text-to-audio_{n:08d}" if request_id == "auto" else request_id,
        status=status,
        params=GenerationParams(prompt=f"sound {n}"),
        created_at=T0 + timedelta(seconds=n),
        updated_at=T0 + timedelta(seconds=n),
    )


async def test_rows_survive_closing_and_reopening(tmp_path: Path) -> None:
    """What was saved is there after a restart, found by request_id."""
    store = await SqliteJobStore.open(tmp_path)
    await store.save(record(1))
    await store.aclose()
    reopened = await SqliteJobStore.open(tmp_path)
    found = await reopened.get("mmaudio-v2-text-to-audio_00000001")
    await reopened.aclose()
    assert found == record(1)


async def test_saving_again_updates_the_row_in_place(tmp_path: Path) -> None:
    """A row is keyed by its local id: the request_id and status can arrive later."""
    store = await SqliteJobStore.open(tmp_path)
    pending = record(2, JobStatus.SUBMITTING, request_id=None)
    await store.save(pending)
    await store.save(
        pending.model_copy(update={"request_id": "mmaudio-v2-text-to-audio_x", "status": JobStatus.QUEUED})
    )
    assert len(await store.recent()) == 1
    assert (await store.get("mmaudio-v2-text-to-audio_x")) is not None
    await store.aclose()


async def test_recent_lists_newest_first_and_unfinished_includes_submitting_rows(tmp_path: Path) -> None:
    """Unfinished jobs (including a submit that never got an answer) can be found for recovery."""
    store = await SqliteJobStore.open(tmp_path)
    await store.save(record(1, JobStatus.COMPLETED))
    await store.save(record(2, JobStatus.PROCESSING))
    await store.save(record(3, JobStatus.SUBMITTING, request_id=None))
    await store.save(record(4, JobStatus.FAILED))
    assert [r.local_id for r in await store.recent(3)] == ["local-4", "local-3", "local-2"]
    assert [r.local_id for r in await store.unfinished()] == ["local-2", "local-3"]
    await store.aclose()


async def test_the_database_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    """WAL lets readers and the writer work at once; user_version lets later releases migrate."""
    store = await SqliteJobStore.open(tmp_path)
    await store.aclose()
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    """Opening a store written by a newer schema fails clearly instead of corrupting it."""
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(RuntimeError, match="newer mmaudio-mcp"):
        await SqliteJobStore.open(tmp_path)


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    """Using the store after closing it is a clear error, not a crash in a worker thread."""
    store = await SqliteJobStore.open(tmp_path)
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("x")


async def test_owner_hashes_are_salted_stable_and_never_the_key(tmp_path: Path) -> None:
    """A key maps to the same hash across restarts of one installation, differs between installations, and is
    never stored itself."""
    first = await SqliteJobStore.open(tmp_path / "a")
    owner = await first.owner_of("secret-key-1")
    assert owner == await first.owner_of("secret-key-1")
    assert owner != await first.owner_of("secret-key-2")
    await first.aclose()
    reopened = await SqliteJobStore.open(tmp_path / "a")
    assert await reopened.owner_of("secret-key-1") == owner
    await reopened.aclose()
    elsewhere = await SqliteJobStore.open(tmp_path / "b")
    assert await elsewhere.owner_of("secret-key-1") != owner
    await elsewhere.aclose()
    assert b"secret-key-1" not in (tmp_path / "a" / "jobs.sqlite3").read_bytes()
