"""Graceful shutdown of the streamable-HTTP server: SIGTERM or SIGINT during a tool call ends the process promptly,
the in-flight job stays in the store, and a restarted server resumes it."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.sandbox import SandboxConfig, create_sandbox
from mmaudio_mcp.transport import serve_on_loopback
from tests.processes import free_port, server_env, until_healthy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import Process

BOUND = 15.0
"""Seconds a signalled server may take to exit; over the 2025-11-25 protocol it takes about 2."""
LONG_JOB = {"prompt": "a long storm", "duration": 30, "num_steps": 100, "wait_seconds": 120}
"""About 45 s at sandbox speed 0.2: certainly in flight when the signal arrives."""
EXIT_CODES = {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130}
"""uvicorn re-raises the signal once it has shut down: SIGTERM then kills the process (143 in a shell), and SIGINT
becomes the KeyboardInterrupt that the CLI turns into its documented exit code 130."""
UNFINISHED = ("SUBMITTING", "QUEUED", "PROCESSING")


@asynccontextmanager
async def http_server(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[tuple[Process, str]]:
    """`mmaudio-mcp serve --transport streamable-http` on a free port, healthy; stopped (by its pid) if still
    running at the end, politely first."""
    port = free_port()
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--transport", "streamable-http", "--port", str(port)]
    with (tmp_path / f"server-{port}.log").open("wb") as log:
        async with await anyio.open_process([*command, *args], env=env, stdout=log, stderr=log) as process:
            try:
                url = f"http://127.0.0.1:{port}"
                await until_healthy(process, url)
                yield process, url
            finally:
                await stop(process)


async def stop(process: Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(BOUND):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


def connect(url: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode)  # type: ignore[arg-type]


def stored_jobs(state_dir: Path) -> list[tuple[str | None, str]]:
    """(request_id, status) of every row, read with a read-only connection."""
    database = sqlite3.connect(f"{(state_dir / 'jobs.sqlite3').as_uri()}?mode=ro", uri=True)
    with contextlib.closing(database):
        return database.execute("SELECT request_id, status FROM jobs").fetchall()


async def signal_during_a_call(
    process: Process, url: str, mode: str, sig: signal.Signals, job: dict[str, Any]
) -> float:
    """Start generate_audio, wait until its job is submitted and stored (first progress), send `sig`; return how long
    the process took to exit (it is still running if that exceeds BOUND)."""
    submitted = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        submitted.set()

    async def call() -> None:
        with contextlib.suppress(Exception):  # the server goes away mid-call: that is the point
            async with connect(url, mode) as client:
                await client.call_tool("generate_audio", job, progress_callback=on_progress)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        with anyio.fail_after(30):
            await submitted.wait()
        started = time.monotonic()
        process.send_signal(sig)
        with anyio.move_on_after(BOUND):
            await process.wait()
        tasks.cancel_scope.cancel()
    return time.monotonic() - started


SIGNALS = [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGINT, id="sigint")]
MODES = [
    pytest.param("legacy", id="2025-11-25"),
    pytest.param("auto", id="2026-07-28"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sig", SIGNALS)
async def test_a_signal_during_a_call_stops_the_server_promptly_and_the_job_survives_a_restart(
    tmp_path: Path, sig: signal.Signals, mode: str
) -> None:
    """`serve --sandbox` over streamable HTTP, signalled while generate_audio waits: it exits within BOUND with the
    signal's exit code and no traceback, its store holds the unfinished job, and the next server lists it."""
    env = server_env(tmp_path)
    sandbox_args = ("--sandbox", "--sandbox-speed", "0.2")
    async with http_server(tmp_path, env, *sandbox_args) as (process, url):
        took = await signal_during_a_call(process, url, mode, sig, LONG_JOB)
        assert process.returncode is not None, f"still running {took:.0f} s after {sig.name}"
        assert process.returncode == EXIT_CODES[sig]
    log = "".join(path.read_text(errors="replace") for path in tmp_path.glob("server-*.log"))
    assert "Traceback" not in log

    rows = stored_jobs(tmp_path / "state" / "sandbox")
    assert len(rows) == 1, rows
    request_id, status = rows[0]
    assert status in UNFINISHED
    assert request_id is not None

    async with http_server(tmp_path, env, *sandbox_args) as (_, url), connect(url) as client:
        listed = await client.read_resource("mmaudio://jobs/unfinished")
    unfinished = json.loads(getattr(listed.contents[0], "text", "[]"))
    assert [job["request_id"] for job in unfinished] == [request_id]


async def test_after_sigterm_a_restarted_server_completes_the_job_without_paying_twice(tmp_path: Path) -> None:
    """With the gateway outside the process (so that the job outlives it), a job cut off by SIGTERM is completed by
    check_status on the next server, and the gateway saw exactly one submit."""
    sandbox = create_sandbox(SandboxConfig(speed=1.0, queue_seconds=0.5))
    async with serve_on_loopback(sandbox.app) as gateway:
        env = server_env(tmp_path, PIXAZO_API_KEY="sandbox-key", PIXAZO_GATEWAY_URL=gateway)
        job = {"prompt": "rain on a tin roof", "duration": 2, "num_steps": 10, "wait_seconds": 60}
        async with http_server(tmp_path, env) as (process, url):
            await signal_during_a_call(process, url, "legacy", signal.SIGTERM, job)
            assert process.returncode == -signal.SIGTERM
        ((request_id, status),) = stored_jobs(tmp_path / "state")
        assert request_id is not None
        assert status in UNFINISHED

        async with http_server(tmp_path, env) as (_, url), connect(url) as client:
            with anyio.fail_after(40):
                done = await client.call_tool("check_status", {"request_id": request_id, "wait_seconds": 30})
    assert done.structured_content is not None, done.content
    assert done.structured_content["status"] == "COMPLETED"
    assert Path(done.structured_content["file"]["path"]).is_file()
    assert sandbox.stats().submits == 1, "the restart must not submit (and pay for) the job again"
