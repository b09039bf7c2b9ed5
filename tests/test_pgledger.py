"""The ledger on PostgreSQL (replicas): the spending guard holds across replicas, a call whose replica died can be
joined by the same call made again (once), a live replica's running call cannot, and tasks are stored like in
SQLite. Each "replica" is its own PostgresJobStore (own pool) on one database."""

from __future__ import annotations

import socket
import time
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from mmaudio_mcp.ledger import SpendCap, TaskRow
from mmaudio_mcp.models import GenerationParams, JobRecord, JobStatus, utc_now
from mmaudio_mcp.pgledger import PostgresLedger
from mmaudio_mcp.pgstore import PostgresJobStore
from tests.services import Postgres, start_postgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

DEAD = f"{socket.gethostname()}:999999:dead"  # no such pid: a replica killed on this machine
ELSEWHERE = "other-host:1234:live"  # a replica on another machine: alive while it holds a lease


pytestmark = pytest.mark.timeout(300)  # a fresh machine installs Debian's PostgreSQL first


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with start_postgres() as server:
        yield server


@pytest.fixture
async def replicas(postgres: Postgres) -> AsyncIterator[list[tuple[PostgresJobStore, PostgresLedger]]]:
    url = postgres.database(f"l_{uuid.uuid4().hex[:12]}")
    stores = [await PostgresJobStore.open(url) for _ in range(2)]
    yield [(store, PostgresLedger(store)) for store in stores]
    for store in stores:
        await store.aclose()


async def test_the_spending_guard_holds_across_replicas(
    replicas: list[tuple[PostgresJobStore, PostgresLedger]],
) -> None:
    """Ten submits race on two replicas against a cap of 3: exactly 3 are counted; a refund frees a place."""
    cap = SpendCap(jobs=3, window_minutes=60)
    refused: list[int] = []

    async def submit(n: int) -> None:
        _, ledger = replicas[n % 2]
        if await ledger.reserve("key", f"job-{n}", cap) is not None:
            refused.append(n)

    async with anyio.create_task_group() as tasks:
        for n in range(10):
            tasks.start_soon(submit, n)
    assert len(refused) == 7
    assert (await replicas[1][1].spent("key", cap)).count == 3
    counted = sorted(set(range(10)) - set(refused))
    await replicas[0][1].refund(f"job-{counted[0]}")
    assert await replicas[1][1].reserve("key", "job-new", cap) is None
    assert (await replicas[0][1].spent("other key", cap)).count == 0


async def test_a_call_cut_off_by_a_dead_replica_is_joined_once(
    replicas: list[tuple[PostgresJobStore, PostgresLedger]],
) -> None:
    """A call still 'running' on a replica that died is joinable by the same call on another replica (once);
    a call running on a replica elsewhere that holds a lease is alive, so it is not."""
    (store, first), (_, second) = replicas
    await first.begin("call-dead", "same-call", DEAD, None)
    await first.bind("call-dead", "mmaudio-v2-text-to-audio_dead")
    assert await second.abandoned("same-call") == (["mmaudio-v2-text-to-audio_dead"], 0)
    assert await second.abandoned("same-call") == ([], 0), "joined once"

    now = utc_now()
    rid = "mmaudio-v2-text-to-audio_live"
    await store.save(
        JobRecord(
            local_id="l",
            request_id=rid,
            status=JobStatus.PROCESSING,
            params=GenerationParams(prompt="x"),
            created_at=now,
            updated_at=now,
        )
    )
    assert await store.claim(rid, ELSEWHERE, 30)
    await first.begin("call-live", "other-call", ELSEWHERE, rid)
    assert await second.abandoned("other-call") == ([], 1)
    await first.end("call-live", answered=False)  # its caller went away: now it can be joined
    assert await second.abandoned("other-call") == ([rid], 0)


async def test_tasks_are_stored_and_end_once(replicas: list[tuple[PostgresJobStore, PostgresLedger]]) -> None:
    (_, first), (_, second) = replicas
    now = time.time()
    task = TaskRow("t1", None, "generate_audio", "mmaudio-v2-text-to-audio_t", "{}", now, now, 60_000)
    await first.create_task(task)
    assert await second.get_task("t1") == task
    ended = await second.end_task("t1", "completed", "done", '{"content": []}')
    assert ended is not None
    assert (ended.status, ended.outcome) == ("completed", '{"content": []}')
    again = await first.end_task("t1", "failed", "late", None)
    assert again is not None
    assert again.status == "completed", "a terminal task keeps its first end"
    await first.delete_task("t1")
    assert await second.get_task("t1") is None


async def test_a_version_1_database_gains_the_ledger_tables_and_keeps_its_jobs(postgres: Postgres) -> None:
    """Migrations by version: a database written before the ledger moved to PostgreSQL is brought to version 2."""
    import asyncpg  # pyright: ignore[reportMissingTypeStubs]

    url = postgres.database(f"m_{uuid.uuid4().hex[:12]}")
    old = await PostgresJobStore.open(url)
    now = utc_now()
    rid = "mmaudio-v2-text-to-audio_old"
    await old.save(
        JobRecord(
            local_id="old",
            request_id=rid,
            status=JobStatus.COMPLETED,
            params=GenerationParams(prompt="x"),
            created_at=now,
            updated_at=now,
        )
    )
    await old.aclose()
    conn = await asyncpg.connect(url)  # pyright: ignore[reportUnknownMemberType]
    await conn.execute("DROP TABLE mmaudio_calls, mmaudio_spend, mmaudio_tasks")
    await conn.execute("UPDATE mmaudio_meta SET value = '1' WHERE name = 'schema_version'")
    await conn.close()
    store = await PostgresJobStore.open(url)
    ledger = PostgresLedger(store)
    assert (await ledger.spent(None, SpendCap())).count == 0
    found = await store.get(rid)
    await store.aclose()
    assert found is not None
    assert found.status is JobStatus.COMPLETED
