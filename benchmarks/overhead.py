"""What our layers add: a tool round trip on a finished job, and the audio download path, each beside a bare baseline.

(a) `check_status` on a finished job (answered from the job store) through the in-memory MCP client, against the
    round trip of a trivial `async def ping() -> str` tool on a bare `MCPServer`, also in-memory. Calls alternate in
    blocks (ours, bare, bare, ours, ...) so both see the same noise. Both include the SDK client's validation of the
    structured result against the tool's output schema (ours has the larger schema).
(b) Download of a 30 s float WAV (5.29 MB) from the sandbox served on real loopback HTTP (uvicorn, same process):
    * ours, fresh job: `JobService.download()` on a job never fetched: one status poll, the streamed fetch into a
      temp file (hashed and written chunk by chunk in worker threads), WAV check, rename, store update, and the
      verification `download()` then does on the stored file;
    * ours, re-fetch: the same call after deleting the saved file (no status poll: the job is known complete);
    * bare: `httpx2.AsyncClient.stream("GET", media_url)` writing chunks to a file.
    The three alternate (rotating order) over N rounds; each job's WAV is synthesized by the sandbox before timing.
    Peak Python memory (tracemalloc) is taken during one more download of each kind, plus a bare `aread()` of the whole
    body as the "holds the whole file" reference.

Run from the repo root: `.venv/bin/python benchmarks/overhead.py` (`--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import tracemalloc
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import httpx2
from _common import (
    Stopwatch,
    command_line,
    percentile,
    print_header,
    ratio,
    sandbox_settings,
    table,
    write_results,
)
from mcp import Client
from mcp.server import MCPServer
from pydantic import SecretStr

from mmaudio_mcp.jobs import open_job_service
from mmaudio_mcp.models import GenerationParams
from mmaudio_mcp.pixazo import KEY_HEADER
from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox
from mmaudio_mcp.schedule import PollPolicy
from mmaudio_mcp.server import build_server
from mmaudio_mcp.settings import Settings
from mmaudio_mcp.transport import serve_on_loopback

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import ASGIApp

    from mmaudio_mcp.jobs import JobService

SPEED: Final = 0.02
BLOCK: Final = 25  # calls per block in (a)
PROMPT: Final = "rain on a tin roof"
WAV_SECONDS: Final = 30
MB: Final = 1_000_000


# --- (a) tool round trip ----------------------------------------------------------------------------------------


def bare_server() -> MCPServer:
    server = MCPServer("bare", log_level="WARNING")

    @server.tool()
    async def ping() -> str:
        """Answer at once."""
        return "pong"

    return server


async def _timed(call: Callable[[], Awaitable[Any]], count: int, into: list[float]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        await call()
        into.append((time.perf_counter() - started) * 1000)


async def tool_round_trip(calls: int, tmp: Path) -> dict[str, Any]:
    sandbox = create_sandbox(SandboxConfig(speed=SPEED))
    settings = sandbox_settings(tmp, "http://127.0.0.1:8787", wait_seconds=20)
    ours_server = build_server(
        settings, http_transport=httpx2.ASGITransport(app=sandbox.app), policy=PollPolicy().scaled(SPEED)
    )
    ours: list[float] = []
    bare: list[float] = []
    async with Client(ours_server) as client, Client(bare_server()) as baseline:
        made = await client.call_tool("generate_audio", {"prompt": PROMPT, "duration": 2, "num_steps": 10})
        content: dict[str, Any] = made.structured_content or {}
        if content.get("status") != "COMPLETED" or not content.get("file"):
            raise RuntimeError(f"the job did not finish: {made.content}")
        request_id = content["request_id"]
        polls_before = sandbox.stats().polls.get(request_id, 0)

        async def check() -> None:
            result = await client.call_tool("check_status", {"request_id": request_id})
            if result.is_error:
                raise RuntimeError(f"check_status failed: {result.content}")

        async def ping() -> None:
            result = await baseline.call_tool("ping", {})
            if result.is_error:
                raise RuntimeError(f"ping failed: {result.content}")

        await _timed(check, 20, [])  # warm-up, untimed (first structured-result validation loads jsonschema)
        await _timed(ping, 20, [])
        blocks = max(calls // BLOCK, 1)
        for block in range(blocks):
            pair = ((check, ours), (ping, bare)) if block % 2 == 0 else ((ping, bare), (check, ours))
            for call, into in pair:
                await _timed(call, BLOCK, into)
        polls_after = sandbox.stats().polls.get(request_id, 0)
        validation = {
            "ours": await _client_validation_ms(client, "check_status", {"request_id": request_id}),
            "bare": await _client_validation_ms(baseline, "ping", {}),
        }
    domain = await _domain_check(settings, sandbox.app, request_id, len(ours))
    return {
        "client_validation_ours_ms": validation["ours"],
        "client_validation_bare_ms": validation["bare"],
        "domain_p50_ms": percentile(domain, 50),
        "domain_p90_ms": percentile(domain, 90),
        "calls_each": len(ours),
        "ours_p50_ms": percentile(ours, 50),
        "ours_p90_ms": percentile(ours, 90),
        "bare_p50_ms": percentile(bare, 50),
        "bare_p90_ms": percentile(bare, 90),
        "added_p50_ms": percentile(ours, 50) - percentile(bare, 50),
        "added_p90_ms": percentile(ours, 90) - percentile(bare, 90),
        "ratio_p50": ratio(percentile(ours, 50), percentile(bare, 50)),
        "upstream_polls_during_checks": polls_after - polls_before,
        "raw": {"ours_ms": ours, "bare_ms": bare},
    }


async def _client_validation_ms(client: Client, tool: str, arguments: dict[str, Any]) -> float:
    """What the SDK client does to every structured result: validate it against the tool's output schema with a
    compiled jsonschema validator and `best_match` (mcp/client/session.py validate_tool_result). Median of 200."""
    from jsonschema.exceptions import best_match  # pyright: ignore[reportUnknownVariableType] (untyped upstream)
    from jsonschema.validators import validator_for
    from referencing import Registry

    listed = {listed.name: listed for listed in (await client.list_tools()).tools}
    schema = listed[tool].output_schema or {}
    validator = validator_for(schema)(schema, registry=Registry())
    content = (await client.call_tool(tool, arguments)).structured_content
    samples: list[float] = []
    for _ in range(200):
        started = time.perf_counter()
        if cast("object", best_match(validator.iter_errors(content))) is not None:
            raise RuntimeError(f"{tool}'s result does not match its output schema")
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 50)


async def _domain_check(settings: Settings, app: ASGIApp, request_id: str, calls: int) -> list[float]:
    """`JobService.check()` alone, without MCP: a second service on the same (now closed) store."""
    timings: list[float] = []
    async with open_job_service(settings, http_transport=httpx2.ASGITransport(app=app)) as jobs:

        async def check() -> None:
            job = await jobs.check(request_id)
            if job.file is None:
                raise RuntimeError("the finished job lost its file")

        await _timed(check, 20, [])
        await _timed(check, calls, timings)
    return timings


# --- (b) download throughput ------------------------------------------------------------------------------------


class Downloads:
    """A sandbox on loopback, our job service pointed at it, and a bare HTTP client, for one run."""

    def __init__(self, jobs: JobService, http: httpx2.AsyncClient, base_url: str, tmp: Path) -> None:
        self.jobs = jobs
        self.http = http
        self.base_url = base_url
        self.tmp = tmp
        self.size = 0
        self.chunks = 0

    async def fresh_job(self) -> tuple[str, str]:
        """Submit a job (untimed), read its media URL, and fetch the media once so its WAV exists; return both."""
        job = await self.jobs.generate(GenerationParams(prompt=PROMPT, duration=WAV_SECONDS), wait_seconds=0)
        reply = await self.http.get(
            f"{self.base_url}/v2/requests/status/{job.request_id}", headers={KEY_HEADER: SANDBOX_API_KEY}
        )
        media_url: str = reply.json()["output"]["media_url"][0]
        warm = await self.http.get(media_url)
        warm.raise_for_status()
        self.size = len(warm.content)
        return job.request_id, media_url

    async def ours(self, request_id: str) -> float:
        started = time.perf_counter()
        job = await self.jobs.download(request_id)
        elapsed = time.perf_counter() - started
        if job.file is None or job.file.bytes != self.size:
            raise RuntimeError(f"our download of {request_id} is wrong: {job.file}")
        return elapsed

    async def ours_refetch(self, request_id: str) -> float:
        job = await self.jobs.check(request_id)
        assert job.file is not None
        await anyio.Path(job.file.path).unlink()  # a missing (or changed) file fails verification: fetched again
        return await self.ours(request_id)

    async def bare(self, media_url: str) -> float:
        dest = self.tmp / "bare.wav"
        started = time.perf_counter()
        async with self.http.stream("GET", media_url) as response:
            response.raise_for_status()
            chunks = 0
            with dest.open("wb") as file:
                async for chunk in response.aiter_bytes():
                    file.write(chunk)
                    chunks += 1
        elapsed = time.perf_counter() - started
        self.chunks = chunks
        if dest.stat().st_size != self.size:
            raise RuntimeError("bare download is the wrong size")
        return elapsed

    async def bare_read_all(self, media_url: str) -> float:
        started = time.perf_counter()
        response = await self.http.get(media_url)
        await anyio.Path(self.tmp / "bare-all.wav").write_bytes(response.content)
        return time.perf_counter() - started


async def _peak(work: Awaitable[Any]) -> float:
    """Peak traced Python memory (MiB) above the level before `work`."""
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    await work
    _, peak = tracemalloc.get_traced_memory()
    return (peak - before) / 2**20


async def download_throughput(rounds: int, tmp: Path) -> dict[str, Any]:
    sandbox = create_sandbox(SandboxConfig(speed=0.0))  # every job is complete at its first poll
    timings: dict[str, list[float]] = {"ours_fresh": [], "ours_refetch": [], "bare": []}
    async with AsyncExitStack() as stack:
        base_url = await stack.enter_async_context(serve_on_loopback(sandbox.app))
        jobs = await stack.enter_async_context(
            open_job_service(
                Settings(
                    api_key=SecretStr(SANDBOX_API_KEY),
                    gateway_url=base_url,
                    state_dir=tmp / "state",
                    output_dir=tmp / "out",
                ),
                policy=PollPolicy().scaled(0.01),
            )
        )
        http = await stack.enter_async_context(httpx2.AsyncClient(timeout=30))
        run = Downloads(jobs, http, base_url, tmp)
        for warm in range(2):  # untimed: first connections, first thread-pool workers, first WAV check
            request_id, media_url = await run.fresh_job()
            await run.ours(request_id)
            await run.bare(media_url)
            del warm
        orders = (("ours_fresh", "ours_refetch", "bare"), ("bare", "ours_fresh", "ours_refetch"))
        orders += (("ours_fresh", "bare", "ours_refetch"),)  # the fresh fetch of a job always precedes its re-fetch
        for index in range(rounds):
            request_id, media_url = await run.fresh_job()
            steps: dict[str, Callable[[], Awaitable[float]]] = {
                "ours_fresh": lambda rid=request_id: run.ours(rid),
                "ours_refetch": lambda rid=request_id: run.ours_refetch(rid),
                "bare": lambda url=media_url: run.bare(url),
            }
            for name in orders[index % len(orders)]:
                timings[name].append(await steps[name]())
        tracemalloc.start()
        try:
            request_id, media_url = await run.fresh_job()
            memory = {
                "ours_fresh_peak_mib": await _peak(run.ours(request_id)),
                "ours_refetch_peak_mib": await _peak(run.ours_refetch(request_id)),
                "bare_stream_peak_mib": await _peak(run.bare(media_url)),
                "bare_read_all_peak_mib": await _peak(run.bare_read_all(media_url)),
            }
        finally:
            tracemalloc.stop()
    size_mb = run.size / MB
    rates = {name: [size_mb / seconds for seconds in values] for name, values in timings.items()}
    result: dict[str, Any] = {"rounds": rounds, "file_bytes": run.size}
    for name, values in rates.items():
        result[f"{name}_mb_s_p50"] = percentile(values, 50)
        result[f"{name}_mb_s_p10"] = percentile(values, 10)
        result[f"{name}_ms_p50"] = percentile([t * 1000 for t in timings[name]], 50)
    result["ratio_fresh_vs_bare"] = ratio(result["ours_fresh_mb_s_p50"], result["bare_mb_s_p50"])
    result["ratio_refetch_vs_bare"] = ratio(result["ours_refetch_mb_s_p50"], result["bare_mb_s_p50"])
    # per-round ratios (same round, same noise) give a second, paired view
    paired = [o / b for o, b in zip(rates["ours_refetch"], rates["bare"], strict=True)]
    result["ratio_refetch_vs_bare_paired_p50"] = percentile(paired, 50)
    result["memory"] = memory
    result["chunks_per_download"] = run.chunks
    result["reference_costs_ms"] = await reference_costs(run.size, run.chunks, tmp)
    result["raw_seconds"] = timings
    return result


def _median_ms(work: Callable[[], object], repeats: int = 7) -> float:
    samples: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 50)


async def reference_costs(size: int, chunks: int, tmp: Path) -> dict[str, float]:
    """Costs of the steps our download adds over the bare one, measured alone in this run (medians of 7)."""
    data = os.urandom(size)
    written = iter(range(1_000_000))

    def write(*, sync: bool) -> None:
        path = tmp / f"reference-{next(written)}.bin"  # a new file each time: ext4 flushes a truncated rewrite
        with path.open("wb") as file:
            file.write(data)
            file.flush()
            if sync:
                os.fsync(file.fileno())

    hops: list[float] = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(chunks):
            await anyio.to_thread.run_sync(_noop)
        hops.append((time.perf_counter() - started) * 1000)
    return {
        f"{chunks}_thread_hops": percentile(hops, 50),
        "sha256_whole_file": _median_ms(lambda: hashlib.sha256(data).digest()),
        "write_file_with_fsync": _median_ms(lambda: write(sync=True)),
        "write_file_without_fsync": _median_ms(lambda: write(sync=False)),
    }


def _noop() -> None:
    return None


def render(calls: dict[str, Any], download: dict[str, Any]) -> str:
    call_rows: list[list[object]] = [
        ["check_status, finished job (ours)", calls["ours_p50_ms"], calls["ours_p90_ms"]],
        ["bare MCPServer ping() (baseline)", calls["bare_p50_ms"], calls["bare_p90_ms"]],
        ["added by us (ours - bare)", calls["added_p50_ms"], calls["added_p90_ms"]],
        ["of which JobService.check() alone, no MCP", calls["domain_p50_ms"], calls["domain_p90_ms"]],
        [
            "of which SDK client output-schema validation, ours - bare",
            calls["client_validation_ours_ms"] - calls["client_validation_bare_ms"],
            "",
        ],
        ["ours / bare", calls["ratio_p50"], ratio(calls["ours_p90_ms"], calls["bare_p90_ms"])],
    ]
    memory = download["memory"]
    download_rows: list[list[object]] = [
        [
            "ours: download() on a fresh job",
            download["ours_fresh_mb_s_p50"],
            download["ours_fresh_ms_p50"],
            download["ratio_fresh_vs_bare"],
            memory["ours_fresh_peak_mib"],
        ],
        [
            "ours: download() re-fetch (file deleted)",
            download["ours_refetch_mb_s_p50"],
            download["ours_refetch_ms_p50"],
            download["ratio_refetch_vs_bare"],
            memory["ours_refetch_peak_mib"],
        ],
        [
            "bare: httpx2 stream -> file (baseline)",
            download["bare_mb_s_p50"],
            download["bare_ms_p50"],
            1.0,
            memory["bare_stream_peak_mib"],
        ],
        ["bare: read whole body (memory reference)", "", "", "", memory["bare_read_all_peak_mib"]],
    ]
    costs = download["reference_costs_ms"]
    cost_rows: list[list[object]] = [[name.replace("_", " "), value] for name, value in costs.items()]
    return (
        table([f"(a) tool round trip, {calls['calls_each']} calls each", "p50 (ms)", "p90 (ms)"], call_rows)
        + "\n\n"
        + table(
            [
                f"(b) {download['file_bytes'] / MB:.2f} MB WAV, {download['rounds']} rounds",
                "MB/s p50",
                "ms p50",
                "vs bare",
                "peak traced MiB",
            ],
            download_rows,
        )
        + "\n\n"
        + table(["(b) reference costs, measured alone in this run", "ms p50"], cost_rows)
    )


async def amain(args: argparse.Namespace) -> None:
    clock = Stopwatch()
    facts = print_header(
        f"(a) {args.calls} calls each, in blocks of {BLOCK}, alternating; (b) {args.rounds} interleaved rounds. "
        "Warm-up: 20 untimed calls per tool in (a), 2 untimed downloads per path in (b)."
    )
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp, anyio.fail_after(args.timeout):
        calls = await tool_round_trip(args.calls, Path(tmp) / "a")
        download = await download_throughput(args.rounds, Path(tmp) / "b")
    print(render(calls, download))
    targets = {
        "download_ratio_ge_0.8_fresh": download["ratio_fresh_vs_bare"] >= 0.8,
        "download_ratio_ge_0.8_refetch": download["ratio_refetch_vs_bare"] >= 0.8,
        "download_memory_flat": download["memory"]["ours_fresh_peak_mib"]
        < 0.5 * download["memory"]["bare_read_all_peak_mib"],
    }
    print(f"check_status upstream polls during the timed calls: {calls['upstream_polls_during_checks']} (expect 0)")
    print(f"re-fetch vs bare, paired per round: x{download['ratio_refetch_vs_bare_paired_p50']:.2f} (median of ratios)")
    print("targets (reported, not asserted): " + ", ".join(f"{key}={value}" for key, value in targets.items()))
    print(f"finished in {clock.seconds():.1f} s")
    write_results(
        "overhead",
        {
            "command": command_line(),
            "args": vars(args),
            "machine": facts,
            "tool_round_trip": calls,
            "download": download,
            "targets": targets,
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 calls, 3 download rounds")
    parser.add_argument("--calls", type=int, help="timed calls per tool in (a) (default 500; --quick: 50)")
    parser.add_argument("--rounds", type=int, help="download rounds in (b) (default 20; --quick: 3)")
    parser.add_argument("--timeout", type=float, default=170.0, help="hard limit for the whole run, seconds")
    args = parser.parse_args()
    if args.quick:
        args.timeout = min(args.timeout, 18.0)
    if args.calls is None:
        args.calls = 50 if args.quick else 500
    if args.rounds is None:
        args.rounds = 3 if args.quick else 20
    return args


def main() -> None:
    anyio.run(amain, parse_args())


if __name__ == "__main__":
    main()
