"""Shared fixtures: a sandbox gateway, settings in temp folders, and an in-memory MCP client wired to both."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx2
import pytest
from mcp import Client

from mmaudio_mcp.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox
from mmaudio_mcp.schedule import PollPolicy
from mmaudio_mcp.server import build_server
from mmaudio_mcp.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

E2E_MODULES = {
    "test_conformance",  # the official suite via npx (HTTP, and stdio through a bridge)
    "test_host_ts",  # TypeScript SDK hosts (npm)
    "test_player_browser",  # headless Chromium
    "test_wheel",  # builds a wheel, installs it into a fresh virtualenv, runs pipx
    "test_registry",  # server.json's packages, started as described
    "test_recovery",  # kill -9 and restart
    "test_shutdown",  # signals to real server processes
    "test_stdio",  # real stdio server processes
    "test_doc_lines",  # every shell line of the READMEs
}
"""Modules whose tests start real processes, browsers or package managers: `pytest -m "not e2e"` leaves them out."""
E2E_TESTS = {
    "test_the_agent_example_generates_a_wav_and_prints_its_path",
    "test_each_stdio_entry_starts_the_server_with_its_env_and_lists_the_tools",
    "test_a_save_that_fails_after_payment_prints_the_request_id_and_the_wav",
    "test_a_flood_of_500_tool_lists_from_one_sdk_client_is_all_answered",
    "test_a_flood_of_500_raw_tool_calls_on_one_session_is_all_answered",
    "test_no_message_of_a_30_s_job_exceeds_1_mib",
    "test_a_dripping_download_never_holds_a_call_past_its_wait",
    "test_a_wait_that_ends_on_a_failed_poll_says_what_failed",
    "test_the_command_dry_runs_then_syncs_then_pays_nothing",
    "test_an_unfinished_job_says_the_command_to_run_and_status_finds_it_by_prefix_after_exit",
    "test_generate_saves_a_processed_file_into_the_project",
    "test_a_loop_says_how_much_shorter_than_the_clip_it_came_out",
    "test_serve_over_http_says_where_it_listens_and_a_busy_port_is_one_line",
}
"""Single slow end-to-end tests in otherwise fast modules."""
E2E_TIMEOUT = 300
"""Seconds for an end-to-end test on a loaded 2-core machine (a unit test keeps pyproject's 60)."""
TIMEOUTS = {"test_the_stdio_entry_point_passes_the_suite_through_a_bridge": 480}
"""Longer still: the bridged conformance run alone needs ~105 s there (npx fetches, one server per session)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the end-to-end tests `e2e` and give them timeouts that hold on a loaded 2-core machine."""
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        name = getattr(item, "originalname", item.name)
        if module in E2E_MODULES or name in E2E_TESTS:
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e") and item.get_closest_marker("timeout") is None:
            seconds = next((t for prefix, t in TIMEOUTS.items() if name.startswith(prefix)), E2E_TIMEOUT)
            item.add_marker(pytest.mark.timeout(seconds))


SPEED = 0.02
"""Sandbox jobs run at 2% of real time: an 8 s / 25-step job takes about 0.36 s."""
POLICY = PollPolicy().scaled(SPEED)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sandbox() -> Sandbox:
    return create_sandbox(SandboxConfig(speed=SPEED))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        api_key=SANDBOX_API_KEY,
        gateway_url="http://127.0.0.1:8787",
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        wait_seconds=20,
    )


@pytest.fixture
def transport(sandbox: Sandbox) -> httpx2.ASGITransport:
    return httpx2.ASGITransport(app=sandbox.app)


@pytest.fixture
async def client(settings: Settings, transport: httpx2.ASGITransport) -> AsyncIterator[Client]:
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as connected:
        yield connected
