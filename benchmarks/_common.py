"""Helpers shared by the benchmark scripts: percentiles, tables, results files, machine facts and wiring.

Every script is run from the repo root as `.venv/bin/python benchmarks/<name>.py`; this module sits beside them
and is imported as `_common` (the script's folder is on sys.path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence

    from mmaudio_mcp.settings import Settings

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = ROOT / "benchmarks" / "results"


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (readable in a terminal too); floats get 3 significant-ish digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "n/a"
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that ran this script, as one could paste it."""
    return shlex.join([sys.executable, *sys.argv])


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def print_header(description: str) -> dict[str, Any]:
    """Print the command line and the machine; return the machine facts for the JSON."""
    facts = machine()
    print(f"command: {command_line()}")
    print(
        f"machine: nproc {facts['nproc']}, Python {facts['python']}, {facts['platform']}, "
        f"load average {facts['loadavg_start'][0]:.2f}"
    )
    print(description)
    print()
    return facts


def write_results(name: str, report: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json (the folder is git-ignored) and say where."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def server_env_for(tmp: Path, gateway_url: str, wait_seconds: float) -> dict[str, str]:
    """The environment a server child gets: PATH, a HOME of its own, the sandbox key and gateway, temp folders."""
    from mmaudio_mcp.sandbox import SANDBOX_API_KEY

    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp / "home"),
        "PIXAZO_API_KEY": SANDBOX_API_KEY,
        "PIXAZO_GATEWAY_URL": gateway_url,
        "MMAUDIO_OUTPUT_DIR": str(tmp / "out"),
        "MMAUDIO_STATE_DIR": str(tmp / "state"),
        "MMAUDIO_WAIT_SECONDS": str(wait_seconds),
    }


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sandbox_settings(tmp: Path, gateway_url: str, **extra: Any) -> Settings:
    """Settings pointing at a sandbox, with output and state in a temporary folder."""
    from mmaudio_mcp.sandbox import SANDBOX_API_KEY
    from mmaudio_mcp.settings import Settings

    return Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        api_key=SANDBOX_API_KEY,
        gateway_url=gateway_url,
        output_dir=tmp / "out",
        state_dir=tmp / "state",
        **extra,
    )


class Stopwatch:
    """Wall time since creation, for the "finished in" line."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


# --- a sandbox in its own process -------------------------------------------------------------------------------


@dataclass
class SandboxProcess:
    """A sandbox gateway running in a child process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str

    async def stats(self) -> dict[str, Any]:
        """The sandbox's statistics (`asdict(Sandbox.stats())`) through its admin route."""
        import httpx2

        async with httpx2.AsyncClient(timeout=30) as http:
            reply = await http.get(f"{self.url}/_sandbox/stats")
            reply.raise_for_status()
            stats: dict[str, Any] = reply.json()
            return stats


async def wait_healthy(url: str, process: subprocess.Popen[bytes], within: float = 20.0) -> None:
    """Poll `url`/healthz until it answers 200; fail if the process dies or the time runs out."""
    import anyio
    import httpx2

    with anyio.fail_after(within):
        async with httpx2.AsyncClient(timeout=2) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the sandbox exited with code {process.returncode} before answering")
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        return
                except httpx2.HTTPError:
                    pass
                await anyio.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: the process is gone when this returns."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return process.returncode


@asynccontextmanager
async def sandbox_process(
    argv: list[str], port: int, stderr: IO[bytes] | None = None
) -> AsyncGenerator[SandboxProcess]:
    """Start a sandbox command listening on `port`, wait until it answers, and always stop it afterwards."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)  # noqa: ASYNC220
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, process)
        yield SandboxProcess(process, url)
    finally:
        stop_process(process)


def tuned_sandbox_argv(
    port: int,
    *,
    speed: float,
    jitter: float,
    seed: int | None,
    webhook_tick: float | None,
    cache_audio: tuple[str, Sequence[int]] | None = None,
    timestamp_quantum: float | None = None,
) -> list[str]:
    """The command for `_serve_tuned_sandbox` (below): the CLI's `sandbox` command exposes only --speed."""
    argv = [sys.executable, str(Path(__file__)), "sandbox", "--port", str(port), "--speed", str(speed)]
    argv += ["--jitter", str(jitter)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if webhook_tick is not None:
        argv += ["--webhook-tick", str(webhook_tick)]
    if timestamp_quantum is not None:
        argv += ["--timestamp-quantum", str(timestamp_quantum)]
    if cache_audio is not None:
        argv += ["--cache-audio-prompt", cache_audio[0], "--cache-audio-durations", *map(str, cache_audio[1])]
    return argv


def cache_sandbox_audio(prompt: str, durations: Sequence[int]) -> None:
    """Make the sandbox synthesize each (prompt, duration) WAV once, now, instead of once per job on its event loop.

    The sandbox's media route calls `wav_for` synchronously (0.05-0.4 s of pure-Python CPU per job), which blocks
    every other answer it gives meanwhile; in a time-compressed run that stall dominates the poll timings. This
    patches only the fake gateway's audio synthesis, never the server under test.
    """
    import functools

    from mmaudio_mcp import sandbox

    cached = functools.cache(sandbox.wav_for)
    for duration in durations:
        cached(prompt, duration)
    sandbox.wav_for = cached  # type: ignore[assignment]


def scale_sandbox_timestamps(scale: float) -> None:
    """Make the sandbox's plain timestamps (`completed_at`, `updated_at`) precise to `scale` seconds, not to 1 s.

    Pixazo's `completed_at` has whole-second precision. At real speed that blurs each job's measured time by
    +-0.5 s (the server adds the half second that whole-second truncation takes off, seeing no fraction); with time
    compressed by `scale` the same truncation would be 1/scale times larger relative to every job (at 0.05: ~10 real
    seconds), so it is scaled with the clock, and rounded rather than truncated: stamps that keep a fraction do not
    get the server's half-second, so this keeps the blur unbiased, as at real speed. Only the fake gateway is patched.
    """
    from mmaudio_mcp import sandbox

    def plain_utc(moment: float) -> str:
        stamp = datetime.fromtimestamp(round(moment / scale) * scale, UTC)
        if stamp.microsecond == 0:  # else the server takes it for a truncated whole-second stamp and adds 0.5 s
            stamp = stamp.replace(microsecond=1)
        return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")

    sandbox._plain_utc = plain_utc  # pyright: ignore[reportPrivateUsage]


def _serve_tuned_sandbox(args: argparse.Namespace) -> None:
    """Serve a sandbox with jitter and seed on 127.0.0.1, delivering webhooks at `--webhook-tick` (none if unset)."""
    import functools

    import anyio
    import uvicorn

    from mmaudio_mcp.sandbox import SandboxConfig, create_sandbox

    if args.timestamp_quantum is not None:
        scale_sandbox_timestamps(args.timestamp_quantum)
    if args.cache_audio_prompt:
        cache_sandbox_audio(args.cache_audio_prompt, args.cache_audio_durations)
    sandbox = create_sandbox(SandboxConfig(speed=args.speed, jitter=args.jitter, seed=args.seed))

    async def serve() -> None:
        config = uvicorn.Config(sandbox.app, host="127.0.0.1", port=args.port, lifespan="off", log_level="warning")
        async with anyio.create_task_group() as tasks:
            if args.webhook_tick:
                tasks.start_soon(functools.partial(sandbox.deliver_webhooks, tick=args.webhook_tick))
            await uvicorn.Server(config).serve()  # returns on SIGTERM/SIGINT
            tasks.cancel_scope.cancel()

    anyio.run(serve)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="benchmark helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    tuned = commands.add_parser("sandbox", help="serve a sandbox with jitter/seed (used by polling.py)")
    tuned.add_argument("--port", type=int, required=True)
    tuned.add_argument("--speed", type=float, default=1.0)
    tuned.add_argument("--jitter", type=float, default=0.0)
    tuned.add_argument("--seed", type=int)
    tuned.add_argument("--webhook-tick", type=float)
    tuned.add_argument(
        "--timestamp-quantum", type=float, help="plain timestamps precise to this many seconds (a real second, scaled)"
    )
    tuned.add_argument("--cache-audio-prompt", help="synthesize this prompt's WAVs once, at start (see above)")
    tuned.add_argument("--cache-audio-durations", type=int, nargs="*", default=[])
    _serve_tuned_sandbox(parser.parse_args())
