"""The MCP Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) on top of the job store.

A 2026-07-28 client that declares the extension on a `tools/call` of `generate_audio` (or of `check_status` with a
wait) gets a task handle as soon as the job is submitted and the task row is stored; it polls `tasks/get`, may send
`tasks/cancel`, and gets at the end exactly the CallToolResult a blocking call would have returned. Clients that do
not declare it get today's behaviour. Task rows live in the store (`Ledger`), so a task survives a restart: the first
`tasks/get` after one resumes the wait.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
from mcp import MCPError
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, RequestParams, TextContent
from mcp_types import CLIENT_CAPABILITIES_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from mmaudio_mcp.errors import MmaudioError
from mmaudio_mcp.ledger import TaskRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from anyio.abc import TaskGroup
    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
    from mcp.types import CallToolRequestParams

    from mmaudio_mcp.jobs import Caller, JobService
    from mmaudio_mcp.ledger import Ledger
    from mmaudio_mcp.models import AudioJob

logger = logging.getLogger(__name__)

TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
MODERN: Final = MODERN_PROTOCOL_VERSIONS[-1]
"""The protocol version tasks are offered on (the extension needs the 2026-07-28 per-request capabilities)."""
MISSING_CAPABILITY: Final = -32021
TASK_TTL_MS: Final = 24 * 3600 * 1000
"""How long a task is kept after it was created (the job itself stays in the store, by request_id, for good)."""
RETRY_SECONDS: Final = 5.0
"""After a failed poll or download that may pass (network, 5xx, 429), a task's worker tries again this much later."""
CHUNK_WAIT: Final = 60.0
"""A task's worker waits for its job this long per round, re-reading the task between rounds (cancel, expiry)."""


@dataclass
class TaskRequest:
    """Set while a tool runs for a request that may become a task; the tool fills `task` if it made one."""

    caller: Caller | None = None
    task: TaskRow | None = None


_pending: ContextVar[TaskRequest | None] = ContextVar("mmaudio_task_request", default=None)


def task_request() -> TaskRequest | None:
    """Inside a tool: the task request this call may answer with, if the client declared the extension."""
    return _pending.get()


def declares_tasks(meta: Mapping[str, Any] | None) -> bool:
    """Whether a request's `_meta` declares the Tasks extension among the client's capabilities."""
    capabilities: Any = (meta or {}).get(CLIENT_CAPABILITIES_META_KEY)
    if not isinstance(capabilities, dict):
        return False
    extensions: Any = cast("dict[str, Any]", capabilities).get("extensions")
    return isinstance(extensions, dict) and TASKS_EXTENSION in extensions


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskRunner:
    """Creates tasks, runs one worker per task in this process (it waits for the job and stores the final result),
    and answers for them. `finish(row, caller)` builds the task's final CallToolResult (the blocking call's)."""

    def __init__(
        self,
        jobs: JobService,
        ledger: Ledger,
        finish: Callable[[JobService, TaskRow, Caller], Awaitable[CallToolResult]],
        tasks: TaskGroup,
    ) -> None:
        self._jobs = jobs
        self._ledger = ledger
        self._finish = finish
        self._tasks = tasks
        self._running: set[str] = set()

    async def create(self, tool: str, job: AudioJob, caller: Caller, extra: dict[str, Any]) -> TaskRow:
        """Store the task (durably: a `tasks/get` resolves from now on) and start waiting for its job."""
        now = time.time()
        row = TaskRow(
            task_id=secrets.token_urlsafe(24),  # 192 bits: a bearer token nobody can guess
            owner=caller.owner,
            tool=tool,
            request_id=job.request_id,
            extra=json.dumps(extra),
            created=now,
            updated=now,
            ttl_ms=TASK_TTL_MS,
        )
        await self._ledger.create_task(row)
        self._start(row, caller)
        return row

    async def find(self, task_id: str, caller: Caller, verb: str) -> TaskRow:
        """The caller's task; another key's task is answered exactly like one that does not exist (-32602)."""
        row = await self._ledger.get_task(task_id[:200])
        if row is None or row.owner != caller.owner:
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to {verb} task: Task not found")
        if row.expired:
            await self._ledger.delete_task(row.task_id)
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to {verb} task: Task has expired")
        if row.status == "working":
            self._start(row, caller)  # after a restart (or in another process): resume the wait here
        return row

    async def describe(self, row: TaskRow, caller: Caller) -> dict[str, Any]:
        """The task as the spec's DetailedTask: live status words and a poll interval from the job's ETA."""
        task: dict[str, Any] = {
            "taskId": row.task_id,
            "status": row.status,
            "createdAt": _iso(row.created),
            "lastUpdatedAt": _iso(row.updated),
            "ttlMs": row.ttl_ms,
        }
        if row.status == "working":
            try:
                job, words = await self._jobs.peek(row.request_id, caller)
            except MmaudioError as exc:
                words, job = exc.message, None
            if job is not None and job.status.value == "COMPLETED":
                words = f"COMPLETED; saving the audio ({job.request_id})"
            task["statusMessage"] = words
            eta = job.eta_seconds if job is not None and job.eta_seconds is not None else 2.0
            task["pollIntervalMs"] = int(min(max(eta / 3, 1.0), 10.0) * 1000)
            task["lastUpdatedAt"] = _iso(max(row.updated, job.updated_at.timestamp() if job else row.updated))
            return task
        if row.message:
            task["statusMessage"] = row.message
        if row.status == "completed" and row.outcome:
            task["result"] = json.loads(row.outcome)
        elif row.status == "failed" and row.outcome:
            task["error"] = json.loads(row.outcome)
        return task

    async def cancel(self, row: TaskRow) -> None:
        """Pixazo cannot stop a job: the task ends as cancelled, saying the job may still complete and be billed, and
        the job stays retrievable (and is still saved when it completes)."""
        message = (
            f"Cancelled at your request. Pixazo cannot stop a job once submitted: job {row.request_id} may still "
            f'complete and be billed; its audio stays retrievable with check_status(request_id="{row.request_id}").'
        )
        await self._ledger.end_task(row.task_id, "cancelled", message, None)

    def _start(self, row: TaskRow, caller: Caller) -> None:
        if row.task_id in self._running:
            return
        self._running.add(row.task_id)
        self._tasks.start_soon(self._work, row, caller, name=f"task {row.task_id[:8]}")

    async def _work(self, row: TaskRow, caller: Caller) -> None:
        try:
            while True:
                current = await self._ledger.get_task(row.task_id)
                if current is None or current.status != "working" or current.expired:
                    return
                try:
                    job = await self._jobs.check(row.request_id, wait_seconds=CHUNK_WAIT, caller=caller)
                except MmaudioError as exc:
                    if not exc.retryable:
                        raise
                    logger.info("task %s: %s; trying again", row.task_id[:8], exc.message)
                    await anyio.sleep(RETRY_SECONDS)  # a task outlives a failed poll: it has a day, not one call
                    continue
                if job.status.is_terminal and not job.downloading:
                    break
            result = await self._final(current, caller)
            status, outcome = "completed", result.model_dump(mode="json", by_alias=True, exclude_none=True)
            message = "The tool call finished with an error." if result.is_error else "The audio is ready."
        except MmaudioError as exc:  # as the blocking call would have said it: a tool error, so a completed task
            status, message = "completed", "The tool call finished with an error."
            outcome = CallToolResult(content=[TextContent(type="text", text=exc.message)], is_error=True).model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        except Exception as exc:  # anything else is a JSON-RPC internal error: the task failed
            logger.exception("task %s failed", row.task_id[:8])
            status, message = "failed", f"Internal error: {type(exc).__name__}"
            outcome = {"code": INTERNAL_ERROR, "message": message}
        finally:
            self._running.discard(row.task_id)
        with anyio.CancelScope(shield=True):
            await self._ledger.end_task(row.task_id, status, message, json.dumps(outcome))

    async def _final(self, row: TaskRow, caller: Caller) -> CallToolResult:
        try:
            return await self._finish(self._jobs, row, caller)
        except ToolError as exc:
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)


async def listen_guard(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: a `subscriptions/listen` asking for task notifications from a client that did not declare the
    extension is refused with -32021, as the spec says. (A declaring client is acknowledged without task ids: task
    status notifications are not offered; it polls `tasks/get`.)"""
    if ctx.method == "subscriptions/listen" and ctx.params:
        params: Any = ctx.params
        notifications: Any = params.get("notifications")
        wanted = isinstance(notifications, dict) and bool(cast("dict[str, Any]", notifications).get("taskIds"))
        if wanted and not declares_tasks(params.get("_meta")):
            raise _missing_capability()
    return await call_next(ctx)


def _missing_capability() -> MCPError:
    return MCPError(
        code=MISSING_CAPABILITY,
        message="Missing required client capability",
        data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
    )


class TaskIdParams(RequestParams):
    task_id: str = Field(alias="taskId", max_length=200)


class UpdateTaskParams(TaskIdParams):
    input_responses: dict[str, Any] = Field(default_factory=dict[str, Any], alias="inputResponses")


class TasksExtension(Extension):
    """Answers `tools/call` with a task for clients that declare the extension on the request; serves
    `tasks/get`, `tasks/update` and `tasks/cancel`. `runner()` is the running server's TaskRunner (or None before
    the lifespan starts); `caller(ctx)` is who is asking (the same per-key binding as jobs)."""

    identifier = TASKS_EXTENSION

    def __init__(
        self,
        runner: Callable[[], TaskRunner | None],
        caller: Callable[[ServerRequestContext[Any, Any]], Awaitable[Caller]],
        tools: Callable[[CallToolRequestParams], bool],
    ) -> None:
        self._runner = runner
        self._caller = caller
        self._tools = tools

    def methods(self) -> Sequence[MethodBinding]:
        versions = frozenset(MODERN_PROTOCOL_VERSIONS)
        return (
            MethodBinding("tasks/get", TaskIdParams, self._get, versions),
            MethodBinding("tasks/update", UpdateTaskParams, self._update, versions),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel, versions),
        )

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        runner = self._runner()
        if (
            runner is None
            or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
            or not declares_tasks(ctx.meta)
            or not self._tools(params)
        ):
            return await call_next(ctx)
        pending = TaskRequest()
        token = _pending.set(pending)
        try:
            result = await call_next(ctx)
        finally:
            _pending.reset(token)
        if pending.task is None or pending.caller is None:
            return result  # refused before a job existed (bad arguments, the spending guard): the plain answer
        return {"resultType": "task", **await runner.describe(pending.task, pending.caller)}

    async def _ready(self, ctx: ServerRequestContext[Any, Any]) -> tuple[TaskRunner, Caller]:
        if not declares_tasks(ctx.meta):
            raise _missing_capability()
        runner = self._runner()
        if runner is None:
            raise MCPError(code=INTERNAL_ERROR, message="The server is not running.")
        try:
            return runner, await self._caller(ctx)
        except MmaudioError as exc:
            raise MCPError(code=INVALID_PARAMS, message=exc.message) from exc

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        runner, caller = await self._ready(ctx)
        return await runner.describe(await runner.find(params.task_id, caller, "retrieve"), caller)

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> dict[str, Any]:
        runner, caller = await self._ready(ctx)
        await runner.find(params.task_id, caller, "update")  # nothing is ever asked of the client: ignored
        return {}

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        runner, caller = await self._ready(ctx)
        await runner.cancel(await runner.find(params.task_id, caller, "cancel"))
        return {}


__all__ = [
    "MODERN",
    "MODERN_PROTOCOL_VERSIONS",
    "TASKS_EXTENSION",
    "TASK_TTL_MS",
    "TaskRequest",
    "TaskRunner",
    "TasksExtension",
    "declares_tasks",
    "listen_guard",
    "task_request",
]
