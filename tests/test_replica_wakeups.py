"""Wake-ups between replicas on one PostgreSQL job store (two job services in this process, each with its own
connections, as two replicas have): a Pixazo callback that reaches the replica NOT polling the job makes the one
that polls it poll at once, instead of at its next fallback poll (about 28 s away here)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import SecretStr

from mmaudio_mcp.jobs import SERVER, open_job_service
from mmaudio_mcp.models import GenerationParams, JobStatus
from mmaudio_mcp.schedule import PollPolicy
from tests.services import Postgres, start_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractAsyncContextManager

    import httpx2

    from mmaudio_mcp.jobs import JobService
    from mmaudio_mcp.settings import Settings


pytestmark = pytest.mark.timeout(300)  # a fresh machine installs Debian's PostgreSQL first


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with start_postgres() as server:
        yield server


def replica(settings: Settings, transport: httpx2.ASGITransport, url: str) -> AbstractAsyncContextManager[JobService]:
    replica_settings = settings.model_copy(
        update={
            "transport": "streamable-http",
            "public_url": "http://127.0.0.1:9/unreachable",  # webhooks on; the sandbox's own callbacks go nowhere
            "database_url": SecretStr(url),
        }
    )
    # real time: with webhooks on, the fallback poll is ~28 s after the submit
    return open_job_service(replica_settings, http_transport=transport, policy=PollPolicy())


@pytest.fixture
def database(postgres: Postgres) -> str:
    return postgres.database(f"w_{uuid.uuid4().hex[:12]}")


async def test_a_callback_on_another_replica_makes_the_lease_holder_poll_now(
    settings: Settings, transport: httpx2.ASGITransport, database: str
) -> None:
    async with replica(settings, transport, database) as polling, replica(settings, transport, database) as other:
        job = await polling.generate(GenerationParams(prompt="rain", duration=2), wait_seconds=0)
        record = await polling._find(job.request_id, SERVER)  # pyright: ignore[reportPrivateUsage]
        assert record.webhook_token is not None
        result: list[JobStatus] = []

        async def wait() -> None:  # the waiter that makes `polling` hold the lease and poll
            result.append((await polling.check(job.request_id, wait_seconds=10)).status)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await anyio.sleep(1.0)  # the sandbox job (2% speed) is done; the holder sleeps until its fallback poll
            assert await other.on_webhook(record.webhook_token)
        assert result == [JobStatus.COMPLETED], "the holder polled when the callback reached the other replica"
