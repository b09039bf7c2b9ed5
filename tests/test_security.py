"""Serving over HTTP safely: bearer tokens, DNS-rebinding checks, and refusing to expose paid generation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.errors import ConfigurationError, unknown_job
from mmaudio_mcp.sandbox import SANDBOX_API_KEY
from mmaudio_mcp.server import build_server
from mmaudio_mcp.transport import Exposure, Transport, http_app, serve_on_loopback
from tests.conftest import POLICY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from mmaudio_mcp.settings import Settings

TOKEN = "token-for-tests-9c41"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def guarded(settings: Settings, transport: httpx2.ASGITransport) -> AsyncIterator[str]:
    """A streamable-HTTP server with a bearer token, on a loopback port."""
    served = settings.model_copy(update={"transport": "streamable-http"})
    server = build_server(served, http_transport=transport, policy=POLICY)
    async with serve_on_loopback(http_app(server, Transport.STREAMABLE_HTTP, Exposure(token=TOKEN))) as url:
        yield url


async def test_requests_without_the_bearer_token_get_401_with_www_authenticate(guarded: str) -> None:
    """No token, or a wrong one, is refused before reaching MCP; the answer says how to authenticate."""
    async with httpx2.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            reply = await http.post(f"{guarded}/mcp", json=INITIALIZE, headers=MCP_HEADERS | headers)
            assert reply.status_code == 401
            assert reply.headers["www-authenticate"].startswith("Bearer")
            # RFC 6750 section 3.1: an error code only when credentials were sent.
            assert ("error=" in reply.headers["www-authenticate"]) == bool(headers)
            assert TOKEN not in reply.text


async def test_oauth_discovery_gets_404_not_401(guarded: str) -> None:
    """Clients probe for OAuth metadata before connecting; there is none, and saying 401 makes them log errors."""
    async with httpx2.AsyncClient() as http:
        for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-authorization-server"):
            reply = await http.get(f"{guarded}{path}")
            assert reply.status_code == 404, path
            assert "www-authenticate" not in reply.headers


async def test_the_sdk_client_with_the_token_can_call_tools(guarded: str) -> None:
    """With `Authorization: Bearer <token>` the whole protocol works, tool calls included."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(f"{guarded}/mcp", http_client=http)) as client:
        result = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert not result.is_error, result.content


async def test_health_and_webhook_paths_stay_open(guarded: str) -> None:
    """The probe needs no token; webhooks are authenticated by their unguessable path instead."""
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{guarded}/healthz")).status_code == 200
        assert (await http.post(f"{guarded}/webhooks/unknown")).status_code == 404


async def test_a_foreign_host_or_origin_is_refused(guarded: str) -> None:
    """DNS-rebinding protection: a Host or Origin that is not this server's is refused, even with the token."""
    headers = MCP_HEADERS | {"Authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient() as http:
        bad_host = await http.post(f"{guarded}/mcp", json=INITIALIZE, headers=headers | {"Host": "evil.example"})
        bad_origin = await http.post(
            f"{guarded}/mcp", json=INITIALIZE, headers=headers | {"Origin": "http://evil.example"}
        )
    assert bad_host.status_code == 421
    assert bad_origin.status_code == 403


def test_listening_on_the_network_without_a_token_is_refused() -> None:
    """A non-loopback bind with no token is refused with advice, unless explicitly allowed."""
    with pytest.raises(ConfigurationError, match="MMAUDIO_HTTP_TOKEN"):
        Exposure(host="0.0.0.0").check()
    Exposure(host="0.0.0.0", token=TOKEN).check()
    Exposure(host="0.0.0.0", allow_unauthenticated=True).check()
    Exposure(host="127.0.0.1").check()


def test_the_allow_list_covers_loopback_the_bound_address_and_the_public_host() -> None:
    """Host patterns default to the loopback names and the bound address, plus the public URL's host."""
    security = Exposure(host="10.1.2.3", public_url="https://audio.example.com", allowed_hosts=("proxy.local",))
    security_settings = security.security()
    for host in ("127.0.0.1:*", "localhost:*", "10.1.2.3:*", "audio.example.com", "proxy.local:*"):
        assert host in security_settings.allowed_hosts
    assert "https://audio.example.com" in security_settings.allowed_origins


def test_the_cli_refuses_a_network_bind_without_a_token(tmp_path: Path) -> None:
    """`serve --transport streamable-http --host 0.0.0.0` with no token exits 1 with a one-line reason."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    args = ["-m", "mmaudio_mcp", "serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "9"]
    done = subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert "MMAUDIO_HTTP_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def connect_with(url: str, **headers: str) -> Client:
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(f"{url}/mcp", http_client=http))


@pytest.fixture
async def shared(settings: Settings, transport: httpx2.ASGITransport) -> AsyncIterator[str]:
    """A streamable-HTTP server with no key of its own: clients bring theirs."""
    served = settings.model_copy(update={"transport": "streamable-http", "api_key": None})
    server = build_server(served, http_transport=transport, policy=POLICY)
    async with serve_on_loopback(http_app(server, Transport.STREAMABLE_HTTP)) as url:
        yield url


async def test_jobs_made_with_a_clients_own_key_are_invisible_to_other_keys(shared: str, settings: Settings) -> None:
    """A job is visible only with the key that made it; others get the same 'unknown request_id' as for a job that
    does not exist, never its status or file; the key is stored only as a salted hash."""
    async with connect_with(shared, **{"X-Pixazo-Api-Key": SANDBOX_API_KEY}) as owner:
        made = await owner.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert made.structured_content is not None, made.content
    request_id = made.structured_content["request_id"]
    # The same words Pixazo's own 404 produces (errors.unknown_job), so a stranger cannot tell the two apart.
    expected = unknown_job(request_id).message
    for headers in ({"X-Pixazo-Api-Key": "somebody-elses-key"}, {}):
        async with connect_with(shared, **headers) as stranger:
            for tool in ("check_status", "download_audio"):
                theirs = await stranger.call_tool(tool, {"request_id": request_id})
                assert theirs.is_error
                assert getattr(theirs.content[0], "text", "").endswith(expected)
            with pytest.raises(MCPError, match="Unknown request_id"):
                await stranger.read_resource(f"audio://{request_id}")
            listing = await stranger.read_resource("mmaudio://jobs")
            assert request_id not in str(listing.contents)
    async with connect_with(shared, **{"X-Pixazo-Api-Key": SANDBOX_API_KEY}) as owner:
        again = await owner.call_tool("check_status", {"request_id": request_id})
    assert again.structured_content is not None
    assert again.structured_content["file"] == made.structured_content["file"]
    database = b"".join(path.read_bytes() for path in settings.state_dir.glob("jobs.sqlite3*"))
    assert SANDBOX_API_KEY.encode() not in database


async def test_the_key_and_the_token_appear_in_no_output_log_result_or_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under canary secrets, everything the server emits over HTTP (results, errors, logs at DEBUG, files,
    the job store) is scanned: neither the Pixazo key nor the bearer token shows up anywhere."""
    import logging
    import secrets

    from mmaudio_mcp.sandbox import Fault, FaultKind, SandboxConfig, create_sandbox
    from mmaudio_mcp.settings import Settings

    key, token = f"key-{secrets.token_hex(12)}", f"token-{secrets.token_hex(12)}"
    sandbox = create_sandbox(SandboxConfig(api_key=key, speed=0.02))
    caplog.set_level(logging.DEBUG)
    settings = Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        api_key=key,
        http_token=token,
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        transport="streamable-http",
        gateway_url="http://127.0.0.1:1",
    )
    seen: list[str] = []
    async with serve_on_loopback(sandbox.app) as gateway:
        server = build_server(settings.model_copy(update={"gateway_url": gateway}), policy=POLICY)
        app = http_app(server, Transport.STREAMABLE_HTTP, Exposure(token=token))
        async with serve_on_loopback(app) as url, connect_with(url, Authorization=f"Bearer {token}") as client:
            made = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
            seen.append(made.model_dump_json())
            for kind in (FaultKind.UNAUTHORIZED, FaultKind.INSUFFICIENT_BALANCE, FaultKind.SUBMIT_500):
                sandbox.add_fault(Fault(kind, times=1))
                seen.append(
                    (await client.call_tool("generate_audio", {"prompt": "x", "duration": 2})).model_dump_json()
                )
            for uri in ("mmaudio://jobs", "mmaudio://jobs/unfinished"):
                seen.append((await client.read_resource(uri)).model_dump_json())
            async with httpx2.AsyncClient() as http:
                seen.append((await http.post(f"{url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)).text)
                seen.append((await http.get(f"{url}/healthz")).text)
    files = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    emitted = "\n".join(seen) + caplog.text
    assert made.structured_content is not None
    assert "401" in emitted
    for secret in (key, token):
        assert secret not in emitted
        assert secret.encode() not in files
