"""The SQLite job store: durable across reopening, WAL mode, shared safely by processes (merged writes, leases,
fencing), and clear about local faults."""

from __future__ import annotations

import shutil
import sqlite3
from typing import TYPE_CHECKING

import anyio
import pytest

from mmaudio_mcp.errors import StoreError
from mmaudio_mcp.models import JobStatus
from mmaudio_mcp.settings import Settings
from mmaudio_mcp.store import DEFAULT_LEASE_SECONDS, SCHEMA_VERSION, LeaseLostError, Leases, SqliteJobStore
from tests.records import T0, audio, record

if TYPE_CHECKING:
    from pathlib import Path


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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
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


# --- many processes on one store: merged writes, leases, fencing ---------------------------------------------------


async def test_simultaneous_variants_from_stale_records_are_all_kept(tmp_path: Path) -> None:
    """Three writers (each its own connection, as three processes have) add a variant to the same stale record at
    once: the row keeps all three, and the downloaded file stays."""
    first = await SqliteJobStore.open(tmp_path)
    done = record(1, JobStatus.COMPLETED).model_copy(update={"file": audio("a.wav")})
    await first.save(done)
    stale = record(1, JobStatus.COMPLETED)  # read before the file was recorded
    stores = [first, *[await SqliteJobStore.open(tmp_path) for _ in range(2)]]
    async with anyio.create_task_group() as tasks:
        for store, name in zip(stores, ("a.ogg", "a.flac", "a-normalized.wav"), strict=True):
            tasks.start_soon(store.save, stale.model_copy(update={"variants": {name: audio(name)}}))
    row = await first.get("mmaudio-v2-text-to-audio_00000001")
    for store in stores:
        await store.aclose()
    assert row is not None
    assert sorted(row.variants) == ["a-normalized.wav", "a.flac", "a.ogg"]
    assert row.file == audio("a.wav"), "a stale save must never clear the file"


async def test_a_stale_save_never_moves_a_job_backwards(tmp_path: Path) -> None:
    """A poll answer that arrives late (PROCESSING, no media URL) cannot undo a finished job or its details."""
    store = await SqliteJobStore.open(tmp_path)
    finished = record(1, JobStatus.COMPLETED).model_copy(
        update={"media_url": "https://cdn.example/a.wav", "completed_at": T0, "finished_at": T0, "file": audio("a.wav")}
    )
    await store.save(finished)
    stored = await store.save(record(1, JobStatus.PROCESSING))
    assert stored == await store.get("mmaudio-v2-text-to-audio_00000001")
    assert stored.status is JobStatus.COMPLETED
    assert (stored.media_url, stored.completed_at, stored.file) == ("https://cdn.example/a.wav", T0, audio("a.wav"))
    assert stored.finished_at == T0, "a value one process recorded is not erased by another's stale copy"
    await store.save(record(2, JobStatus.PROCESSING))
    assert (await store.save(record(2, JobStatus.QUEUED))).status is JobStatus.PROCESSING
    await store.aclose()


async def test_a_job_adopted_twice_under_two_local_ids_stays_one_row(tmp_path: Path) -> None:
    """Two processes adopting the same request_id at once (each with its own local id) merge into one row."""
    store = await SqliteJobStore.open(tmp_path)
    await store.save(record(1))
    await store.save(record(1).model_copy(update={"local_id": "other-process", "status": JobStatus.PROCESSING}))
    rows = await store.recent()
    await store.aclose()
    assert [(row.local_id, row.status) for row in rows] == [("local-1", JobStatus.PROCESSING)]


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(tmp_path: Path) -> None:
    """claim is exclusive; the holder can renew it; after expiry (a dead holder) another takes it over."""
    store = await SqliteJobStore.open(tmp_path)
    await store.save(record(1))
    rid = "mmaudio-v2-text-to-audio_00000001"
    assert await store.claim(rid, "a", 0.3)
    assert not await store.claim(rid, "b", 10)
    assert await store.claim(rid, "a", 0.3), "the holder may claim again (it extends)"
    assert await store.renew("a", 0.3) == {rid}
    await anyio.sleep(0.4)
    assert await store.claim(rid, "b", 10), "an expired lease is taken over"
    assert await store.renew("a", 10) == set()
    await store.release(rid, "a")  # not a's any more: nothing happens
    assert not await store.claim(rid, "a", 10)
    await store.release(rid, "b")
    assert await store.claim(rid, "a", 10)
    await store.aclose()


async def test_a_fenced_write_from_a_process_that_lost_its_lease_changes_nothing(tmp_path: Path) -> None:
    """After a takeover, the old holder's write is refused and the row is untouched."""
    store = await SqliteJobStore.open(tmp_path)
    await store.save(record(1))
    rid = "mmaudio-v2-text-to-audio_00000001"
    assert await store.claim(rid, "new-holder", 10)
    with pytest.raises(LeaseLostError):
        await store.save(record(1, JobStatus.FAILED), fence="old-holder")
    row = await store.get(rid)
    assert row is not None
    assert row.status is JobStatus.QUEUED
    assert (await store.save(record(1, JobStatus.PROCESSING), fence="new-holder")).status is JobStatus.PROCESSING
    await store.aclose()


async def test_leases_in_one_process_are_shared_and_renewed_in_the_background(tmp_path: Path) -> None:
    """Two users in one process share the lease; it is renewed while held and given back after the last one."""
    store = await SqliteJobStore.open(tmp_path)
    await store.save(record(1))
    rid = "mmaudio-v2-text-to-audio_00000001"
    async with Leases(store, seconds=0.6, holder="me") as leases:
        assert await leases.acquire(rid)
        assert await leases.acquire(rid)
        await anyio.sleep(1.0)  # past the lease: only renewal keeps it
        assert not await store.claim(rid, "other", 10)
        await leases.release(rid)
        assert not await store.claim(rid, "other", 10), "one user still holds it"
        await leases.release(rid)
        assert await store.claim(rid, "other", 10)
    await store.aclose()


async def test_a_version_2_database_is_migrated_in_place(tmp_path: Path) -> None:
    """A store written by the previous release gains the lease columns and keeps its rows."""
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    conn.executescript(
        "CREATE TABLE jobs (local_id TEXT PRIMARY KEY, request_id TEXT UNIQUE, status TEXT NOT NULL, "
        "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, record TEXT NOT NULL);"
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL); PRAGMA user_version=2;"
    )
    old = record(1)
    conn.execute(
        "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
        (old.local_id, old.request_id, old.status.value, "t", "t", old.model_dump_json()),
    )
    conn.commit()
    conn.close()
    store = await SqliteJobStore.open(tmp_path)
    assert await store.get("mmaudio-v2-text-to-audio_00000001") == old
    assert await store.claim("mmaudio-v2-text-to-audio_00000001", "me", 10)
    assert (await store.lease("mmaudio-v2-text-to-audio_00000001"))[0] == "me"
    await store.aclose()


# --- local faults, named -------------------------------------------------------------------------------------------


async def test_a_corrupted_database_is_named_with_its_path_and_what_to_do(tmp_path: Path) -> None:
    """Garbage in jobs.sqlite3: the error names the file, says to move it aside, and how jobs come back."""
    (tmp_path / "jobs.sqlite3").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError) as caught:
        await SqliteJobStore.open(tmp_path)
    message = caught.value.message
    assert str(tmp_path / "jobs.sqlite3") in message
    assert "Move it aside" in message
    assert "check_status(request_id=" in message


async def test_an_unwritable_state_folder_is_named(tmp_path: Path) -> None:
    """A state folder that cannot be created says so, with the variable that moves it."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StoreError, match="MMAUDIO_STATE_DIR") as caught:
        await SqliteJobStore.open(blocker / "state")
    assert str(blocker / "state" / "jobs.sqlite3") in caught.value.message


async def test_a_state_folder_deleted_while_running_is_recreated_not_written_into_the_void(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After the folder is deleted, the next write lands in a new database a restart finds, and the log says so."""
    state = tmp_path / "state"
    store = await SqliteJobStore.open(state)
    await store.save(record(1))
    shutil.rmtree(state)
    await store.save(record(2))
    await store.aclose()
    assert "deleted or replaced" in caplog.text
    reopened = await SqliteJobStore.open(state)
    assert [row.local_id for row in await reopened.recent()] == ["local-2"]
    await reopened.aclose()


def test_the_lease_length_is_clamped_to_half_a_second_to_ten_minutes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MMAUDIO_LEASE_SECONDS (tests shorten it) is kept within 0.5-600 s; a value that is not a number keeps the
    20 s default and is named in a warning."""
    monkeypatch.setenv("MMAUDIO_LEASE_SECONDS", "0.01")
    assert Settings().lease_seconds == 0.5
    monkeypatch.setenv("MMAUDIO_LEASE_SECONDS", "9999")
    assert Settings().lease_seconds == 600
    monkeypatch.setenv("MMAUDIO_LEASE_SECONDS", "soon")
    with caplog.at_level("WARNING"):
        assert Settings().lease_seconds == DEFAULT_LEASE_SECONDS == 20
    assert "ignoring MMAUDIO_LEASE_SECONDS='soon': not a number of seconds" in caplog.text
