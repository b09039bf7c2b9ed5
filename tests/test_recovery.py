"""Crash recovery with real processes: a server killed with SIGKILL mid-wait loses nothing."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from mmaudio_mcp.sandbox import SandboxConfig, create_sandbox
from mmaudio_mcp.transport import serve_on_loopback
from tests.processes import RawSession, server_env


async def test_a_job_survives_kill_9_and_a_restarted_server_completes_it(tmp_path: Path) -> None:
    """After SIGKILL at a moment after the 202, the next server lists the job as unfinished and finishes it."""
    key = f"key-{secrets.token_hex(8)}"
    # Speed 1 matches the server's default timing prior, so the restarted server polls at the right moment.
    sandbox = create_sandbox(SandboxConfig(api_key=key, speed=1.0, queue_seconds=0.5))
    async with serve_on_loopback(sandbox.app) as gateway:
        env = server_env(tmp_path, PIXAZO_API_KEY=key, PIXAZO_GATEWAY_URL=gateway)
        async with await anyio.open_process([sys.executable, "-m", "mmaudio_mcp"], env=env) as first:
            session = RawSession(first)
            with anyio.fail_after(20):
                await session.handshake()
                call = {"name": "generate_audio", "arguments": {"prompt": "rain", "duration": 2, "num_steps": 10}}
                await session.send("tools/call", {**call, "_meta": {"progressToken": "p"}})
                await session.until_progress()  # progress is only sent once the job is submitted and stored
            first.kill()
            await first.wait()
        assert len(sandbox.stats().polls) <= 1

        params = StdioServerParameters(command=sys.executable, args=["-m", "mmaudio_mcp"], env=env)
        async with Client(params) as second:
            listed = await second.read_resource("mmaudio://jobs/unfinished")
            unfinished = json.loads(getattr(listed.contents[0], "text", "[]"))
            assert [job["status"] for job in unfinished] in (["QUEUED"], ["PROCESSING"])
            request_id = unfinished[0]["request_id"]
            done = await second.call_tool("check_status", {"request_id": request_id, "wait_seconds": 30})
    assert done.structured_content is not None, done.content
    assert done.structured_content["status"] == "COMPLETED"
    assert Path(done.structured_content["file"]["path"]).is_file()
    assert sandbox.stats().submits == 1, "the restart must not submit (and pay for) the job again"
