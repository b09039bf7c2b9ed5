"""Bounded load test: N MCP clients over streamable HTTP, each generating against the sandbox for S s, with faults.

Two child processes, both on 127.0.0.1 ports picked free: the sandbox (`python -m mmaudio_mcp sandbox --port <p>
--speed 1.0`) and the server (`python -m mmaudio_mcp serve --transport streamable-http --port <q>`, with a random
`MMAUDIO_HTTP_TOKEN`, pointed at the sandbox through `PIXAZO_GATEWAY_URL`; not `--sandbox`, which would run a
sandbox inside the server where this script could neither inject faults nor read its statistics). The server uses
its default poll policy, which assumes real time, so the sandbox runs at speed 1.0 and every job is the shortest
one: duration 2, num_steps 10, i.e. 1 s queued + 3.5 s processing = 4.5 s. The prompt is "a bell", the sandbox's
cheapest WAV to synthesize (~50 ms of its CPU per job).

Phases:

1. start both children, wait for their /healthz; one warm-up `generate_audio` through a separate client (the
   client's first output-schema validation imports jsonschema, ~2 s of CPU in *this* process).
2. connect N SDK clients (`mcp.Client(streamable_http_client(...))`, each with its own httpx2 client and
   connection; bearer token in the headers), then read the server's RSS/threads/CPU ("start").
3. for S seconds every client loops: `generate_audio(wait_seconds=60)`; after a success, `check_status` and
   `download_audio` on that job with probability 1/4 each; after an error that names a completed job whose audio
   could not be saved, `download_audio` on it (what the error text tells the caller to do); after a FAILED/ERROR
   job, `check_status` on it with probability 1/4. No call starts after the deadline; calls in flight finish.
   Meanwhile a fault task keeps the faults posted to `POST /_sandbox/faults` at `--fault-rate` (10%) of the
   `generate_audio` calls started so far: each fault is `times: 1` (it hits exactly one matching request, whichever
   comes next, whoever's job it is) and its kind is drawn uniformly (seeded) from FAULT_KINDS. A sampler reads
   /proc/<server pid>/status every 250 ms.
4. clients disconnect; server RSS/threads ("end"); `GET /_sandbox/stats`; SIGTERM to the server, timed.
5. audit: the server's `jobs.sqlite3` is opened read-only and every job the sandbox created must have a row with
   its request_id ("lost" counts those that do not). Rows without a request_id are listed by status and error kind.

Overhead of a successful `generate_audio` = its wall time in the client minus the sandbox job's own duration
(`completed_at - submitted_at` in the sandbox's stats, 4.5 s here): the submit, the wait for the poll that sees the
job finished, the media download and check, the store writes, and MCP over HTTP both ways.

Run from the repo root: `.venv/bin/python benchmarks/load.py` (`--quick`: 5 clients for 8 s).

Replicas mode (`--replicas 2`): Debian's PostgreSQL (started in a temp folder, unix socket only) holds the jobs;
the servers are N replicas (`MMAUDIO_DATABASE_URL`, hence stateless HTTP; `MMAUDIO_LEASE_SECONDS` = `--lease`;
one output folder, as a shared volume would be) behind Debian's nginx round-robin, which the clients connect to.
Halfway through the load, replica 0 is killed with SIGKILL and started again `--restart-after` s later. The audit
reads the PostgreSQL rows; "duplicate submits" counts submits beyond one per generate_audio call, and media fetched
more than once per job is reported as before. RSS and CPU are the surviving replica's (replica 1). A submit whose
answer was on its way when replica 0 died leaves a SUBMITTING row without a request_id ("may have been billed"):
the audit counts its sandbox job as lost, since nothing can resume it (Pixazo has no way to list one's jobs).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import anyio
import httpx2
from _common import (
    RESULTS_DIR,
    ROOT,
    Stopwatch,
    command_line,
    free_port,
    percentile,
    print_header,
    sandbox_process,
    server_env_for,
    table,
    wait_healthy,
    write_results,
)
from concurrency import cpu_seconds, rss_and_threads
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from _common import SandboxProcess
    from mcp.types import CallToolResult

PROMPT: Final = "a bell"
DURATION: Final = 2
NUM_STEPS: Final = 10
WAIT_SECONDS: Final = 60.0
FOLLOW_UP: Final = 0.25
SAMPLE_INTERVAL: Final = 0.25
INJECT_TICK: Final = 0.1
WINDOW_SECONDS: Final = 10.0
BURST_SECONDS: Final = 15.0
"""All clients submit at once at the start, so jobs finish in waves until the clients drift apart; the overhead is
also reported for the calls started after this many seconds."""
FAULT_KINDS: Final = (
    "rate_limited",
    "poll_500",
    "job_failed",
    "job_error",
    "truncated_wav",
    "not_wav",
    "media_404",
    "insufficient_balance",
)
MEDIA_KINDS: Final = frozenset({"truncated_wav", "not_wav", "media_404", "media_other"})
REQUEST_ID: Final = re.compile(r"mmaudio-v2-text-to-audio_[0-9a-f-]{36}")
# The tool error texts (see errors.py, pixazo.py, audio.py, jobs.py), most specific first.
ERROR_MARKERS: Final = (
    ("(402)", "insufficient_balance"),
    ("(429)", "rate_limited"),
    ("ended FAILED", "job_failed"),
    ("ended ERROR", "job_error"),
    ("is truncated", "truncated_wav"),
    ("not a WAV", "not_wav"),
    ("(404)", "media_404"),
    ("could not be saved", "media_other"),
    ("HTTP 5", "upstream_5xx"),
    ("Internal error while waiting", "internal_error"),
)
TOOLS: Final = ("generate_audio", "check_status", "download_audio")


# --- one tool call ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    tool: str
    client: int
    started_s: float  # since the load phase began
    wall_s: float
    unix_start: float  # time.time() at the call and at its answer, to line up with the sandbox's clock
    unix_end: float
    outcome: str  # "ok", "ok_<STATUS>" (answered, not finished), an error kind, or "exception:<type>"
    request_id: str | None
    text: str = ""  # the error text (errors and exceptions only), cut short


def error_kind(text: str) -> str:
    """Name an is_error result by its text; a bare "Error executing tool X" means the tool raised something
    that is not a ToolError (the SDK hides its message): a server bug."""
    for marker, kind in ERROR_MARKERS:
        if marker in text:
            return kind
    if text.startswith("Error executing tool") and ":" not in text:
        return "unhandled_exception"
    return "other"


def classify(result: CallToolResult) -> tuple[str, str | None, str]:
    """(outcome, request_id, error text) of an answered tool call."""
    if result.is_error:
        text = " ".join(getattr(part, "text", "") for part in result.content)
        found = REQUEST_ID.search(text)
        return error_kind(text), found.group(0) if found else None, text[:300]
    content: dict[str, Any] = result.structured_content or {}
    request_id = content.get("request_id")
    status = content.get("status")
    outcome = "ok" if status == "COMPLETED" and content.get("file") else f"ok_{status}"
    return outcome, request_id if isinstance(request_id, str) else None, ""


# --- the run's shared state -------------------------------------------------------------------------------------


@dataclass
class Run:
    clients: int
    seconds: float
    fault_rate: float
    calls: list[Call] = field(default_factory=list[Call])
    connect_failures: list[str] = field(default_factory=list[str])
    protocol_versions: Counter[str] = field(default_factory=Counter[str])
    generates_started: int = 0
    faults_posted: Counter[str] = field(default_factory=Counter[str])
    fault_post_errors: int = 0
    settled: int = 0  # clients connected or failed to
    finished: int = 0
    all_settled: anyio.Event = field(default_factory=anyio.Event)
    go: anyio.Event = field(default_factory=anyio.Event)
    all_finished: anyio.Event = field(default_factory=anyio.Event)
    started_at: float = 0.0  # perf_counter at `go`
    deadline: float = 0.0
    rss_mib: list[float] = field(default_factory=list[float])
    threads: list[int] = field(default_factory=list[int])

    def settle(self) -> None:
        self.settled += 1
        if self.settled == self.clients:
            self.all_settled.set()

    def finish(self) -> None:
        self.finished += 1
        if self.finished == self.clients:
            self.all_finished.set()


def connect(url: str, token: str, mode: str) -> tuple[httpx2.AsyncClient, Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300))
    client = Client(streamable_http_client(url, http_client=http), mode="legacy" if mode == "legacy" else "auto")
    return http, client


async def timed_call(run: Run, index: int, client: Client, tool: str, arguments: dict[str, Any]) -> Call:
    started, unix_start = time.perf_counter(), time.time()
    try:
        result = await client.call_tool(tool, arguments)
    except Exception as exc:  # a protocol-level failure: counted, and the client goes on
        outcome, request_id, text = f"exception:{type(exc).__name__}", None, repr(exc)[:300]
    else:
        outcome, request_id, text = classify(result)
    wall = time.perf_counter() - started
    call = Call(tool, index, started - run.started_at, wall, unix_start, time.time(), outcome, request_id, text)
    run.calls.append(call)
    return call


async def follow_up(run: Run, index: int, client: Client, made: Call, rng: random.Random) -> None:
    """What an agent does after a generate_audio answer (see the module docstring)."""
    rid = made.request_id
    if rid is None:
        return
    if made.outcome == "ok":
        if rng.random() < FOLLOW_UP:
            await timed_call(run, index, client, "check_status", {"request_id": rid})
        if rng.random() < FOLLOW_UP:
            await timed_call(run, index, client, "download_audio", {"request_id": rid})
    elif made.outcome in MEDIA_KINDS:
        await timed_call(run, index, client, "download_audio", {"request_id": rid})
    elif made.outcome in ("job_failed", "job_error") and rng.random() < FOLLOW_UP:
        await timed_call(run, index, client, "check_status", {"request_id": rid})


async def client_task(run: Run, index: int, url: str, token: str, mode: str, seed: int) -> None:
    rng = random.Random(seed * 1000 + index)
    arguments = {"prompt": PROMPT, "duration": DURATION, "num_steps": NUM_STEPS, "wait_seconds": WAIT_SECONDS}
    http, client = connect(url, token, mode)
    entered = False
    try:
        async with http, client:
            entered = True
            run.protocol_versions[str(client.protocol_version)] += 1
            run.settle()
            await run.go.wait()
            while time.perf_counter() < run.deadline:
                run.generates_started += 1
                made = await timed_call(run, index, client, "generate_audio", arguments)
                if time.perf_counter() < run.deadline:
                    await follow_up(run, index, client, made, rng)
    except Exception as exc:  # connecting (or closing) failed: recorded, never fatal to the other clients
        run.connect_failures.append(f"client {index} ({'close' if entered else 'connect'}): {exc!r}"[:300])
        if not entered:
            run.settle()
    finally:
        run.finish()


async def inject_faults(run: Run, sandbox_url: str, seed: int) -> None:
    """Keep the faults posted at fault_rate of the generate_audio calls started so far, until the deadline."""
    rng = random.Random(seed)
    async with httpx2.AsyncClient(timeout=10) as http:
        while time.perf_counter() < run.deadline:
            while sum(run.faults_posted.values()) < int(run.generates_started * run.fault_rate):
                kind = rng.choice(FAULT_KINDS)
                reply = await http.post(f"{sandbox_url}/_sandbox/faults", json={"kind": kind, "times": 1})
                if reply.status_code == 201:
                    run.faults_posted[kind] += 1
                else:
                    run.fault_post_errors += 1
                    break
            await anyio.sleep(INJECT_TICK)


async def sample_server(run: Run, pid: int, stop: anyio.Event) -> None:
    while not stop.is_set():
        rss, threads = rss_and_threads(pid)
        run.rss_mib.append(rss)
        run.threads.append(threads)
        with anyio.move_on_after(SAMPLE_INTERVAL):
            await stop.wait()


# --- the server child -------------------------------------------------------------------------------------------


def server_env(tmp: Path, gateway_url: str, token: str) -> dict[str, str]:
    """What a deployment would set: PATH, a HOME of its own, key, gateway, folders, wait and the bearer token."""
    # The spending guard (60 jobs an hour by default) would stop a load of 400+ jobs a minute.
    return server_env_for(tmp, gateway_url, WAIT_SECONDS) | {"MMAUDIO_HTTP_TOKEN": token, "MMAUDIO_SPEND_CAP": "0"}


@dataclass
class Stopped:
    """How the server ended after SIGTERM. uvicorn shuts down gracefully (lifespan included), then re-raises the
    signal it caught, so a graceful exit shows as -15 (killed by SIGTERM), not 0."""

    exit_code: int | None = None
    seconds: float = float("nan")
    graceful: bool = False  # exited by itself within the grace period, with 0 or the re-raised SIGTERM
    killed: bool = False
    store_closed: bool = False


@asynccontextmanager
async def server_process(
    argv: list[str], port: int, env: dict[str, str], log: IO[bytes]
) -> AsyncGenerator[subprocess.Popen[bytes]]:
    """Start the server, wait for its /healthz (open route: the job store answered), always stop it afterwards."""
    process = subprocess.Popen(  # noqa: ASYNC220
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT
    )
    try:
        try:
            await wait_healthy(f"http://127.0.0.1:{port}", process)
        except RuntimeError:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering") from None
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def sigterm(process: subprocess.Popen[bytes], within: float) -> Stopped:
    """SIGTERM, then wait up to `within` s for the exit (SIGKILL after that): exit code and time to exit."""
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return Stopped(process.returncode, time.perf_counter() - started, graceful=False, killed=True)
    return Stopped(code, time.perf_counter() - started, graceful=code in (0, -signal.SIGTERM))


# --- the audit --------------------------------------------------------------------------------------------------


def audit(db_path: Path, sandbox_jobs: dict[str, Any], client_rids: set[str]) -> dict[str, Any]:
    """Compare the server's job store (read-only) with the jobs the sandbox created."""
    conn = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT request_id, status, record FROM jobs").fetchall()
    finally:
        conn.close()
    stored: dict[str, tuple[str, dict[str, Any]]] = {}
    without_rid: Counter[str] = Counter()
    for request_id, status, record in rows:
        parsed: dict[str, Any] = json.loads(record)
        if request_id is None:
            error = parsed.get("error") or {}
            without_rid[f"{status} ({error.get('kind', 'no error')})"] += 1
        else:
            stored[request_id] = (status, parsed)
    lost = sorted(set(sandbox_jobs) - set(stored))
    unfinished = [rid for rid, (status, _) in stored.items() if status not in ("COMPLETED", "FAILED", "ERROR")]
    mismatched = [
        rid
        for rid, (status, _) in stored.items()
        if rid in sandbox_jobs and status not in ("QUEUED", "PROCESSING") and status != sandbox_jobs[rid]["status"]
    ]
    no_file = [rid for rid, (status, record) in stored.items() if status == "COMPLETED" and not record.get("file")]
    return {
        "rows": len(rows),
        "rows_with_request_id": len(stored),
        "rows_by_status": dict(Counter(status for _, status, _ in rows)),
        "rows_without_request_id": dict(without_rid),
        "sandbox_jobs": len(sandbox_jobs),
        "lost": len(lost),
        "lost_request_ids": lost[:20],
        "rows_unknown_to_sandbox": len(set(stored) - set(sandbox_jobs)),
        "client_request_ids_without_row": len(client_rids - set(stored)),
        "rows_not_terminal": len(unfinished),
        "rows_status_differs_from_sandbox": len(mismatched),
        "completed_without_file": len(no_file),
        "completed_without_file_ids": no_file[:20],
    }


# --- the run ----------------------------------------------------------------------------------------------------


async def warm_up(url: str, token: str, mode: str) -> None:
    """One untimed generate_audio to completion through its own client (see the module docstring)."""
    http, client = connect(url, token, mode)
    async with http, client:
        reply = await client.call_tool(
            "generate_audio",
            {"prompt": PROMPT, "duration": DURATION, "num_steps": NUM_STEPS, "wait_seconds": WAIT_SECONDS},
        )
    if reply.is_error:
        raise RuntimeError(f"warm-up call failed: {reply.content}")


async def drive(
    run: Run, args: argparse.Namespace, url: str, token: str, sandbox: SandboxProcess, pid: int
) -> dict[str, Any]:
    """Phases 2-4 up to the clients' disconnection; returns the server's /proc figures and CPU seconds."""
    figures: dict[str, Any] = {}
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        for index in range(run.clients):
            tasks.start_soon(client_task, run, index, url, token, args.mode, args.seed)
        with anyio.fail_after(60):
            await run.all_settled.wait()
        figures["rss_start_mib"], figures["threads_start"] = rss_and_threads(pid)
        cpu = {"server": cpu_seconds(pid), "sandbox": cpu_seconds(sandbox.process.pid), "client": time.process_time()}
        run.started_at = time.perf_counter()
        run.deadline = run.started_at + run.seconds
        run.go.set()
        tasks.start_soon(inject_faults, run, sandbox.url, args.seed)
        tasks.start_soon(sample_server, run, pid, stop)
        await run.all_finished.wait()
        figures["load_wall_s"] = time.perf_counter() - run.started_at
        stop.set()
    await anyio.sleep(1.0)  # let the server notice the closed connections
    figures["rss_end_mib"], figures["threads_end"] = rss_and_threads(pid)
    figures["cpu_seconds"] = {
        "server": cpu_seconds(pid) - cpu["server"],
        "sandbox": cpu_seconds(sandbox.process.pid) - cpu["sandbox"],
        "client (this process)": time.process_time() - cpu["client"],
    }
    return figures


async def run_load(args: argparse.Namespace, server_log: IO[bytes], sandbox_log: IO[bytes]) -> dict[str, Any]:
    run = Run(args.clients, args.seconds, args.fault_rate)
    token = secrets.token_urlsafe(24)
    sandbox_port, server_port = free_port(), free_port()
    sandbox_argv = [sys.executable, "-m", "mmaudio_mcp", "sandbox", "--port", str(sandbox_port)]
    sandbox_argv += ["--speed", str(args.speed)]
    server_argv = [sys.executable, "-m", "mmaudio_mcp", "serve", "--transport", "streamable-http"]
    server_argv += ["--port", str(server_port)]
    url = f"http://127.0.0.1:{server_port}/mcp"
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        (Path(tmp) / "home").mkdir()
        async with sandbox_process(sandbox_argv, sandbox_port, stderr=sandbox_log) as sandbox:
            env = server_env(Path(tmp), sandbox.url, token)
            async with server_process(server_argv, server_port, env, server_log) as server:
                pid: int = server.pid
                rss_idle, threads_idle = rss_and_threads(pid)
                await warm_up(url, token, args.mode)
                figures = await drive(run, args, url, token, sandbox, pid)
                stats = await sandbox.stats()
                stopped = sigterm(server, args.stop_timeout)
            # SQLite deletes the -wal file when the last connection closes: its absence shows the lifespan closed
            # the store on the way out.
            stopped.store_closed = not (Path(tmp) / "state" / "jobs.sqlite3-wal").exists()
            db = audit(
                Path(tmp) / "state" / "jobs.sqlite3", stats["jobs"], {c.request_id for c in run.calls if c.request_id}
            )
    return (
        summarize(run, stats, db)
        | figures
        | {
            "argv": {"sandbox": sandbox_argv, "server": server_argv},
            "server_env_names": sorted(env),
            "rss_idle_mib": rss_idle,
            "threads_idle": threads_idle,
            "rss_peak_mib": max(run.rss_mib, default=float("nan")),
            "threads_peak": max(run.threads, default=0),
            "sigterm": asdict(stopped),
            "raw_rss_mib": run.rss_mib,
        }
    )


# --- replicas mode ----------------------------------------------------------------------------------------------


@dataclass
class Replicas:
    """N replica processes (argv per port, one environment each) that can be killed and started again."""

    argvs: list[list[str]]
    envs: list[dict[str, str]]
    log: IO[bytes]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list[subprocess.Popen[bytes]])
    events: list[str] = field(default_factory=list[str])

    async def start(self, index: int) -> None:
        process = subprocess.Popen(  # noqa: ASYNC220
            self.argvs[index],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            env=self.envs[index],
            cwd=ROOT,
        )
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)
        await wait_healthy(f"http://127.0.0.1:{self.argvs[index][-1]}", process)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


async def kill_and_restart(run: Run, replicas: Replicas, restart_after: float) -> None:
    """Halfway through the load, SIGKILL replica 0, then start it again."""
    await run.go.wait()
    await anyio.sleep(run.seconds / 2)
    replicas.processes[0].kill()
    replicas.processes[0].wait(timeout=10)
    killed = time.perf_counter() - run.started_at
    replicas.events.append(f"replica 0 SIGKILLed at {killed:.1f} s")
    await anyio.sleep(restart_after)
    started = time.perf_counter()
    await replicas.start(0)
    replicas.events.append(
        f"replica 0 started again at {started - run.started_at:.1f} s, "
        f"healthy {time.perf_counter() - started:.1f} s later"
    )


async def audit_postgres(url: str, sandbox_jobs: dict[str, Any], client_rids: set[str]) -> dict[str, Any]:
    """The same audit as `audit`, on the replicas' PostgreSQL rows (copied into a temporary SQLite table)."""
    import asyncpg  # pyright: ignore[reportMissingTypeStubs]

    conn = await asyncpg.connect(url)
    try:
        fetched = await conn.fetch("SELECT request_id, status, record::text FROM mmaudio_jobs")
    finally:
        await conn.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "copy.sqlite3"
        copy = sqlite3.connect(path)
        copy.execute("CREATE TABLE jobs (request_id TEXT, status TEXT, record TEXT)")
        copy.executemany("INSERT INTO jobs VALUES (?, ?, ?)", [tuple(row) for row in fetched])
        copy.commit()
        copy.close()
        return audit(path, sandbox_jobs, client_rids)


async def run_replicas(args: argparse.Namespace, server_log: IO[bytes], sandbox_log: IO[bytes]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.services import start_nginx, start_postgres

    run = Run(args.clients, args.seconds, args.fault_rate)
    token = secrets.token_urlsafe(24)
    sandbox_port = free_port()
    sandbox_argv = [sys.executable, "-m", "mmaudio_mcp", "sandbox", "--port", str(sandbox_port)]
    sandbox_argv += ["--speed", str(args.speed)]
    ports = [free_port() for _ in range(args.replicas)]
    base_argv = [sys.executable, "-m", "mmaudio_mcp", "serve", "--transport", "streamable-http", "--port"]
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
        start_postgres() as postgres,
        start_nginx(ports) as nginx_port,
    ):
        database = postgres.database("load")
        url = f"http://127.0.0.1:{nginx_port}/mcp"
        async with sandbox_process(sandbox_argv, sandbox_port, stderr=sandbox_log) as sandbox:
            envs = []
            for n in range(args.replicas):
                (Path(tmp) / f"r{n}" / "home").mkdir(parents=True)
                env = server_env(Path(tmp) / f"r{n}", sandbox.url, token)
                env |= {"MMAUDIO_DATABASE_URL": database, "MMAUDIO_LEASE_SECONDS": str(args.lease)}
                env |= {"MMAUDIO_OUTPUT_DIR": str(Path(tmp) / "out")}
                envs.append(env)
            replicas = Replicas([[*base_argv, str(port)] for port in ports], envs, server_log)
            try:
                for n in range(args.replicas):
                    await replicas.start(n)
                pid = replicas.processes[-1].pid
                rss_idle, threads_idle = rss_and_threads(pid)
                await warm_up(url, token, args.mode)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(kill_and_restart, run, replicas, args.restart_after)
                    figures = await drive(run, args, url, token, sandbox, pid)
                stats = await sandbox.stats()
                stops = [sigterm(process, args.stop_timeout) for process in replicas.processes]
            finally:
                replicas.stop_all()
        db = await audit_postgres(database, stats["jobs"], {c.request_id for c in run.calls if c.request_id})
    report = summarize(run, stats, db)
    # Billed jobs beyond one per generate_audio call (+1: the warm-up). Submits refused with 429/402 and retried are
    # not jobs, so they are not counted.
    report["duplicate_submits"] = max(len(stats["jobs"]) - run.generates_started - 1, 0)
    return (
        report
        | figures
        | {
            "replicas": args.replicas,
            "lease_seconds": args.lease,
            "replica_events": replicas.events,
            "argv": {"sandbox": sandbox_argv, "server": replicas.argvs},
            "server_env_names": sorted(envs[0]),
            "rss_idle_mib": rss_idle,
            "threads_idle": threads_idle,
            "rss_peak_mib": max(run.rss_mib, default=float("nan")),
            "threads_peak": max(run.threads, default=0),
            "sigterm": asdict(stops[-1]) | {"store_closed": True},
            "sigterm_all": [asdict(stop) for stop in stops],
            "raw_rss_mib": run.rss_mib,
        }
    )


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values, default=float("nan")),
    }


def overhead_figures(run: Run, jobs: dict[str, Any], media: dict[str, int]) -> dict[str, Any]:
    """Overhead of the successful generate_audio calls: all, those after the opening burst, the fault-free path
    (one status poll, one media fetch), and its three parts on the wall clock shared with the sandbox."""
    ok = [c for c in run.calls if c.tool == "generate_audio" and c.outcome == "ok" and c.request_id in jobs]
    timing = {c.request_id: jobs[c.request_id] for c in ok}

    def overhead(c: Call) -> float:
        t = timing[c.request_id]
        return c.wall_s - (t["completed_at"] - t["submitted_at"])

    clean = [c for c in ok if timing[c.request_id]["polls"] == 1 and media.get(str(c.request_id), 0) == 1]
    seen = [c for c in ok if timing[c.request_id]["first_terminal_poll_at"] is not None]
    return {
        "overhead_s": _spread([overhead(c) for c in ok]),
        "overhead_after_burst_s": _spread([overhead(c) for c in ok if c.started_s >= BURST_SECONDS]),
        "overhead_clean_path_s": _spread([overhead(c) for c in clean]),
        "overhead_parts_s": {
            "before_submit": _spread([timing[c.request_id]["submitted_at"] - c.unix_start for c in ok]),
            "detection_lag": _spread(
                [timing[c.request_id]["first_terminal_poll_at"] - timing[c.request_id]["completed_at"] for c in seen]
            ),
            "after_detection": _spread([c.unix_end - timing[c.request_id]["first_terminal_poll_at"] for c in seen]),
        },
        "raw_overhead": [
            {"started_s": c.started_s, "overhead_s": overhead(c), "polls": timing[c.request_id]["polls"]}
            | {"media_fetches": media.get(str(c.request_id), 0)}
            for c in ok
        ],
    }


def summarize(run: Run, stats: dict[str, Any], db: dict[str, Any]) -> dict[str, Any]:
    jobs: dict[str, Any] = stats["jobs"]
    per_tool: dict[str, Any] = {}
    for tool in TOOLS:
        calls = [call for call in run.calls if call.tool == tool]
        walls = [call.wall_s for call in calls if not call.outcome.startswith("exception:")]
        per_tool[tool] = {
            "made": len(calls),
            "answered": len(walls),
            "outcomes": dict(Counter(call.outcome for call in calls).most_common()),
            "wall_p50_s": percentile(walls, 50),
            "wall_p99_s": percentile(walls, 99),
            "wall_max_s": max(walls, default=float("nan")),
        }
    media = stats["media_fetches"]
    lags = [t["first_terminal_poll_at"] - t["completed_at"] for t in jobs.values() if t["first_terminal_poll_at"]]
    exceptions = [c for c in run.calls if c.outcome.startswith("exception:")]
    errors = Counter(f"{c.tool}: {c.outcome}" for c in run.calls if not c.outcome.startswith(("ok", "exception:")))
    return {
        "clients": run.clients,
        "seconds": run.seconds,
        "protocol_versions": dict(run.protocol_versions),
        "connect_failures": run.connect_failures,
        "tool_calls_made": len(run.calls),
        "tool_calls_answered": len(run.calls) - len(exceptions),
        "exceptions": dict(Counter(c.outcome for c in exceptions)),
        "exception_samples": [c.text for c in exceptions[:5]],
        "errors_by_kind": dict(errors.most_common()),
        "error_samples": {kind: next(c.text for c in run.calls if f"{c.tool}: {c.outcome}" == kind) for kind in errors},
        "per_tool": per_tool,
        "generates_started": run.generates_started,
        "faults_posted": dict(run.faults_posted.most_common()),
        "faults_posted_total": sum(run.faults_posted.values()),
        "fault_post_errors": run.fault_post_errors,
        **overhead_figures(run, jobs, media),
        "job_seconds_p50": percentile([t["completed_at"] - t["submitted_at"] for t in jobs.values()], 50),
        "detection_lag_s": {"p50": percentile(lags, 50), "p99": percentile(lags, 99)},
        "sandbox": {
            "submits": stats["submits"],
            "jobs_created": len(jobs),
            "submits_refused": stats["submits"] - len(jobs),
            "jobs_by_final_status": dict(Counter(t["status"] for t in jobs.values())),
            "polls": sum(stats["polls"].values()),
            "polls_per_job_mean": sum(t["polls"] for t in jobs.values()) / max(len(jobs), 1),
            "media_fetches": sum(media.values()),
            "jobs_fetched_more_than_once": sum(1 for count in media.values() if count > 1),
        },
        "audit": db,
        "raw": {"calls": [asdict(c) | {"text": c.text[:120]} for c in run.calls]},
    }


# --- output -----------------------------------------------------------------------------------------------------


def _outcomes(outcomes: dict[str, int]) -> str:
    errors = {kind: n for kind, n in outcomes.items() if kind != "ok"}
    return ", ".join(f"{kind} {n}" for kind, n in errors.items()) or "-"


def render(report: dict[str, Any]) -> str:
    tool_rows: list[list[object]] = [
        [tool, t["made"], t["answered"], t["outcomes"].get("ok", 0), _outcomes(t["outcomes"]), *_walls(t)]
        for tool, t in report["per_tool"].items()
    ]
    headers = ["tool", "made", "answered", "ok", "isError by kind", "wall p50 (s)", "wall p99 (s)"]
    windows: dict[int, list[float]] = {}
    for sample in report["raw_overhead"]:
        windows.setdefault(int(sample["started_s"] // WINDOW_SECONDS), []).append(sample["overhead_s"])
    window_rows: list[list[object]] = [
        [f"{key * WINDOW_SECONDS:g}-{(key + 1) * WINDOW_SECONDS:g}", len(values), *_p50_p99(values)]
        for key, values in sorted(windows.items())
    ]
    return (
        table(headers, tool_rows)
        + "\n\n"
        + table(["load run", "value"], _run_rows(report))
        + "\n\n"
        + table(["generate_audio started (s)", "ok calls", "overhead p50 (s)", "overhead p99 (s)"], window_rows)
    )


def _p50_p99(values: list[float]) -> list[object]:
    return [percentile(values, 50), percentile(values, 99)]


def _walls(figures: dict[str, Any]) -> list[object]:
    return [figures["wall_p50_s"], figures["wall_p99_s"]]


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "0"


def _run_rows(r: dict[str, Any]) -> list[list[object]]:
    box, db, over, clean = r["sandbox"], r["audit"], r["overhead_s"], r["overhead_clean_path_s"]
    steady = r["overhead_after_burst_s"]
    cpu, stop, lag = r["cpu_seconds"], r["sigterm"], r["detection_lag_s"]
    calls, posted, generates = r["tool_calls_made"], r["faults_posted_total"], max(r["generates_started"], 1)
    killed = " (killed)" if stop["killed"] else ""
    return [
        ["clients x seconds (protocol)", f"{r['clients']} x {r['seconds']:g} s ({', '.join(r['protocol_versions'])})"],
        ["load phase wall (s)", r["load_wall_s"]],
        ["tool calls answered / made", f"{r['tool_calls_answered']} / {calls} ({calls / r['load_wall_s']:.1f}/s)"],
        ["protocol-level errors / failed connects", f"{sum(r['exceptions'].values())} / {len(r['connect_failures'])}"],
        [
            "faults posted (times=1 each)",
            f"{posted} = {posted / generates:.1%} of {generates} generate calls: {_listing(r['faults_posted'])}",
        ],
        ["sandbox: submits / jobs / refused", f"{box['submits']} / {box['jobs_created']} / {box['submits_refused']}"],
        ["sandbox: jobs by final status", _listing(box["jobs_by_final_status"])],
        [
            "sandbox: polls per job (mean) / jobs fetched > once",
            f"{box['polls_per_job_mean']:.2f} / {box['jobs_fetched_more_than_once']}",
        ],
        ["**jobs lost** (sandbox jobs with no row)", f"**{db['lost']}** of {db['sandbox_jobs']}"],
        ["rows without request_id", _listing(db["rows_without_request_id"])],
        [
            "rows not terminal / status differs / COMPLETED without file",
            f"{db['rows_not_terminal']} / {db['rows_status_differs_from_sandbox']} / {db['completed_without_file']}",
        ],
        [
            "generate_audio overhead p50 / p95 / p99 / max (s)",
            f"{over['p50']:.2f} / {over['p95']:.2f} / **{over['p99']:.2f}** / {over['max']:.2f} (n={over['n']})",
        ],
        [
            f"overhead, calls started after {BURST_SECONDS:g} s: p50 / p99 (s)",
            f"{steady['p50']:.2f} / **{steady['p99']:.2f}** (n={steady['n']})",
        ],
        [
            "overhead, jobs with 1 poll and 1 fetch: p50 / p99 (s)",
            f"{clean['p50']:.2f} / {clean['p99']:.2f} (n={clean['n']})",
        ],
        [
            "overhead parts p50 / p99 (s): before submit; detection lag; after detection",
            "; ".join(f"{part['p50']:.2f} / {part['p99']:.2f}" for part in r["overhead_parts_s"].values()),
        ],
        [
            "job's own duration p50 / detection lag of all jobs p50 / p99 (s)",
            f"{r['job_seconds_p50']:.2f} / {lag['p50']:.2f} / {lag['p99']:.2f}",
        ],
        [
            "server RSS idle / start / peak / end (MiB)",
            f"{r['rss_idle_mib']:.1f} / {r['rss_start_mib']:.1f} / {r['rss_peak_mib']:.1f} / "
            f"**{r['rss_end_mib']:.1f}**",
        ],
        [
            "server threads idle / start / peak / end",
            f"{r['threads_idle']} / {r['threads_start']} / {r['threads_peak']} / {r['threads_end']}",
        ],
        [
            "CPU s in load: server / sandbox / clients",
            f"{cpu['server']:.1f} / {cpu['sandbox']:.1f} / {cpu['client (this process)']:.1f}",
        ],
        [
            "SIGTERM: exit code, seconds to exit, store closed",
            f"{stop['exit_code']}, {stop['seconds']:.2f} s{killed}, {'yes' if stop['store_closed'] else 'NO'}",
        ],
    ]


async def amain(args: argparse.Namespace, server_log: IO[bytes], sandbox_log: IO[bytes]) -> None:
    clock = Stopwatch()
    facts = print_header(
        f"{args.clients} streamable-HTTP MCP clients x {args.seconds:g} s of generate_audio (duration {DURATION}, "
        f"num_steps {NUM_STEPS}: {1 + 2 + 0.075 * DURATION * NUM_STEPS:g} s per job at sandbox speed {args.speed:g}), "
        f"faults at {args.fault_rate:.0%} of generate calls; logs: {args.log_dir}"
    )
    with anyio.fail_after(args.seconds + args.timeout_margin):
        if args.replicas:
            report = await run_replicas(args, server_log, sandbox_log)
        else:
            report = await run_load(args, server_log, sandbox_log)
    print(render(report))
    if args.replicas:
        print(f"replicas: {args.replicas} behind nginx, lease {args.lease:g} s; " + "; ".join(report["replica_events"]))
        print(f"duplicate submits (billed jobs beyond one per generate call): {report['duplicate_submits']}")
    lost, exceptions = report["audit"]["lost"], sum(report["exceptions"].values())
    stop = report["sigterm"]
    print(
        f"jobs lost: {lost}; protocol-level errors: {exceptions}; SIGTERM: graceful {stop['graceful']}, "
        f"store closed {stop['store_closed']}"
    )
    if report["error_samples"]:
        print("error samples:")
        for kind, text in report["error_samples"].items():
            print(f"  {kind}: {text[:160]}")
    print(f"finished in {clock.seconds():.1f} s")
    print(f"command: {command_line()}")
    write_results(
        "load-replicas" if args.replicas else "load",
        {"command": command_line(), "args": vars(args), "machine": facts, **report},
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=50, help="concurrent MCP clients (default 50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each client loops (default 60)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 clients for 8 s")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="faults per generate_audio call (default 0.1)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="sandbox speed (default 1.0: the server's default poll policy assumes real time)",
    )
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="SDK client connect mode")
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault and follow-up draws")
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="SIGTERM grace before SIGKILL (s)")
    parser.add_argument("--timeout-margin", type=float, default=120.0, help="hard limit = seconds + this")
    parser.add_argument("--log-dir", default=tempfile.gettempdir(), help="children's stderr: bench-load-*.log")
    parser.add_argument(
        "--replicas", type=int, default=0, help="N replicas on PostgreSQL behind nginx, one killed halfway (0: off)"
    )
    parser.add_argument("--lease", type=float, default=5.0, help="replicas mode: MMAUDIO_LEASE_SECONDS (default 5)")
    parser.add_argument("--restart-after", type=float, default=3.0, help="replicas mode: seconds dead (default 3)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 5, 8.0
    return args


def scan_log(path: Path) -> dict[str, Any]:
    """Count the server log's tracebacks and ERROR/WARNING lines (it logs at WARNING), with a few samples."""
    lines = path.read_text(errors="replace").splitlines()
    flagged = [line for line in lines if "Traceback" in line or " ERROR " in line or " WARNING " in line]
    return {
        "lines": len(lines),
        "tracebacks": sum("Traceback" in line for line in lines),
        "errors": sum(" ERROR " in line for line in lines),
        "warnings": sum(" WARNING " in line for line in lines),
        "samples": [line[:240] for line in flagged[:8]],
    }


def main() -> None:
    args = parse_args()
    folder = Path(args.log_dir)
    with (
        (folder / "bench-load-server.log").open("wb") as server_log,
        (folder / "bench-load-sandbox.log").open("wb") as sandbox_log,
    ):
        anyio.run(amain, args, server_log, sandbox_log)
    log = scan_log(folder / "bench-load-server.log")
    print(
        f"server log: {log['lines']} lines, {log['tracebacks']} tracebacks, {log['errors']} ERROR, "
        f"{log['warnings']} WARNING"
    )
    for line in log["samples"]:
        print(f"  {line}")
    results = RESULTS_DIR / ("load-replicas.json" if args.replicas else "load.json")
    results.write_text(json.dumps(json.loads(results.read_text()) | {"server_log": log}, indent=2) + "\n")


if __name__ == "__main__":
    main()
