"""A re-issued generate_audio (its predecessor never got its result) joins the paid job instead of paying again."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from mcp import Client

from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox
from mmaudio_mcp.server import build_server
from mmaudio_mcp.transport import serve_on_loopback
from tests.conftest import POLICY
from tests.processes import RawSession, server_env

if TYPE_CHECKING:
    from pathlib import Path

    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

ARGS: dict[str, Any] = {"prompt": "a door creaks open slowly", "duration": 8, "wait_seconds": 20}


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def cancelled_mid_wait(client: Client, arguments: dict[str, Any]) -> None:
    """Start the call, and cancel it once the server has reported progress (the job is submitted and running):
    the SDK client then sends notifications/cancelled, as a host does when the user stops a call."""
    running = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        running.set()

    async with anyio.create_task_group() as tasks:

        async def call() -> None:
            await client.call_tool("generate_audio", arguments, progress_callback=on_progress)
            raise AssertionError("the call should have been cancelled before it finished")

        tasks.start_soon(call)
        await running.wait()
        tasks.cancel_scope.cancel()


async def test_a_call_cancelled_mid_wait_and_made_again_pays_once(client: Client, sandbox: Sandbox) -> None:
    await cancelled_mid_wait(client, ARGS)
    assert sandbox.stats().submits == 1
    again = await client.call_tool("generate_audio", ARGS)
    assert not again.is_error, text_of(again)
    job = again.structured_content
    assert job is not None
    assert sandbox.stats().submits == 1, "the re-issued call paid for a second job"
    assert job["status"] == "COMPLETED"
    assert job["reattached"] is True
    assert "nothing was paid again" in text_of(again)


async def test_a_call_that_got_its_result_made_again_is_a_new_take(client: Client, sandbox: Sandbox) -> None:
    first = await client.call_tool("generate_audio", ARGS)
    assert not first.is_error, text_of(first)
    second = await client.call_tool("generate_audio", ARGS)
    assert not second.is_error, text_of(second)
    assert sandbox.stats().submits == 2
    assert first.structured_content is not None and second.structured_content is not None
    assert first.structured_content["request_id"] != second.structured_content["request_id"]
    assert second.structured_content["reattached"] is False


async def test_a_handle_returned_before_the_job_finished_counts_as_an_answer(client: Client, sandbox: Sandbox) -> None:
    """wait_seconds=0 returns a request_id: the caller has its result, so the same call again is another take."""
    handle = await client.call_tool("generate_audio", {**ARGS, "wait_seconds": 0})
    assert not handle.is_error, text_of(handle)
    again = await client.call_tool("generate_audio", {**ARGS, "wait_seconds": 0})
    assert sandbox.stats().submits == 2
    assert again.structured_content is not None and again.structured_content["reattached"] is False


async def test_a_different_call_after_a_cancelled_one_is_not_joined_to_it(client: Client, sandbox: Sandbox) -> None:
    await cancelled_mid_wait(client, ARGS)
    other = await client.call_tool("generate_audio", {**ARGS, "duration": 4})
    assert not other.is_error, text_of(other)
    assert sandbox.stats().submits == 2
    assert other.structured_content is not None and other.structured_content["reattached"] is False


async def test_a_re_issued_call_joins_the_job_once_only(client: Client, sandbox: Sandbox) -> None:
    """After the re-issued call got its result, the same call once more is a new take."""
    await cancelled_mid_wait(client, ARGS)
    joined = await client.call_tool("generate_audio", ARGS)
    assert joined.structured_content is not None and joined.structured_content["reattached"] is True
    fresh = await client.call_tool("generate_audio", ARGS)
    assert fresh.structured_content is not None and fresh.structured_content["reattached"] is False
    assert sandbox.stats().submits == 2


async def test_another_server_on_the_same_state_folder_joins_the_abandoned_job(
    settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox
) -> None:
    """The ledger is in the shared store: a server process started after the first one stopped (the host
    restarted it) still joins the job the cancelled call paid for."""
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as first:
        await cancelled_mid_wait(first, ARGS)
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as second:
        again = await second.call_tool("generate_audio", ARGS)
    assert not again.is_error, text_of(again)
    assert again.structured_content is not None and again.structured_content["reattached"] is True
    assert sandbox.stats().submits == 1


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_across_server_processes_a_cancelled_or_killed_call_is_joined_by_the_same_call_elsewhere(
    tmp_path: Path,
) -> None:
    """Two stdio server processes on one state folder: a call cancelled on the first (notifications/cancelled), and
    one whose server is killed mid-call (kill -9: its stream closes, nothing records the end), are each joined by the
    same call made on the second; 2 submits for 4 calls."""
    sandbox = create_sandbox(SandboxConfig(speed=0.2))
    async with serve_on_loopback(sandbox.app) as gateway:
        env = server_env(tmp_path, PIXAZO_GATEWAY_URL=gateway, PIXAZO_API_KEY=SANDBOX_API_KEY)
        command = [sys.executable, "-m", "mmaudio_mcp"]
        async with (
            await anyio.open_process(command, env=env) as first,
            await anyio.open_process(command, env=env) as second,
        ):
            one, two = RawSession(first), RawSession(second)
            await one.handshake()
            await two.handshake()
            cancelled = {**ARGS, "prompt": "a bell rings twice"}
            call = await one.send(
                "tools/call", {"name": "generate_audio", "arguments": cancelled, "_meta": {"progressToken": 1}}
            )
            await one.until_progress()
            await one.send("notifications/cancelled", {"requestId": call, "reason": "user stopped it"}, notify=True)
            again = await two.send("tools/call", {"name": "generate_audio", "arguments": cancelled})
            answer, _ = await two.until_response(again)
            assert answer["result"]["structuredContent"]["reattached"] is True, answer
            killed = {**ARGS, "prompt": "a glass breaks"}
            await one.send("tools/call", {"name": "generate_audio", "arguments": killed, "_meta": {"progressToken": 2}})
            await one.until_progress()
            first.kill()
            await first.wait()
            again = await two.send("tools/call", {"name": "generate_audio", "arguments": killed})
            answer, _ = await two.until_response(again)
            assert answer["result"]["structuredContent"]["reattached"] is True, answer
            assert second.stdin is not None
            await second.stdin.aclose()
            await second.wait()
    assert sandbox.stats().submits == 2
