"""Stateless streamable HTTP (`serve --stateless`, automatic with MMAUDIO_DATABASE_URL): what replicas behind a
round-robin balancer need, and what it gives up handled (no roots can be asked: `folder` stays in the output folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from mmaudio_mcp.errors import ConfigurationError
from mmaudio_mcp.server import build_server
from mmaudio_mcp.settings import Settings
from mmaudio_mcp.transport import Exposure, Transport, http_app, serve, serve_on_loopback
from tests.conftest import POLICY

if TYPE_CHECKING:
    from mcp.shared.context import RequestContext

LEGACY = "2025-11-25"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.mark.parametrize("stateless", [False, True])
async def test_a_legacy_request_reaching_another_replica_is_served_only_when_stateless(
    settings: Settings, transport: httpx2.ASGITransport, *, stateless: bool
) -> None:
    """Behind round-robin, a legacy client's next request lands on a replica that never saw its initialize (here:
    a session id this process never issued). Stateful, that is 404 "Session not found"; stateless, it is served."""
    server = build_server(settings.model_copy(update={"transport": "streamable-http"}), http_transport=transport)
    app = http_app(server, Transport.STREAMABLE_HTTP, Exposure(stateless=stateless))
    async with serve_on_loopback(app) as base_url, httpx2.AsyncClient() as http:
        first = await http.post(f"{base_url}/mcp", json=INIT, headers=HEADERS)
        assert first.status_code == 200
        assert ("mcp-session-id" in first.headers) is not stateless
        listed = await http.post(
            f"{base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={**HEADERS, "mcp-session-id": "issued-by-the-other-replica", "mcp-protocol-version": LEGACY},
        )
    assert listed.status_code == (200 if stateless else 404)
    if stateless:
        assert "generate_audio" in listed.text


async def test_folder_stays_inside_the_output_folder_when_roots_cannot_be_asked(
    settings: Settings, transport: httpx2.ASGITransport, tmp_path: Path
) -> None:
    """A stateless server cannot ask the client for its roots (no back channel): a relative `folder` lands inside
    the output folder and a folder elsewhere (even the client's own workspace) is refused, never written."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    asked: list[str] = []

    async def roots(_: RequestContext[object]) -> types.ListRootsResult:
        asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl(workspace.as_uri()))])

    server = build_server(
        settings.model_copy(update={"transport": "streamable-http"}), http_transport=transport, policy=POLICY
    )
    app = http_app(server, Transport.STREAMABLE_HTTP, Exposure(stateless=True))
    async with (
        serve_on_loopback(app) as base_url,
        Client(streamable_http_client(f"{base_url}/mcp"), mode="legacy", list_roots_callback=roots) as client,
    ):
        inside = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2, "folder": "takes"})
        outside = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2, "folder": str(workspace)})
    assert not inside.is_error, inside.content
    assert inside.structured_content is not None
    saved = Path(inside.structured_content["file"]["path"])
    assert saved.parent == (settings.output_dir / "takes").resolve()
    assert saved.is_file()
    assert outside.is_error
    assert "outside the output folder" in str(outside.content)
    assert list(workspace.iterdir()) == []
    assert asked == [], "a stateless server has no channel to ask on"


def test_a_database_url_implies_stateless_and_sse_refuses_it(tmp_path: Path) -> None:
    """Replicas share a database, so a database URL turns stateless on; SSE keeps sessions, so it cannot."""
    base = Settings(_env_file=None, state_dir=tmp_path)  # pyright: ignore[reportCallIssue]
    assert not base.stateless_http
    replica = Settings(_env_file=None, state_dir=tmp_path, database_url="postgresql://db/x")  # pyright: ignore[reportCallIssue]
    assert replica.stateless_http
    assert "postgresql://db/x" not in repr(replica), "the URL may hold a password: never in a repr or a log"


async def test_sse_refuses_to_run_stateless(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="streamable-http"):
        await serve(build_server(settings), Transport.SSE, Exposure(port=0, stateless=True))


def test_a_request_state_key_shorter_than_32_characters_is_refused(tmp_path: Path) -> None:
    """The key that replicas share to open each other's sealed request state must be real secret material."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(_env_file=None, state_dir=tmp_path, request_state_key="short")  # pyright: ignore[reportCallIssue]
    key = "x" * 32
    settings = Settings(_env_file=None, state_dir=tmp_path, request_state_key=key)  # pyright: ignore[reportCallIssue]
    assert key not in repr(settings)


def test_the_embedded_default_never_loads_the_replica_drivers() -> None:
    """stdio and one-machine servers (no database or storage URL) do not import asyncpg or obstore."""
    import subprocess
    import sys

    code = (
        "import sys; from mmaudio_mcp.server import build_server; from mmaudio_mcp.settings import Settings; "
        "from mmaudio_mcp import cli, jobs, files; build_server(Settings(_env_file=None)); "
        "print(sorted(m for m in ('asyncpg', 'obstore') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
