"""Many jobs in flight in one stdio server process: event-loop responsiveness, memory, threads and CPU.

Two child processes: the sandbox (`python -m mmaudio_mcp sandbox --port <free> --speed <s>`) and the server
(`python -m mmaudio_mcp` over stdio, driven by the SDK client, pointed at the sandbox with its default poll policy,
which assumes real-time speed, so the sandbox runs at speed 1.0 with short jobs of 4.5-18 s).

Phases, in one run and against one server process:

1. idle: a "ping" (`tools/list`, bypassing the client's cache) every 50 ms for a few seconds. This is the baseline.
2. load: N `generate_audio` calls fired at once (each waits for its audio), while the same ping loop runs and
   /proc/<server pid>/status (VmRSS, Threads) is sampled every 100 ms.

CPU seconds are utime+stime of the server from /proc/<pid>/stat, taken before and after the load phase. The server
pid is found by asking the OS for our child process whose command line is `-m mmaudio_mcp` (not the sandbox).
The sandbox's own statistics give polls per job and, since it runs in real time, the real completion-detection lag.

`--burst`: every job has the same shape, so all of them complete in the same instant. The sandbox is then the
benchmarks' tuned one (`_common.py sandbox`, no jitter) with that shape's WAV synthesized once at start: the CLI
sandbox synthesizes each job's WAV on its event loop when it is fetched (~50 ms of CPU per job), which in a burst
of 200 kept one of the machine's two cores busy exactly while the server's completions ran, and a real upstream's
CDN costs our machine no CPU (`--synthesize` restores the per-fetch synthesis). polling.py does the same.

Run from the repo root: `.venv/bin/python benchmarks/concurrency.py` (`--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
from _common import (
    ROOT,
    Stopwatch,
    command_line,
    free_port,
    mean,
    percentile,
    print_header,
    ratio,
    sandbox_process,
    server_env_for,
    table,
    tuned_sandbox_argv,
    write_results,
)
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

PING_INTERVAL: Final = 0.05
SAMPLE_INTERVAL: Final = 0.1
WAIT_SECONDS: Final = 120.0
JOB_MIX: Final = ((2, 10), (4, 10), (4, 25), (8, 25))  # 4.5, 6, 10.5 and 18 s at speed 1 (with the 1 s queue)
QUICK_MIX: Final = ((2, 10),)
BURST_JOB: Final = (4, 25)  # --burst: every job the same shape, fired together: they all complete in the same instant
PROMPT: Final = "a bell"
"""The sandbox synthesizes each job's WAV on its event loop when first fetched; this prompt is its cheapest (~50 ms
at any duration, against 70-180 ms for rain), so 200 fetches stall the sandbox as little as possible."""
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


# --- /proc ------------------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (so index 0 is field 3, `state`)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime (14) + stime (15)


def rss_and_threads(pid: int) -> tuple[float, int]:
    """VmRSS in MiB and the thread count."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def find_server_pid(parent: int, exclude: set[int]) -> int | None:
    """Our child process running `-m mmaudio_mcp` (the stdio server), if there is exactly one."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if ppid == parent and b"mmaudio_mcp" in argv and b"sandbox" not in argv:
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


# --- measurement ------------------------------------------------------------------------------------------------


@dataclass
class Samples:
    pings_ms: list[float] = field(default_factory=list[float])
    ping_at: list[float] = field(default_factory=list[float])  # perf_counter at each ping's start
    ping_errors: int = 0
    rss_mib: list[float] = field(default_factory=list[float])
    threads: list[int] = field(default_factory=list[int])


async def ping_loop(client: Client, samples: Samples, stop: anyio.Event) -> None:
    """A tools/list round trip every PING_INTERVAL (measured from one start to the next) until `stop`."""
    next_at = time.perf_counter()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            await client.list_tools(cache_mode="bypass")
            samples.pings_ms.append((time.perf_counter() - started) * 1000)
            samples.ping_at.append(started)
        except Exception:
            samples.ping_errors += 1
        next_at += PING_INTERVAL
        await anyio.sleep(max(next_at - time.perf_counter(), 0))


async def proc_loop(pid: int, samples: Samples, stop: anyio.Event) -> None:
    while not stop.is_set():
        rss, threads = rss_and_threads(pid)
        samples.rss_mib.append(rss)
        samples.threads.append(threads)
        await anyio.sleep(SAMPLE_INTERVAL)


async def measure_idle(client: Client, pid: int, seconds: float) -> Samples:
    samples = Samples()
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ping_loop, client, samples, stop)
        tasks.start_soon(proc_loop, pid, samples, stop)
        await anyio.sleep(seconds)
        stop.set()
    return samples


@dataclass
class LoadResult:
    samples: Samples
    completed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list[str])
    latencies: list[float] = field(default_factory=list[float])
    finished_at: list[float] = field(default_factory=list[float])  # perf_counter when each call returned
    started_at: float = 0.0
    started_wall: float = 0.0  # time.time() at started_at: the sandbox stamps its jobs with the wall clock
    request_ids: list[str] = field(default_factory=list[str])
    wall_seconds: float = 0.0


async def measure_load(client: Client, pid: int, jobs: list[tuple[int, int]]) -> LoadResult:
    result = LoadResult(Samples())
    stop = anyio.Event()
    clock = Stopwatch()
    result.started_at = time.perf_counter()
    result.started_wall = time.time()

    async def one(duration: int, steps: int) -> None:
        started = time.perf_counter()
        arguments = {"prompt": PROMPT, "duration": duration, "num_steps": steps}
        try:
            reply = await client.call_tool("generate_audio", arguments | {"wait_seconds": WAIT_SECONDS})
        except Exception as exc:
            result.failed += 1
            result.errors.append(repr(exc)[:200])
            return
        content: dict[str, Any] = reply.structured_content or {}
        if content.get("request_id"):
            result.request_ids.append(content["request_id"])
        if reply.is_error or content.get("status") != "COMPLETED" or not content.get("file"):
            result.failed += 1
            result.errors.append(" ".join(getattr(part, "text", "") for part in reply.content)[:200])
            return
        result.completed += 1
        result.latencies.append(time.perf_counter() - started)
        result.finished_at.append(time.perf_counter())

    async with anyio.create_task_group() as probes:
        probes.start_soon(ping_loop, client, result.samples, stop)
        probes.start_soon(proc_loop, pid, result.samples, stop)
        async with anyio.create_task_group() as calls:
            for duration, steps in jobs:
                calls.start_soon(one, duration, steps)
        result.wall_seconds = clock.seconds()
        stop.set()
    return result


async def warm_up(client: Client) -> None:
    """One untimed generate_audio with wait_seconds=0 (a submit, then the QUEUED answer; the job is left alone).

    The SDK client validates a structured result against the tool's output schema, and does its first
    `import jsonschema` then; that import builds Lark grammars (rfc3987_syntax) and takes ~2 s of CPU here, which would
    otherwise land in the middle of the load phase as a multi-second stall of *this* process, charged to the server.
    """
    reply = await client.call_tool(
        "generate_audio", {"prompt": PROMPT, "duration": 2, "num_steps": 10, "wait_seconds": 0}
    )
    if reply.is_error:
        raise RuntimeError(f"warm-up call failed: {reply.content}")


def server_env(tmp: Path, gateway_url: str) -> dict[str, str]:
    """What a host would pass: PATH, a HOME of its own, the key, the gateway and temp folders, and the spending guard
    off (the sandbox bills nothing; 200 jobs in one go would pass its default hourly cap)."""
    return server_env_for(tmp, gateway_url, WAIT_SECONDS) | {"MMAUDIO_SPEND_CAP": "0"}


async def _server_pid(sandbox_pid: int) -> int:
    with anyio.fail_after(10):
        while (pid := find_server_pid(os.getpid(), {sandbox_pid})) is None:  # noqa: ASYNC110 (the OS has no event)
            await anyio.sleep(0.05)
    return pid


async def run(args: argparse.Namespace, log: TextIO) -> dict[str, Any]:
    port = free_port()
    sandbox_argv = [sys.executable, "-m", "mmaudio_mcp", "sandbox", "--port", str(port), "--speed", str(args.speed)]
    if args.burst and not args.synthesize:
        # The fake gateway's own CPU is not the server's: a real upstream's CDN sends a file it already has.
        burst_audio = (PROMPT, [BURST_JOB[0]])
        sandbox_argv = tuned_sandbox_argv(
            port, speed=args.speed, jitter=0.0, seed=None, webhook_tick=None, cache_audio=burst_audio
        )
    server_argv = ["-m", "mmaudio_mcp"]
    mix = (BURST_JOB,) if args.burst else QUICK_MIX if args.quick else JOB_MIX
    jobs = [mix[index % len(mix)] for index in range(args.jobs)]
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        (Path(tmp) / "home").mkdir()
        async with sandbox_process(sandbox_argv, port, stderr=log.buffer) as sandbox:
            params = StdioServerParameters(
                command=sys.executable, args=server_argv, env=server_env(Path(tmp), sandbox.url), cwd=ROOT
            )
            with anyio.fail_after(args.timeout):
                async with Client(stdio_client(params, errlog=log)) as client:
                    await client.list_tools(cache_mode="bypass")  # connected and answering
                    await warm_up(client)
                    pid = await _server_pid(sandbox.process.pid)
                    rss_start, threads_start = rss_and_threads(pid)
                    cpu_idle_start = cpu_seconds(pid)
                    idle = await measure_idle(client, pid, args.idle_seconds)
                    cpu_before = cpu_seconds(pid)
                    load = await measure_load(client, pid, jobs)
                    cpu_after = cpu_seconds(pid)
                    rss_end, threads_end = rss_and_threads(pid)
            stats = await sandbox.stats()
    return summarize(args, jobs, idle, load, stats) | {
        "server_pid": pid,
        "argv": {"sandbox": sandbox_argv, "server": [sys.executable, *server_argv]},
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "threads_start": threads_start,
        "threads_end": threads_end,
        "cpu_seconds_load": cpu_after - cpu_before,
        "cpu_seconds_per_job": (cpu_after - cpu_before) / len(jobs),
        "cpu_seconds_idle_phase": cpu_before - cpu_idle_start,
        # the pings during the load cost CPU too; at the idle phase's CPU per ping, take them out
        "cpu_seconds_per_job_without_pings": (
            cpu_after
            - cpu_before
            - len(load.samples.pings_ms) * (cpu_before - cpu_idle_start) / max(len(idle.pings_ms), 1)
        )
        / len(jobs),
    }


def summarize(
    args: argparse.Namespace, jobs: list[tuple[int, int]], idle: Samples, load: LoadResult, stats: dict[str, Any]
) -> dict[str, Any]:
    ours = {request_id: stats["jobs"][request_id] for request_id in load.request_ids if request_id in stats["jobs"]}
    polls = [float(timing["polls"]) for timing in ours.values()]
    lags = [
        timing["first_terminal_poll_at"] - timing["completed_at"]
        for timing in ours.values()
        if timing["first_terminal_poll_at"] is not None
    ]
    window = _completion_window(load, [timing["completed_at"] for timing in ours.values()])
    return {
        "jobs": len(jobs),
        "job_mix": sorted(set(jobs)),
        "sandbox_speed": args.speed,
        "completed": load.completed,
        "failed": load.failed,
        "errors": load.errors[:5],
        "load_wall_seconds": load.wall_seconds,
        "job_latency_p50_s": percentile(load.latencies, 50),
        "job_latency_max_s": max(load.latencies, default=float("nan")),
        "idle": {
            "pings": len(idle.pings_ms),
            "ping_p50_ms": percentile(idle.pings_ms, 50),
            "ping_p99_ms": percentile(idle.pings_ms, 99),
            "ping_max_ms": max(idle.pings_ms, default=float("nan")),
            "ping_errors": idle.ping_errors,
            "rss_max_mib": max(idle.rss_mib, default=float("nan")),
        },
        "load": {
            "pings": len(load.samples.pings_ms),
            "ping_p50_ms": percentile(load.samples.pings_ms, 50),
            "ping_p99_ms": percentile(load.samples.pings_ms, 99),
            "ping_max_ms": max(load.samples.pings_ms, default=float("nan")),
            "ping_max_at_s": _worst_ping_at(load),
            "ping_errors": load.samples.ping_errors,
            "rss_peak_mib": max(load.samples.rss_mib, default=float("nan")),
            "threads_peak": max(load.samples.threads, default=0),
        },
        "completion_window": window,
        "sandbox": {
            "submits": stats["submits"],
            "polls_per_job_mean": mean(polls),
            "polls_per_job_max": max(polls, default=float("nan")),
            "lag_p50_s": percentile(lags, 50),
            "lag_p95_s": percentile(lags, 95),
            "media_fetches": sum(stats["media_fetches"].get(request_id, 0) for request_id in ours),
        },
        "raw": {
            "idle_pings_ms": idle.pings_ms,
            "load_pings_ms": load.samples.pings_ms,
            "load_ping_at_s": [at - load.started_at for at in load.samples.ping_at],  # to line pings up with a profile
            "rss_mib": load.samples.rss_mib,
        },
    }


def _completion_window(load: LoadResult, completed_at: list[float | None]) -> dict[str, float]:
    """The pings that started between the first job's completion at the sandbox and the last call's return: the
    burst itself, without the submit burst at the start of the load phase (whose first ping waits while the client
    sends the N calls)."""
    stamps = [stamp for stamp in completed_at if stamp is not None]
    if not stamps or not load.finished_at:
        return {}
    start = min(stamps) - load.started_wall
    end = max(load.finished_at) - load.started_at
    pings = [
        ms
        for ms, at in zip(load.samples.pings_ms, load.samples.ping_at, strict=True)
        if start <= at - load.started_at <= end
    ]
    return {
        "from_s": start,
        "to_s": end,
        "pings": len(pings),
        "ping_p99_ms": percentile(pings, 99),
        "ping_max_ms": max(pings, default=float("nan")),
    }


def _worst_ping_at(load: LoadResult) -> float:
    """Seconds from the start of the load phase to the start of the slowest ping."""
    pings = load.samples.pings_ms
    if not pings:
        return float("nan")
    return load.samples.ping_at[pings.index(max(pings))] - load.started_at


def render(report: dict[str, Any]) -> str:
    idle, load, sandbox = report["idle"], report["load"], report["sandbox"]
    window: dict[str, float] = report["completion_window"]
    no_pings = report["cpu_seconds_per_job_without_pings"] * 1000
    ping_rows: list[list[object]] = [
        ["ping p50 (ms)", idle["ping_p50_ms"], load["ping_p50_ms"], ratio(load["ping_p50_ms"], idle["ping_p50_ms"])],
        ["ping p99 (ms)", idle["ping_p99_ms"], load["ping_p99_ms"], ratio(load["ping_p99_ms"], idle["ping_p99_ms"])],
        ["ping max (ms)", idle["ping_max_ms"], load["ping_max_ms"], ratio(load["ping_max_ms"], idle["ping_max_ms"])],
        ["slowest ping starts at (s into load)", "", load["ping_max_at_s"], ""],
        [
            "completion window: ping p99 / max (ms)",
            "",
            f"{window.get('ping_p99_ms', float('nan')):.1f} / {window.get('ping_max_ms', float('nan')):.0f}",
            "",
        ],
        [
            "completion window: from / to (s into load), pings",
            "",
            f"{window.get('from_s', float('nan')):.1f} / {window.get('to_s', float('nan')):.1f}, "
            f"{window.get('pings', 0):.0f}",
            "",
        ],
        ["pings (errors)", f"{idle['pings']} ({idle['ping_errors']})", f"{load['pings']} ({load['ping_errors']})", ""],
    ]
    process_rows: list[list[object]] = [
        ["jobs completed / failed", f"{report['completed']} / {report['failed']} of {report['jobs']}"],
        ["load phase wall (s)", report["load_wall_seconds"]],
        ["job latency p50 / max (s)", f"{report['job_latency_p50_s']:.1f} / {report['job_latency_max_s']:.1f}"],
        ["RSS at start (MiB)", report["rss_start_mib"]],
        ["RSS peak under load (MiB)", load["rss_peak_mib"]],
        ["RSS after load (MiB)", report["rss_end_mib"]],
        [
            "threads at start / peak / after",
            f"{report['threads_start']} / {load['threads_peak']} / {report['threads_end']}",
        ],
        ["CPU s in load phase (server)", report["cpu_seconds_load"]],
        [
            "CPU ms per job (all / minus the pings' share)",
            f"{report['cpu_seconds_per_job'] * 1000:.1f} / {no_pings:.1f}",
        ],
        [
            "status polls per job mean / max",
            f"{sandbox['polls_per_job_mean']:.2f} / {sandbox['polls_per_job_max']:.0f}",
        ],
        ["detection lag p50 / p95 (s, real time)", f"{sandbox['lag_p50_s']:.2f} / {sandbox['lag_p95_s']:.2f}"],
        ["media fetches for our jobs", sandbox["media_fetches"]],
    ]
    return (
        table(["", "idle (baseline)", f"{report['jobs']} jobs in flight", "load / idle"], ping_rows)
        + "\n\n"
        + table(["server process", "value"], process_rows)
    )


async def amain(args: argparse.Namespace, log: TextIO) -> None:
    clock = Stopwatch()
    facts = print_header(
        f"{args.jobs} generate_audio calls at once against one stdio server"
        f"{' (burst: same shape, all complete together)' if args.burst else ''}; sandbox speed {args.speed}; "
        f"ping = tools/list (cache bypassed) every {PING_INTERVAL * 1000:.0f} ms, idle baseline {args.idle_seconds} s "
        f"first; /proc sampled every {SAMPLE_INTERVAL * 1000:.0f} ms. Child stderr goes to {args.log}.\n"
        "warm-up: one untimed generate_audio(wait_seconds=0) before the idle baseline (loads the client's jsonschema)."
    )
    report = await run(args, log)
    print(render(report))
    load, idle = report["load"], report["idle"]
    targets = {
        "ping_p99_under_50ms": load["ping_p99_ms"] < 50,
        "completion_window_ping_p99_under_50ms": report["completion_window"].get("ping_p99_ms", float("inf")) < 50,
        "rss_under_150MB": load["rss_peak_mib"] * 1.048576 < 150,
        "no_thread_per_job": load["threads_peak"] < max(report["jobs"] / 4, 10),
    }
    print("targets (reported, not asserted): " + ", ".join(f"{key}={value}" for key, value in targets.items()))
    print(f"ping p99 under load / idle: x{ratio(load['ping_p99_ms'], idle['ping_p99_ms']):.2f}")
    print(f"finished in {clock.seconds():.1f} s")
    write_results(
        "concurrency",
        {"command": command_line(), "args": vars(args), "machine": facts, "targets": targets, **report},
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 short jobs, 1 s idle baseline")
    parser.add_argument("--jobs", type=int, help="generate_audio calls in flight (default 200; --quick: 20)")
    parser.add_argument("--speed", type=float, default=1.0, help="sandbox speed (default 1.0: real time)")
    parser.add_argument(
        "--burst",
        action="store_true",
        help=f"every job {BURST_JOB[0]} s / {BURST_JOB[1]} steps, so all complete together (the sandbox has no jitter)",
    )
    parser.add_argument(
        "--synthesize",
        action="store_true",
        help="--burst: let the sandbox synthesize each job's WAV when fetched (by default it is made once, at start)",
    )
    parser.add_argument("--idle-seconds", type=float, help="idle baseline length (default 5; --quick: 1)")
    parser.add_argument("--timeout", type=float, default=150.0, help="hard limit for the server phase, seconds")
    parser.add_argument(
        "--log", default=str(Path(tempfile.gettempdir()) / "bench-concurrency.log"), help="children's stderr"
    )
    args = parser.parse_args()
    if args.jobs is None:
        args.jobs = 20 if args.quick else 200
    if args.idle_seconds is None:
        args.idle_seconds = 1.0 if args.quick else 5.0
    if args.quick:
        args.timeout = min(args.timeout, 18.0)
    return args


def main() -> None:
    args = parse_args()
    with Path(args.log).open("w") as log:
        anyio.run(amain, args, log)


if __name__ == "__main__":
    main()
