"""The spending guard: at most N paid submits per key in a rolling window, counted in the shared store."""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mmaudio_mcp.ledger import DEFAULT_SPEND_CAP, DEFAULT_SPEND_WINDOW_MINUTES, SpendCap
from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox
from mmaudio_mcp.server import build_server
from mmaudio_mcp.settings import Settings
from mmaudio_mcp.transport import serve_on_loopback
from tests.conftest import POLICY, SPEED
from tests.processes import server_env
from tests.test_reissue import cancelled_mid_wait

if TYPE_CHECKING:
    from pathlib import Path

    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.sandbox import Sandbox


def capped(settings: Settings, jobs: int, window_minutes: float) -> Settings:
    """The settings with a spending guard of `jobs` paid submits per `window_minutes`."""
    return settings.model_copy(update={"spend_cap": jobs, "spend_window_minutes": window_minutes})


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def args(n: int, **more: Any) -> dict[str, Any]:
    return {"prompt": f"a short click number {n}", "duration": 2, "num_steps": 10, "wait_seconds": 0, **more}


async def test_the_cap_refuses_the_next_submit_and_says_how_many_were_paid_and_how_to_raise_it(
    settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox
) -> None:
    server = build_server(capped(settings, *(2, 30)), http_transport=transport, policy=POLICY)
    async with Client(server) as client:
        paid = [await client.call_tool("generate_audio", args(n)) for n in range(2)]
        assert not any(result.is_error for result in paid)
        refused = await client.call_tool("generate_audio", args(3))
        assert refused.is_error
        message = text_of(refused)
        assert "2 jobs were already paid with this key in the last 30 minutes" in message
        assert "MMAUDIO_SPEND_CAP" in message
        assert "MMAUDIO_SPEND_CAP=0 turns the guard off" in message
        assert sandbox.stats().submits == 2
        # check_status never counts, and still works at the cap.
        for result in paid:
            assert result.structured_content is not None
            rid = result.structured_content["request_id"]
            checked = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 5})
            assert not checked.is_error, text_of(checked)
        assert sandbox.stats().submits == 2


async def test_check_status_and_a_re_attached_call_are_not_counted(
    settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox
) -> None:
    """With a cap of 1, the one paid job can be waited on with check_status and joined by the call made again."""
    server = build_server(capped(settings, *(1, 60)), http_transport=transport, policy=POLICY)
    arguments = {"prompt": "a door creaks open slowly", "duration": 8, "wait_seconds": 20}
    async with Client(server) as client:
        await cancelled_mid_wait(client, arguments)
        joined = await client.call_tool("generate_audio", arguments)
        assert not joined.is_error, text_of(joined)
        assert joined.structured_content is not None and joined.structured_content["reattached"] is True
        rid = joined.structured_content["request_id"]
        for _ in range(3):
            checked = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 5})
            assert not checked.is_error, text_of(checked)
        assert (await client.call_tool("generate_audio", args(9))).is_error  # the cap: 1 paid job
    assert sandbox.stats().submits == 1


async def test_a_zero_cap_turns_the_guard_off(
    settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox
) -> None:
    server = build_server(capped(settings, *(0, 60)), http_transport=transport, policy=POLICY)
    async with Client(server) as client:
        for n in range(3):
            assert not (await client.call_tool("generate_audio", args(n))).is_error
    assert sandbox.stats().submits == 3


def test_the_default_is_documented_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """60 jobs per 60 minutes unless MMAUDIO_SPEND_CAP / MMAUDIO_SPEND_WINDOW_MINUTES say otherwise (read by the
    settings, like every other variable)."""
    monkeypatch.delenv("MMAUDIO_SPEND_CAP", raising=False)
    monkeypatch.delenv("MMAUDIO_SPEND_WINDOW_MINUTES", raising=False)
    default = Settings()
    assert (default.spend_cap, default.spend_window_minutes) == (DEFAULT_SPEND_CAP, DEFAULT_SPEND_WINDOW_MINUTES)
    assert SpendCap() == SpendCap(DEFAULT_SPEND_CAP, DEFAULT_SPEND_WINDOW_MINUTES) == SpendCap(60, 60)
    monkeypatch.setenv("MMAUDIO_SPEND_CAP", "5")
    monkeypatch.setenv("MMAUDIO_SPEND_WINDOW_MINUTES", "10")
    assert (Settings().spend_cap, Settings().spend_window_minutes) == (5, 10)
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "MMAUDIO_SPEND_CAP" in readme
    assert "MMAUDIO_SPEND_WINDOW_MINUTES" in readme


def test_out_of_range_numbers_are_clamped_and_a_non_number_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A negative cap is 0 (the guard off), a fractional one is truncated, a window under 0.1 minutes is 0.1, and
    a value that is not a number keeps the default and is named in a warning, instead of stopping the server."""
    monkeypatch.setenv("MMAUDIO_SPEND_CAP", "-3")
    monkeypatch.setenv("MMAUDIO_SPEND_WINDOW_MINUTES", "0")
    assert (Settings().spend_cap, Settings().spend_window_minutes) == (0, 0.1)
    monkeypatch.setenv("MMAUDIO_SPEND_CAP", "2.7")
    monkeypatch.setenv("MMAUDIO_SPEND_WINDOW_MINUTES", "99999999")
    assert (Settings().spend_cap, Settings().spend_window_minutes) == (2, 7 * 24 * 60)
    monkeypatch.setenv("MMAUDIO_SPEND_CAP", "lots")
    monkeypatch.setenv("MMAUDIO_SPEND_WINDOW_MINUTES", " ")
    with caplog.at_level("WARNING"):
        assert (Settings().spend_cap, Settings().spend_window_minutes) == (60, 60)
    assert "ignoring MMAUDIO_SPEND_CAP='lots': not a number" in caplog.text


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_the_cap_holds_across_two_server_processes_and_jobs_shows_the_window(tmp_path: Path) -> None:
    """Two stdio servers on one state folder, cap 3: together they pay for 3 jobs, the 4th is refused by either;
    `mmaudio-mcp jobs` shows the window."""
    sandbox = create_sandbox(SandboxConfig(speed=SPEED))
    async with serve_on_loopback(sandbox.app) as gateway, AsyncExitStack() as stack:
        env = server_env(tmp_path, PIXAZO_GATEWAY_URL=gateway, PIXAZO_API_KEY=SANDBOX_API_KEY, MMAUDIO_SPEND_CAP="3")
        parameters = StdioServerParameters(command=sys.executable, args=["-m", "mmaudio_mcp"], env=env)
        servers = [await stack.enter_async_context(Client(parameters)) for _ in range(2)]
        results: list[CallToolResult] = []

        async def call(n: int) -> None:
            results.append(await servers[n % 2].call_tool("generate_audio", args(n)))

        async with anyio.create_task_group() as tasks:
            for n in range(5):
                tasks.start_soon(call, n)
        assert sorted(result.is_error for result in results) == [False, False, False, True, True]
        refused = next(result for result in results if result.is_error)
        assert "3 jobs were already paid" in text_of(refused)
        assert sandbox.stats().submits == 3
    listed = await anyio.run_process(
        [sys.executable, "-m", "mmaudio_mcp", "jobs"], env=env | {"COLUMNS": "200"}, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "Spend window: 3 of 3 paid jobs in the last 60 minutes" in " ".join(listed.stdout.decode().split())
