"""The job store contract (docs/store-contract.md), run against both backends: SQLite on a local folder and
PostgreSQL (Debian's, started for the session; skipped with the reason where it cannot be installed).

Each test opens several handles on one store, as several processes (or replicas) do: each handle has its own
connection(s)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

import anyio
import pytest

from mmaudio_mcp.errors import StoreError
from mmaudio_mcp.models import JobRecord, JobStatus
from mmaudio_mcp.pgstore import PostgresJobStore, redacted
from mmaudio_mcp.store import LeaseLostError, Leases, SqliteJobStore
from tests.records import audio, record
from tests.services import Postgres, start_postgres

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

RID = "mmaudio-v2-text-to-audio_00000001"


class Store(Protocol):
    async def save(self, record: JobRecord, *, fence: str | None = None) -> JobRecord: ...
    async def get(self, request_id: str) -> JobRecord | None: ...
    async def recent(self, limit: int = 20) -> list[JobRecord]: ...
    async def unfinished(self) -> list[JobRecord]: ...
    async def claim(self, request_id: str, holder: str, seconds: float) -> bool: ...
    async def renew(self, holder: str, seconds: float) -> set[str]: ...
    async def release(self, request_id: str, holder: str) -> None: ...
    async def lease(self, request_id: str) -> tuple[str | None, float | None, int]: ...
    async def owner_of(self, api_key: str) -> str: ...
    async def aclose(self) -> None: ...


pytestmark = pytest.mark.timeout(300)  # a fresh machine installs Debian's PostgreSQL first


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with start_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Awaitable[Store]]:
    """Open one more handle on this test's store (a new process's view of it)."""
    if request.param == "sqlite":

        async def sqlite() -> Store:
            return await SqliteJobStore.open(tmp_path)

        return sqlite
    server: Postgres = request.getfixturevalue("postgres")
    url = server.database(f"t_{uuid.uuid4().hex[:12]}")

    async def postgresql() -> Store:
        return await PostgresJobStore.open(url)

    return postgresql


async def test_rows_survive_reopening_and_update_in_place(open_store: Callable[[], Awaitable[Store]]) -> None:
    """Rule 1: the row exists before the submit (no request_id yet), is found by request_id once it has one, and
    another handle (a restarted process) reads it."""
    store = await open_store()
    pending = record(2, JobStatus.SUBMITTING, request_id=None)
    await store.save(pending)
    await store.save(
        pending.model_copy(update={"request_id": "mmaudio-v2-text-to-audio_x", "status": JobStatus.QUEUED})
    )
    await store.aclose()
    other = await open_store()
    rows = await other.recent()
    found = await other.get("mmaudio-v2-text-to-audio_x")
    await other.aclose()
    assert [row.local_id for row in rows] == ["local-2"]
    assert found is not None
    assert found.status is JobStatus.QUEUED
    assert found.params == pending.params


async def test_recent_is_newest_first_and_unfinished_includes_submitting(
    open_store: Callable[[], Awaitable[Store]],
) -> None:
    store = await open_store()
    await store.save(record(1, JobStatus.COMPLETED))
    await store.save(record(2, JobStatus.PROCESSING))
    await store.save(record(3, JobStatus.SUBMITTING, request_id=None))
    await store.save(record(4, JobStatus.FAILED))
    assert [r.local_id for r in await store.recent(3)] == ["local-4", "local-3", "local-2"]
    assert [r.local_id for r in await store.unfinished()] == ["local-2", "local-3"]
    await store.aclose()


async def test_simultaneous_stale_writers_merge_field_by_field(open_store: Callable[[], Awaitable[Store]]) -> None:
    """Rule 2: three handles add a variant to the same stale record at once; all three are kept, the file stays,
    and a late PROCESSING never undoes COMPLETED."""
    stores = [await open_store() for _ in range(3)]
    await stores[0].save(record(1, JobStatus.COMPLETED).model_copy(update={"file": audio("a.wav")}))
    stale = record(1, JobStatus.PROCESSING)
    async with anyio.create_task_group() as tasks:
        for store, name in zip(stores, ("a.ogg", "a.flac", "a-normalized.wav"), strict=True):
            tasks.start_soon(store.save, stale.model_copy(update={"variants": {name: audio(name)}}))
    row = await stores[1].get(RID)
    _, _, version = await stores[2].lease(RID)
    for store in stores:
        await store.aclose()
    assert row is not None
    assert sorted(row.variants) == ["a-normalized.wav", "a.flac", "a.ogg"]
    assert row.file == audio("a.wav")
    assert row.status is JobStatus.COMPLETED
    assert version == 4, "each write adds 1 to the row's version"


async def test_two_new_rows_for_one_request_id_become_one(open_store: Callable[[], Awaitable[Store]]) -> None:
    """Two processes adopting the same request_id at once, each under its own local id, end with one row."""
    first, second = await open_store(), await open_store()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first.save, record(1))
        tasks.start_soon(
            second.save, record(1).model_copy(update={"local_id": "other", "status": JobStatus.PROCESSING})
        )
    rows = await first.recent()
    await first.aclose()
    await second.aclose()
    assert [row.status for row in rows] == [JobStatus.PROCESSING]


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(
    open_store: Callable[[], Awaitable[Store]],
) -> None:
    """Rule 3, across handles: exclusive claim, renew, takeover after expiry, release."""
    a, b = await open_store(), await open_store()
    await a.save(record(1))
    assert await a.claim(RID, "a", 0.3)
    assert not await b.claim(RID, "b", 10)
    assert await a.claim(RID, "a", 0.3), "the holder may claim again (it extends)"
    assert await a.renew("a", 0.3) == {RID}
    await anyio.sleep(0.4)
    assert await b.claim(RID, "b", 10), "an expired lease is taken over"
    assert await a.renew("a", 10) == set()
    await a.release(RID, "a")  # not a's any more: nothing happens
    assert not await a.claim(RID, "a", 10)
    await b.release(RID, "b")
    assert await a.claim(RID, "a", 10)
    assert (await b.lease(RID))[0] == "a"
    await a.aclose()
    await b.aclose()


async def test_many_claimers_race_and_exactly_one_wins(open_store: Callable[[], Awaitable[Store]]) -> None:
    """Ten handles claim 20 jobs at once: every job has exactly one holder."""
    stores = [await open_store() for _ in range(5)]
    for n in range(20):
        await stores[0].save(record(n))
    won: dict[str, list[str]] = {}

    async def claim(store: Store, holder: str, rid: str) -> None:
        if await store.claim(rid, holder, 10):
            won.setdefault(rid, []).append(holder)

    async with anyio.create_task_group() as tasks:
        for n in range(20):
            for i, store in enumerate(stores):
                tasks.start_soon(claim, store, f"h{i}", f"mmaudio-v2-text-to-audio_{n:08d}")
    for store in stores:
        await store.aclose()
    assert sorted(won) == [f"mmaudio-v2-text-to-audio_{n:08d}" for n in range(20)]
    assert all(len(holders) == 1 for holders in won.values()), won


async def test_a_fenced_write_from_a_lost_lease_changes_nothing(open_store: Callable[[], Awaitable[Store]]) -> None:
    """Rule 4: after a takeover the old holder's write is refused and the row is untouched."""
    store = await open_store()
    await store.save(record(1))
    assert await store.claim(RID, "new-holder", 10)
    with pytest.raises(LeaseLostError):
        await store.save(record(1, JobStatus.FAILED), fence="old-holder")
    row = await store.get(RID)
    assert row is not None
    assert row.status is JobStatus.QUEUED
    assert (await store.save(record(1, JobStatus.PROCESSING), fence="new-holder")).status is JobStatus.PROCESSING
    await store.aclose()


async def test_leases_are_renewed_in_the_background(open_store: Callable[[], Awaitable[Store]]) -> None:
    """`Leases` over either backend: held past its length only by renewal, given back after the last user."""
    store, other = await open_store(), await open_store()
    await store.save(record(1))
    async with Leases(store, seconds=0.6, holder="me") as leases:  # pyright: ignore[reportArgumentType]
        assert await leases.acquire(RID)
        await anyio.sleep(1.0)
        assert not await other.claim(RID, "other", 10)
        await leases.release(RID)
        assert await other.claim(RID, "other", 10)
    await store.aclose()
    await other.aclose()


async def test_owner_hashes_are_salted_stable_and_never_the_key(open_store: Callable[[], Awaitable[Store]]) -> None:
    first = await open_store()
    owner = await first.owner_of("secret-key-1")
    assert owner != await first.owner_of("secret-key-2")
    await first.aclose()
    second = await open_store()
    assert await second.owner_of("secret-key-1") == owner, "every handle (replica) uses the same salt"
    await second.aclose()


async def test_a_closed_store_refuses_work(open_store: Callable[[], Awaitable[Store]]) -> None:
    store = await open_store()
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("x")


# --- PostgreSQL only ------------------------------------------------------------------------------------------------


async def test_a_write_on_one_replica_wakes_listeners_on_another(postgres: Postgres) -> None:
    """Rule 5 in PostgreSQL: the committed write reaches another process's LISTEN at once (the callback fires well
    before a follower's next re-read would)."""
    url = postgres.database(f"t_{uuid.uuid4().hex[:12]}")
    writer, follower = await PostgresJobStore.open(url), await PostgresJobStore.open(url)
    woke, both = anyio.Event(), anyio.Event()
    heard: list[str] = []

    def changed(request_id: str) -> None:
        heard.append(request_id)
        woke.set()
        if len(heard) == 2:
            both.set()

    await follower.listen(changed)
    await writer.save(record(1, JobStatus.COMPLETED))
    with anyio.fail_after(5):
        await woke.wait()
    await writer.save(record(2, JobStatus.SUBMITTING, request_id=None))  # no request_id yet: nothing to wake
    await writer.save(record(3))
    with anyio.fail_after(5):
        await both.wait()
    await writer.aclose()
    await follower.aclose()
    assert heard == [RID, "mmaudio-v2-text-to-audio_00000003"]


async def test_the_schema_is_versioned_and_a_newer_one_refused(postgres: Postgres) -> None:
    """Migrations run once by version (two replicas opening together both succeed); a newer schema is refused."""
    import asyncpg  # pyright: ignore[reportMissingTypeStubs]

    url = postgres.database(f"t_{uuid.uuid4().hex[:12]}")
    together = [PostgresJobStore(url) for _ in range(3)]
    async with anyio.create_task_group() as tasks:
        for store in together:
            tasks.start_soon(store.recent)
    for store in together:
        await store.aclose()
    conn = await asyncpg.connect(url)  # pyright: ignore[reportUnknownMemberType]
    assert await conn.fetchval("SELECT value FROM mmaudio_meta WHERE name = 'schema_version'") == "2"
    await conn.execute("UPDATE mmaudio_meta SET value = '99' WHERE name = 'schema_version'")
    await conn.close()
    with pytest.raises(RuntimeError, match="newer mmaudio-mcp"):
        await PostgresJobStore.open(url)


async def test_an_unreachable_database_is_named_without_its_password(postgres: Postgres) -> None:
    """A wrong URL gives a StoreError naming the database and what to check, never the password."""
    url = f"postgresql://postgres:hunter2@/nowhere?host={postgres.base}/missing"
    with pytest.raises(StoreError) as caught:
        await PostgresJobStore.open(url)
    assert "hunter2" not in caught.value.message
    assert "MMAUDIO_DATABASE_URL" in caught.value.message
    assert redacted("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"


async def test_a_dropped_listen_connection_comes_back(postgres: Postgres) -> None:
    """A database restart or failover drops the LISTEN connection: it is opened again in the background, and
    wake-ups resume (until then followers see changes by re-reading)."""
    import asyncpg  # pyright: ignore[reportMissingTypeStubs]

    url = postgres.database(f"t_{uuid.uuid4().hex[:12]}")
    writer, follower = await PostgresJobStore.open(url), await PostgresJobStore.open(url)
    heard = anyio.Event()
    await follower.listen(lambda _: heard.set())
    admin = await asyncpg.connect(url)  # pyright: ignore[reportUnknownMemberType]
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
        "AND datname = current_database()"
    )
    await admin.close()
    assert killed == 1
    with anyio.fail_after(15):
        n = 0
        while not heard.is_set():  # a notification sent while it is down is lost: keep writing until one lands
            n += 1
            await writer.save(record(n))
            with anyio.move_on_after(0.2):
                await heard.wait()
    await writer.aclose()
    await follower.aclose()
