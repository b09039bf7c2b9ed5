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
