"""The MCP Tasks extension as a 2026-07-28 client that declares it drives it: raw JSON-RPC over stdio and streamable
HTTP to real server processes, every message checked against the extension's published schema.json (vendored in
tests/data/ext-tasks) and completed results against the 2026-07-28 core schema."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import jsonschema
import pytest

from mmaudio_mcp.sandbox import SANDBOX_API_KEY, Fault, FaultKind, SandboxConfig, create_sandbox
from mmaudio_mcp.transport import serve_on_loopback
from tests.processes import RawSession, free_port, server_env, until_healthy
from tests.test_schema_versions import check as core_check

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from mmaudio_mcp.sandbox import Sandbox

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODERN = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
SCHEMA = Path(__file__).parent / "data" / "ext-tasks" / "schema.json"
OTHER_KEY = "another-clients-own-key"
REQUESTS = {"tasks/get": "GetTaskRequest", "tasks/cancel": "CancelTaskRequest", "tasks/update": "UpdateTaskRequest"}
RESULTS = {"tasks/get": "GetTaskResult", "tasks/cancel": "CancelTaskResult", "tasks/update": "UpdateTaskResult"}


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


def problems(definition: str, instance: Any) -> list[str]:
    defs = schema()["$defs"]
    root = {"$schema": schema()["$schema"], "$ref": f"#/$defs/{definition}", "$defs": defs}
    validator: Any = jsonschema.Draft202012Validator(root)
    return [f"{definition}: {error.message[:300]}" for error in validator.iter_errors(instance)]


class Wire:
    """One client: sends requests with the 2026-07-28 `_meta` (declaring the Tasks extension or not) and checks
    every request and answer against the schemas; `problems` collects what did not match."""

    def __init__(self, *, declare: bool = True) -> None:
        self.declare = declare
        self.problems: list[str] = []
        self._id = 0

    def meta(self) -> dict[str, Any]:
        extensions: dict[str, Any] = {TASKS: {}} if self.declare else {}
        return {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"extensions": extensions},
            "io.modelcontextprotocol/clientInfo": {"name": "tasks-test", "version": "1"},
        }

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        message = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": {**params, "_meta": self.meta()}}
        if method in REQUESTS:
            self.problems += problems(REQUESTS[method], message)
        answer = await self.send(message)
        self.check(method, answer)
        return answer

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, method: str, answer: dict[str, Any]) -> None:
        if "error" in answer:
            self.problems += problems("Error", answer["error"])
            return
        result = answer["result"]
        if method in RESULTS:
            self.problems += problems(RESULTS[method], result)
            if result.get("status") == "completed":
                self.problems += core_check(MODERN, "CallToolResult", result["result"])
        elif result.get("resultType") == "task":
            self.problems += problems("CreateTaskResult", result)
        elif method == "tools/call":
            self.problems += core_check(MODERN, "CallToolResult", result)
        elif method == "server/discover":
            self.problems += core_check(MODERN, "DiscoverResult", result)

    async def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/get", {"taskId": task_id})

    async def until_done(self, task_id: str) -> dict[str, Any]:
        """Poll as the spec asks (at pollIntervalMs; capped for a fast sandbox) until a terminal status."""
        while True:
            answer = await self.get(task_id)
            task = answer["result"]
            if task["status"] != "working":
                return task
            assert 1000 <= task["pollIntervalMs"] <= 10000
            await anyio.sleep(0.2)


class StdioWire(Wire):
    def __init__(self, session: RawSession, *, declare: bool = True) -> None:
        super().__init__(declare=declare)
        self.session = session

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.session.process.stdin is not None
        await self.session.process.stdin.send((json.dumps(message) + "\n").encode())
        answer, _ = await self.session.until_response(message["id"])
        return answer


class HttpWire(Wire):
    def __init__(self, http: httpx2.AsyncClient, url: str, *, key: str | None = None, declare: bool = True) -> None:
        super().__init__(declare=declare)
        self.http, self.url, self.key = http, url, key

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        params = message["params"]
        name = params.get("taskId") or params.get("name")
        headers = (
            {
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": MODERN,
                "Mcp-Method": message["method"],
            }
            | ({"Mcp-Name": name} if name else {})
            | ({"X-Pixazo-Api-Key": self.key} if self.key else {})
        )
        reply = await self.http.post(self.url, json=message, headers=headers, timeout=60)
        if reply.headers.get("content-type", "").startswith("text/event-stream"):
            for line in reply.text.splitlines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if data.get("id") == message["id"]:
                        return data
            raise AssertionError(reply.text[:500])
        return reply.json()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, Sandbox]]:
    sandbox = create_sandbox(SandboxConfig(speed=0.05, extra_api_keys=(OTHER_KEY,)))
    async with serve_on_loopback(sandbox.app) as url:
        yield url, sandbox


@asynccontextmanager
async def stdio_server(tmp_path: Path, gateway_url: str) -> AsyncGenerator[RawSession]:
    env = server_env(tmp_path, PIXAZO_GATEWAY_URL=gateway_url, PIXAZO_API_KEY=SANDBOX_API_KEY)
    async with await anyio.open_process([sys.executable, "-m", "mmaudio_mcp"], env=env) as process:
        try:
            yield RawSession(process)
        finally:
            assert process.stdin is not None
            await process.stdin.aclose()
            with anyio.fail_after(20):
                await process.wait()


@asynccontextmanager
async def http_server(tmp_path: Path, gateway_url: str) -> AsyncGenerator[str]:
    port = free_port()
    env = server_env(tmp_path, PIXAZO_GATEWAY_URL=gateway_url, PIXAZO_API_KEY=SANDBOX_API_KEY)
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--transport", "streamable-http", "--port", str(port)]
    async with await anyio.open_process(command, env=env) as process:
        try:
            await until_healthy(process, f"http://127.0.0.1:{port}")
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.terminate()
            with anyio.fail_after(20):
                await process.wait()


ARGS: dict[str, Any] = {"prompt": "thunder rolling far away", "duration": 4}


async def test_over_stdio_a_task_is_created_polled_to_the_blocking_result_cancelled_and_refused_as_the_spec_says(
    tmp_path: Path, gateway: tuple[str, Sandbox]
) -> None:
    url, sandbox = gateway
    async with stdio_server(tmp_path, url) as session:
        wire = StdioWire(session)
        created = (await wire.call("generate_audio", **ARGS))["result"]
        assert created["resultType"] == "task"
        assert created["status"] == "working"
        assert len(created["taskId"]) >= 22  # >= 128 bits of URL-safe base64
        assert created["ttlMs"] == 24 * 3600 * 1000
        first = (await wire.get(created["taskId"]))["result"]  # resolves at once: stored before the answer left
        assert first["resultType"] == "complete"
        if first["status"] == "working":
            assert first["statusMessage"].split(",")[0].split(" ")[0] in ("Submitted", "QUEUED", "PROCESSING")
        done = await wire.until_done(created["taskId"])
        assert done["status"] == "completed"
        result = done["result"]
        assert result.get("isError") is not True
        job = result["structuredContent"]
        assert job["status"] == "COMPLETED"
        assert Path(job["file"]["path"]).is_file()
        assert any(block["type"] == "resource_link" for block in result["content"])
        assert "io.modelcontextprotocol/ui" in json.dumps(result) or result.get("_meta")
        # exactly what a blocking call returns for the same job
        blocking = StdioWire(session, declare=False)
        same = (await blocking.call("check_status", request_id=job["request_id"]))["result"]
        assert same["content"] == result["content"]
        assert same["structuredContent"] == result["structuredContent"]
        assert {k: v for k, v in same.get("_meta", {}).items() if not k.startswith("io.modelcontextprotocol/")} == {
            k: v for k, v in result.get("_meta", {}).items() if not k.startswith("io.modelcontextprotocol/")
        }
        assert sandbox.stats().submits == 1

        # tasks/cancel: acknowledged, honest, the job still retrievable
        second = (await wire.call("generate_audio", prompt="a kettle whistling", duration=4))["result"]
        cancelled = await wire.request("tasks/cancel", {"taskId": second["taskId"]})
        assert cancelled["result"]["resultType"] == "complete"
        after = (await wire.get(second["taskId"]))["result"]
        assert after["status"] == "cancelled"
        assert "may still complete and be billed" in after["statusMessage"]
        assert "check_status" in after["statusMessage"]
        rid = after["statusMessage"].split('request_id="')[1].split('"')[0]
        still = (await blocking.call("check_status", request_id=rid, wait_seconds=20))["result"]
        assert still["structuredContent"]["status"] == "COMPLETED"

        # tasks/update: nothing is ever asked of the client; acknowledged for a known task
        updated = await wire.request("tasks/update", {"taskId": created["taskId"], "inputResponses": {}})
        assert updated["result"]["resultType"] == "complete"

        # unknown task ids: -32602 for get, update and cancel
        for method in ("tasks/get", "tasks/cancel"):
            unknown = await wire.request(method, {"taskId": "no-such-task"})
            assert unknown["error"]["code"] == -32602, unknown
        unknown = await wire.request("tasks/update", {"taskId": "no-such-task", "inputResponses": {}})
        assert unknown["error"]["code"] == -32602

        # a client that does not declare the extension: -32021 on tasks/*, and today's blocking result
        refused = await blocking.request("tasks/get", {"taskId": created["taskId"]})
        assert refused["error"]["code"] == -32021
        assert refused["error"]["data"] == {"requiredCapabilities": {"extensions": {TASKS: {}}}}
        plain = (await blocking.call("generate_audio", prompt="a bird call", duration=2))["result"]
        assert plain.get("resultType", "complete") == "complete"
        assert plain["structuredContent"]["status"] == "COMPLETED"

        # task status notifications: refused (-32021) to a client without the extension; a declaring client is
        # acknowledged without task ids (none are offered: it polls)
        listen = {"notifications": {"taskIds": [created["taskId"]]}}
        assert (await blocking.request("subscriptions/listen", listen))["error"]["code"] == -32021
        await session.send("subscriptions/listen", {**listen, "_meta": wire.meta()})
        async for message in session.messages():
            if message.get("method") == "notifications/subscriptions/acknowledged":
                assert not message["params"]["notifications"].get("taskIds")
                break

        # check_status with a wait on an unfinished job is a task too
        handle = (await blocking.call("generate_audio", prompt="wind in pines", duration=4, wait_seconds=0))["result"]
        waiting = await wire.call("check_status", request_id=handle["structuredContent"]["request_id"], wait_seconds=30)
        assert waiting["result"]["resultType"] == "task"
        checked = await wire.until_done(waiting["result"]["taskId"])
        assert checked["result"]["structuredContent"]["status"] == "COMPLETED"

        # a job that FAILED upstream: a completed task whose result is a tool error
        sandbox.add_fault(Fault(FaultKind.JOB_FAILED, times=1))
        failing = (await wire.call("generate_audio", prompt="a door slam", duration=2))["result"]
        ended = await wire.until_done(failing["taskId"])
        assert ended["status"] == "completed"
        assert ended["result"]["isError"] is True
        assert "FAILED" in json.dumps(ended["result"]["content"])
    assert wire.problems == [] and blocking.problems == []


async def test_a_task_survives_a_restart_between_create_and_poll(tmp_path: Path, gateway: tuple[str, Sandbox]) -> None:
    url, _ = gateway
    async with stdio_server(tmp_path, url) as session:
        wire = StdioWire(session)
        created = (await wire.call("generate_audio", **ARGS))["result"]
    async with stdio_server(tmp_path, url) as session:
        wire = StdioWire(session)
        done = await wire.until_done(created["taskId"])
    assert done["status"] == "completed", done
    assert Path(done["result"]["structuredContent"]["file"]["path"]).is_file()
    assert wire.problems == []


async def test_over_streamable_http_tasks_are_bound_to_the_key_that_made_them(
    tmp_path: Path, gateway: tuple[str, Sandbox]
) -> None:
    url, sandbox = gateway
    async with http_server(tmp_path, url) as mcp, httpx2.AsyncClient() as http:
        server_key = HttpWire(http, mcp)
        own_key = HttpWire(http, mcp, key=OTHER_KEY)
        created = (await own_key.call("generate_audio", **ARGS))["result"]
        assert created["resultType"] == "task"
        foreign = await server_key.get(created["taskId"])
        assert foreign["error"]["code"] == -32602  # another key's task: as if it did not exist
        assert (await server_key.request("tasks/cancel", {"taskId": created["taskId"]}))["error"]["code"] == -32602
        done = await own_key.until_done(created["taskId"])
        assert done["status"] == "completed"
        assert done["result"]["structuredContent"]["status"] == "COMPLETED"
        waiting = await own_key.call("check_status", request_id=done["result"]["structuredContent"]["request_id"])
        assert waiting["result"]["structuredContent"]["status"] == "COMPLETED"  # finished: answered at once
        discovered = await server_key.request("server/discover", {})
        assert TASKS in discovered["result"]["capabilities"]["extensions"]
    assert sandbox.stats().submits == 1
    assert server_key.problems == [] and own_key.problems == []
