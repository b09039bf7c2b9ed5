"""The real `mmaudio-mcp` process over stdio, as a host launches it: protocol-only stdout, no leaked key."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import anyio
from anyio.streams.text import TextReceiveStream
from mcp import Client, StdioServerParameters

from mmaudio_mcp.sandbox import Fault, FaultKind, SandboxConfig, create_sandbox
from mmaudio_mcp.transport import serve_on_loopback
from tests.processes import PROTOCOL_VERSION, RawSession, server_env


async def test_stdio_carries_only_protocol_messages_and_never_the_key(tmp_path: Path) -> None:
    """Over a real process: progress arrives, stdout holds only JSON-RPC, and the canary key is nowhere."""
    canary = f"canary-{secrets.token_hex(12)}"
    sandbox = create_sandbox(SandboxConfig(api_key=canary, speed=0.5, queue_seconds=0.2))
    async with serve_on_loopback(sandbox.app) as gateway:
        env = server_env(tmp_path, PIXAZO_API_KEY=canary, PIXAZO_GATEWAY_URL=gateway, MMAUDIO_WAIT_SECONDS="60")
        command = [sys.executable, "-m", "mmaudio_mcp", "--log-level", "debug"]
        async with await anyio.open_process(command, env=env) as process:
            session = RawSession(process)
            with anyio.fail_after(30):
                init = await session.send(
                    "initialize",
                    {
                        "protocolVersion": PROTOCOL_VERSION,
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                )
                await session.until_response(init)
                await session.send("notifications/initialized", notify=True)
                listed, _ = await session.until_response(await session.send("tools/list"))
                call = {"name": "generate_audio", "arguments": {"prompt": "rain", "duration": 2, "num_steps": 10}}
                done, notes = await session.until_response(
                    await session.send("tools/call", {**call, "_meta": {"progressToken": "p1"}})
                )
                sandbox.add_fault(Fault(FaultKind.UNAUTHORIZED))
                refused, _ = await session.until_response(await session.send("tools/call", call))
            assert process.stdin is not None
            await process.stdin.aclose()
            with anyio.fail_after(10):
                await process.wait()
            assert process.stderr is not None
            stderr = "".join([chunk async for chunk in TextReceiveStream(process.stderr)])

    assert {tool["name"] for tool in listed["result"]["tools"]} == {"generate_audio", "check_status", "download_audio"}
    assert done["result"]["structuredContent"]["status"] == "COMPLETED", done
    assert Path(done["result"]["structuredContent"]["file"]["path"]).is_file()
    progress = [n for n in notes if n["method"] == "notifications/progress"]
    assert progress, "no progress notification over stdio"
    assert refused["result"]["isError"] is True
    assert "401" in refused["result"]["content"][0]["text"]
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in session.stdout_lines)
    everything = "\n".join(session.stdout_lines) + stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".wav":
            everything += path.read_bytes().decode(errors="replace")
    assert canary not in everything
    assert "DEBUG" in stderr, "debug logging should reach stderr, proving stderr was captured"


async def test_serve_with_the_sandbox_works_with_the_sdk_client_and_no_key(tmp_path: Path) -> None:
    """`mmaudio-mcp serve --sandbox` lets someone with no key generate a real WAV through the SDK client."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mmaudio_mcp", "serve", "--sandbox", "--sandbox-speed", "0.05"],
        env=server_env(tmp_path),
    )
    async with Client(params) as client:
        result = await client.call_tool("generate_audio", {"prompt": "a bell rings", "duration": 2})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    path = Path(result.structured_content["file"]["path"])
    assert path.is_relative_to(tmp_path / "out")
    assert path.read_bytes()[:4] == b"RIFF"


async def test_without_a_key_the_process_lists_tools_and_explains_the_variable(tmp_path: Path) -> None:
    """No PIXAZO_API_KEY: the server still starts and answers, and a call names the variable to set."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "mmaudio_mcp"], env=server_env(tmp_path))
    async with Client(params) as client:
        assert len((await client.list_tools()).tools) == 3
        result = await client.call_tool("generate_audio", {"prompt": "rain"})
    assert result.is_error
    assert "PIXAZO_API_KEY" in str(result.content)
