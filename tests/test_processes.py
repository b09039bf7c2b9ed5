"""Many processes, one state folder: three stdio servers and the CLI share the store, and the lease makes one of
them poll and download each job; kill -9 of the lease holder is taken over within the lease.

The sandbox is wrapped by a recorder that notes every request and which API key made it: each server process runs
with its own key, so a status poll tells which process made it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mmaudio_mcp.sandbox import Fault, FaultKind, SandboxConfig, create_sandbox
from mmaudio_mcp.transport import serve_on_loopback
from tests.processes import RawSession, server_env

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 2.0
STATUS_PREFIX = "/v2/requests/status/"


@dataclass
class Call:
    path: str
    key: str
    start: float
    end: float | None = None


@dataclass
class Recorder:
    """An ASGI wrapper that notes each request to the sandbox: path, API key, start and end (monotonic)."""

    app: ASGIApp
    calls: list[Call] = field(default_factory=list[Call])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        call = Call(scope["path"], headers.get(b"ocp-apim-subscription-key", b"").decode(), time.monotonic())
        self.calls.append(call)
        try:
            await self.app(scope, receive, send)
        finally:
            call.end = time.monotonic()

    def pollers(self, request_id: str) -> list[str]:
        """The keys that polled this job, in order."""
        return [call.key for call in self.calls if call.path == STATUS_PREFIX + request_id]


def rows(state: Path) -> dict[str, dict[str, Any]]:
    """Each stored job's record, by request_id (read straight from the database, as another process would)."""
    conn = sqlite3.connect(state / "jobs.sqlite3")
    try:
        found = conn.execute("SELECT request_id, record FROM jobs WHERE request_id IS NOT NULL").fetchall()
    finally:
        conn.close()
    return {request_id: json.loads(record) for request_id, record in found}


def lease_owner(state: Path, request_id: str) -> str | None:
    conn = sqlite3.connect(state / "jobs.sqlite3", timeout=10)
    try:
        row = conn.execute("SELECT lease_owner FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


async def test_three_servers_and_the_cli_share_jobs_without_double_work_or_lost_updates(tmp_path: Path) -> None:
    """30 jobs, each submitted by one of three stdio servers, waited on by all three and by the CLI, then given
    three variants at once (one per server): 1 submit, 1 poller and 1 media fetch per job, every variant kept."""
    keys = [f"key-{n}-{secrets.token_hex(6)}" for n in range(4)]
    sandbox = create_sandbox(SandboxConfig(api_key=keys[0], extra_api_keys=tuple(keys[1:]), queue_seconds=0.5))
    recorder = Recorder(sandbox.app)
    async with serve_on_loopback(recorder) as gateway, AsyncExitStack() as stack:
        env = server_env(tmp_path, PIXAZO_GATEWAY_URL=gateway, MMAUDIO_LEASE_SECONDS=str(LEASE_SECONDS))
        servers = [
            await stack.enter_async_context(
                Client(
                    StdioServerParameters(
                        command=sys.executable, args=["-m", "mmaudio_mcp"], env=env | {"PIXAZO_API_KEY": key}
                    )
                )
            )
            for key in keys[:3]
        ]
        request_ids: list[str] = [""] * 30

        async def submit(n: int) -> None:
            arguments = {"prompt": f"sound number {n}", "duration": 2, "num_steps": 10, "wait_seconds": 0}
            result = await servers[n % 3].call_tool("generate_audio", arguments)
            assert result.structured_content is not None, result.content
            request_ids[n] = result.structured_content["request_id"]

        waited: dict[tuple[int, str], dict[str, Any]] = {}

        async def wait(server: int, request_id: str) -> None:
            result = await servers[server].call_tool("check_status", {"request_id": request_id, "wait_seconds": 90})
            assert result.structured_content is not None, result.content
            waited[server, request_id] = result.structured_content

        cli_answers: list[dict[str, Any]] = []

        async def cli_wait(request_id: str) -> None:
            command = [sys.executable, "-m", "mmaudio_mcp", "status", request_id, "--wait-seconds", "90", "--json"]
            done = await anyio.run_process(command, env=env | {"PIXAZO_API_KEY": keys[3]}, check=False)
            assert done.returncode == 0, done.stderr.decode()
            cli_answers.append(json.loads(done.stdout))

        with anyio.fail_after(150):
            async with anyio.create_task_group() as tasks:
                for n in range(30):
                    tasks.start_soon(submit, n)
            async with anyio.create_task_group() as tasks:
                for request_id in request_ids:
                    for server in range(3):
                        tasks.start_soon(wait, server, request_id)
                for request_id in request_ids[:3]:
                    tasks.start_soon(cli_wait, request_id)

            variants: dict[tuple[int, str], dict[str, Any]] = {}

            async def variant(server: int, request_id: str) -> None:
                arguments: dict[str, Any] = [{"format": "ogg"}, {"format": "flac"}, {"normalize": True}][server]
                result = await servers[server].call_tool("download_audio", {"request_id": request_id, **arguments})
                assert result.structured_content is not None, result.content
                variants[server, request_id] = result.structured_content["file"]

            async with anyio.create_task_group() as tasks:
                for request_id in request_ids[:10]:
                    for server in range(3):
                        tasks.start_soon(variant, server, request_id)

    stats = sandbox.stats()
    stored = rows(tmp_path / "state")
    polls = {request_id: len(recorder.pollers(request_id)) for request_id in request_ids}
    pollers = {request_id: set(recorder.pollers(request_id)) for request_id in request_ids}
    print(  # the figures the issue asks for (pytest -s shows them)
        f"\nsubmits={stats.submits} jobs={len(request_ids)} "
        f"polls/job min={min(polls.values())} max={max(polls.values())} "
        f"mean={sum(polls.values()) / len(polls):.2f} pollers/job max={max(len(p) for p in pollers.values())} "
        f"media fetches/job={sorted(set(stats.media_fetches.values()))} "
        f"rows with their file={sum(stored[rid]['file'] is not None for rid in request_ids)}/30 "
        f"variants made={len(variants)} kept={sum(len(stored[rid]['variants']) for rid in request_ids[:10])}"
    )
    assert stats.submits == 30
    assert all(len(keys_seen) == 1 for keys_seen in pollers.values()), pollers
    assert all(stats.media_fetches.get(request_id) == 1 for request_id in request_ids), stats.media_fetches
    assert {job["status"] for job in waited.values()} == {"COMPLETED"}
    for request_id in request_ids:
        paths = {waited[server, request_id]["file"]["path"] for server in range(3)}
        assert len(paths) == 1 and Path(paths.pop()).is_file(), "one file per job, the same for every process"
        assert stored[request_id]["file"] is not None
    assert {answer["status"] for answer in cli_answers} == {"COMPLETED"}
    for request_id in request_ids[:10]:
        kept = {file["sha256"] for file in stored[request_id]["variants"].values()}
        for server in range(3):
            made = variants[server, request_id]
            assert Path(made["path"]).is_file()
            assert made["sha256"] in kept, f"the {made['format']} variant made by server {server} was lost"


async def _holder_pid(state: Path, request_id: str, pids: set[int]) -> int:
    """Wait until one of our processes holds the job's lease; return its pid."""
    while True:
        owner = lease_owner(state, request_id)
        if owner is not None and int(owner.split(":")[1]) in pids:
            return int(owner.split(":")[1])
        await anyio.sleep(0.05)


@dataclass
class Takeover:
    job: dict[str, Any]
    """The survivor's answer."""
    finished: float
    """Seconds from the kill until the survivor had recorded the job's file in the store."""
    answered: float
    """Seconds from the kill until the survivor's tool call answered."""
    fetches: int


async def _takeover(
    tmp_path: Path, fault: FaultKind, ready: str, *, lease: float = LEASE_SECONDS, graceful: bool = False
) -> Takeover:
    """Two servers wait on one job; kill -9 the lease holder once `ready` ("poll": its status poll is in flight,
    "download": its media download is), or with `graceful` close its stdin as a host does when it quits; the
    survivor's waiter must get the finished job."""
    keys = [f"key-{n}-{secrets.token_hex(6)}" for n in range(2)]
    config = SandboxConfig(api_key=keys[0], extra_api_keys=(keys[1],), speed=0.5, queue_seconds=0.2, drip_seconds=0.05)
    sandbox = create_sandbox(config)
    recorder = Recorder(sandbox.app)
    state = tmp_path / "state"
    async with serve_on_loopback(recorder) as gateway:
        env = server_env(tmp_path, PIXAZO_GATEWAY_URL=gateway, MMAUDIO_LEASE_SECONDS=str(lease))
        command = [sys.executable, "-m", "mmaudio_mcp"]
        async with (
            await anyio.open_process(command, env=env | {"PIXAZO_API_KEY": keys[0]}) as first,
            await anyio.open_process(command, env=env | {"PIXAZO_API_KEY": keys[1]}) as second,
        ):
            sessions = {first.pid: RawSession(first), second.pid: RawSession(second)}
            with anyio.fail_after(60):
                for session in sessions.values():
                    await session.handshake()
                submitter = sessions[first.pid]
                arguments = {"prompt": "rain", "duration": 2, "num_steps": 10, "wait_seconds": 0}
                sent = await submitter.send("tools/call", {"name": "generate_audio", "arguments": arguments})
                reply, _ = await submitter.until_response(sent)
                request_id = reply["result"]["structuredContent"]["request_id"]
                sandbox.add_fault(Fault(fault, times=1))
                waits: dict[int, int] = {}
                for pid, session in sessions.items():
                    wait = {"name": "check_status", "arguments": {"request_id": request_id, "wait_seconds": 60}}
                    waits[pid] = await session.send("tools/call", wait)
                holder = await _holder_pid(state, request_id, set(sessions))
                while not _in_flight(recorder, request_id, ready, tmp_path / "out"):  # noqa: ASYNC110 (a recorder)
                    await anyio.sleep(0.02)
                if graceful:
                    stdin = sessions[holder].process.stdin
                    assert stdin is not None
                    await stdin.aclose()
                else:
                    os.kill(holder, signal.SIGKILL)
                killed_at, killed_wall = time.monotonic(), time.time()
                (survivor,) = (pid for pid in sessions if pid != holder)
                answer, _ = await sessions[survivor].until_response(waits[survivor])
                answered = time.monotonic() - killed_at
    saved = datetime.fromisoformat(rows(state)[request_id]["updated_at"]).timestamp()
    fetches = sandbox.stats().media_fetches.get(request_id, 0)
    return Takeover(answer["result"]["structuredContent"], saved - killed_wall, answered, fetches)


def _in_flight(recorder: Recorder, request_id: str, ready: str, out: Path) -> bool:
    if ready == "poll":
        return any(call.end is None for call in recorder.calls if call.path == STATUS_PREFIX + request_id)
    downloading = any(call.end is None and "/cdn/" in call.path for call in recorder.calls)
    return downloading and any(out.glob(".*.part"))  # bytes are being written


@pytest.mark.parametrize(("fault", "ready"), [(FaultKind.POLL_HANG, "poll"), (FaultKind.SLOW_MEDIA, "download")])
async def test_kill_9_of_the_lease_holder_is_taken_over_within_the_lease(
    tmp_path: Path, fault: FaultKind, ready: str
) -> None:
    """The holder dies mid-poll (its poll hangs) or mid-download (its media drips): the other server's waiter gets
    the finished job, with its file, once the lease has run out (plus one poll and the download). The temporary
    file of the killed download is removed when a server next starts."""
    seen = await _takeover(tmp_path, fault, ready)
    print(
        f"\nkill -9 mid-{ready} (lease {LEASE_SECONDS:g} s): the survivor had the file {seen.finished:.2f} s after "
        f"the kill, its call answered after {seen.answered:.2f} s; media fetches {seen.fetches}"
    )
    assert seen.job["status"] == "COMPLETED"
    assert Path(seen.job["file"]["path"]).is_file()
    assert seen.fetches == (2 if ready == "download" else 1), "only an interrupted download is fetched again"
    # Bounded by the lease, not by a 30 s HTTP timeout or the 60 s wait (a generous bound, not a benchmark).
    assert seen.finished < LEASE_SECONDS + 8
    if ready == "download":  # the killed download's temporary file goes when the next server starts
        out = tmp_path / "out"
        assert list(out.glob(".*.part")), "kill -9 mid-download leaves a temporary file"
        env = server_env(tmp_path, PIXAZO_API_KEY="unused")
        async with await anyio.open_process([sys.executable, "-m", "mmaudio_mcp"], env=env) as restarted:
            with anyio.fail_after(20):
                await RawSession(restarted).handshake()
                while list(out.glob(".*.part")):  # noqa: ASYNC110 (the clean-up runs in the background)
                    await anyio.sleep(0.05)
            restarted.terminate()


async def test_a_holder_that_shuts_down_cleanly_hands_its_jobs_over_at_once(tmp_path: Path) -> None:
    """The host of the lease holder quits (stdin closes) mid-poll: the lease is released on the way out, so the
    other server takes over without waiting for a 30 s lease to run out."""
    seen = await _takeover(tmp_path, FaultKind.POLL_HANG, "poll", lease=30.0, graceful=True)
    print(f"\nclean shutdown of the holder mid-poll (lease 30 s): survivor had the file after {seen.finished:.2f} s")
    assert seen.job["status"] == "COMPLETED"
    assert seen.finished < 15, "handed over on shutdown, not at the end of the lease"
