"""The task runner in process (no wire): a task past its ttlMs is gone (-32602, "expired"), and an internal error
ends a task as `failed` with the JSON-RPC error, both in the shapes of the extension's schema."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest
from mcp import MCPError

from mmaudio_mcp.jobs import SERVER, open_job_service
from mmaudio_mcp.ledger import TaskRow
from mmaudio_mcp.models import GenerationParams
from mmaudio_mcp.tasks import TaskRunner
from tests.conftest import POLICY
from tests.test_tasks import problems

if TYPE_CHECKING:
    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.jobs import Caller, JobService
    from mmaudio_mcp.settings import Settings


async def broken(jobs: JobService, row: TaskRow, caller: Caller) -> CallToolResult:
    raise RuntimeError("the result could not be built")


async def test_an_expired_task_is_not_found_and_an_internal_error_fails_the_task(
    settings: Settings, transport: httpx2.ASGITransport
) -> None:
    async with (
        open_job_service(settings, http_transport=transport, policy=POLICY) as jobs,
        anyio.create_task_group() as workers,
    ):
        ledger = jobs.ledger
        assert ledger is not None
        runner = TaskRunner(jobs, ledger, broken, workers)
        job = await jobs.generate(GenerationParams(prompt="a click", duration=2), wait_seconds=0)

        now = time.time()
        old = TaskRow("expired-task", None, "generate_audio", job.request_id, "{}", now - 10, now - 10, ttl_ms=1000)
        await ledger.create_task(old)
        with pytest.raises(MCPError) as refused:
            await runner.find("expired-task", SERVER, "retrieve")
        assert (refused.value.error.code, refused.value.error.message) == (
            -32602,
            "Failed to retrieve task: Task has expired",
        )
        assert await ledger.get_task("expired-task") is None  # the store let it go

        task = await runner.create("generate_audio", job, SERVER, {})
        with anyio.fail_after(30):
            while (row := await runner.find(task.task_id, SERVER, "retrieve")).status == "working":  # noqa: ASYNC110 (a client polls)
                await anyio.sleep(0.05)
        failed = await runner.describe(row, SERVER)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == -32603
        assert problems("GetTaskResult", {"resultType": "complete", **failed}) == []
        workers.cancel_scope.cancel()
