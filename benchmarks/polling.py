"""Polling efficiency: status polls per job and completion-detection lag, adaptive vs fixed intervals vs webhooks.

Each mode gets a fresh sandbox (same seed, the same job-to-job jitter: +-5% by default, `--jitter`), a fresh server
and a fresh state dir, and runs the same job mix (durations {2,4,8,15,30} x steps {10,25,50}) through the MCP tool
`generate_audio` with a generous wait_seconds, a bounded number of calls in flight. Time runs at scale `s` (sandbox
speed s, poll policies scaled by s); lags are reported divided by s, i.e. as real-time seconds. From the sandbox's
per-job timings:

* polls = status requests for the job;
* lag = first_terminal_poll_at - completed_at (how long a finished job went unnoticed).

The baseline is the fixed 5 s poller in the same run: polls are reported as a ratio to it.

Wiring, and why: time compression multiplies every CPU cost by 1/s relative to the jobs, so the sandbox must not
share this process's event loop or GIL, and must not stall. By default it runs in a child process
(`python benchmarks/_common.py sandbox ...`: the sandbox app with jitter and seed, its stats read from
`/_sandbox/stats`, i.e. `asdict(sandbox.stats())`); `--sandbox thread` runs it in this process on its own thread and
event loop instead. Two fake-gateway details are adjusted, never the server: (1) its media route synthesizes each
job's WAV in pure Python on its event loop (0.05-0.4 s, stalling all its answers meanwhile), so every job uses one
prompt and each duration's WAV is synthesized once up front; (2) its `completed_at` has whole-second precision,
which at s=0.05 is 20x coarser relative to the jobs than at real speed and would bias the ETA the adaptive poller
learns (`--whole-second-timestamps` keeps it, to show the effect), so its precision is scaled by s too. Its own
lifespan webhook dispatcher (fixed 20 ms tick) is replaced by `deliver_webhooks(tick=0.02*s)`. Modes a-c use the
in-memory MCP client; the webhook mode needs an HTTP server (its public_url receives the callbacks), so it uses a
streamable-HTTP client on loopback.

Run from the repo root: `.venv/bin/python benchmarks/polling.py` (`--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
from _common import (
    Stopwatch,
    cache_sandbox_audio,
    command_line,
    free_port,
    mean,
    percentile,
    print_header,
    ratio,
    sandbox_process,
    sandbox_settings,
    scale_sandbox_timestamps,
    table,
    tuned_sandbox_argv,
    write_results,
)
from anyio.from_thread import start_blocking_portal
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.jobs import HISTORY_SIZE
from mmaudio_mcp.sandbox import SandboxConfig, create_sandbox
from mmaudio_mcp.schedule import Learned, PollPolicy, learn
from mmaudio_mcp.server import build_server
from mmaudio_mcp.store import SqliteJobStore
from mmaudio_mcp.transport import Transport, http_app, serve_on_loopback

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from anyio.from_thread import BlockingPortal
    from starlette.types import ASGIApp, Receive, Scope, Send

    from mmaudio_mcp.settings import Settings

DURATIONS: Final = (2, 4, 8, 15, 30)
STEPS: Final = (10, 25, 50)
QUICK_DURATIONS: Final = (2, 4)  # --quick only proves it runs: short jobs
QUICK_STEPS: Final = (10, 25)
WARMUP_JOBS: Final = ((2, 10), (4, 25), (8, 25), (8, 50), (15, 10), (4, 50))
QUICK_WARMUP_JOBS: Final = ((2, 10), (2, 25), (4, 10))
JITTER: Final = 0.05
"""Each job's processing time is the shape's times U(1 - jitter, 1 + jitter), unseen by the server (see BENCHMARKS.md
on why +-5%, and on +-30%, where no poll schedule meets both targets)."""
PROMPT: Final = "rain on a tin roof"  # one prompt, so the sandbox synthesizes each duration's WAV once
WAIT_SECONDS: Final = 240.0  # per generate_audio call, in the server's (scaled) seconds: far above any job
SANDBOX_TICK: Final = 0.02  # the sandbox's own webhook tick, in real seconds; scaled by s here
TRUE_OVERHEAD: Final = 3.0  # the sandbox at speed 1: 1 s queue + 2 s fixed + 0.075 s per (second x step)
TRUE_RATE: Final = 0.075


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    policy: PollPolicy
    webhook: bool = False
    fresh: bool = False  # no warm-up: the adaptive ETA starts from its prior


@dataclass(frozen=True)
class Scenario:
    """The upstream's speed against the prior, and how jobs arrive."""

    name: str
    speed_factor: float  # the sandbox's jobs take this many times as long as at speed 1 (the prior's world)
    batch: bool  # all measured jobs submitted at once (else `parallel` calls in flight)

    def scale(self, base: float) -> float:
        """The time scale of the prior's world for this scenario: never compressed more than `base` on the sandbox
        (a 4x faster upstream at s=0.05 would run jobs at 1/80 of real time, and the server's own per-job work,
        not the polling, would dominate the lags), and a batch BATCH_SLOWDOWN times less."""
        return base / min(self.speed_factor, 1.0) * (BATCH_SLOWDOWN if self.batch else 1.0)


BATCH_SLOWDOWN: Final = 4.0
"""A batch of 50 has 50 pollers in their windows at once, about 60 polls/s at real speed; compressed 20x that is
1,200/s, and the lags would measure this machine's CPU, not the schedule. Batches run 4x less compressed."""

SCENARIOS: Final = {
    "matched": Scenario("matched", 1.0, batch=False),
    "fast4": Scenario("fast4", 0.25, batch=False),
    "slow4": Scenario("slow4", 4.0, batch=False),
    "batch50-fast4": Scenario("batch50-fast4", 0.25, batch=True),
    "batch50-slow4": Scenario("batch50-slow4", 4.0, batch=True),
}


@dataclass
class ModeResult:
    mode: str
    label: str
    scenario: str
    jobs: int
    completed: int
    failed: int
    wall_seconds: float
    polls: list[int] = field(default_factory=list[int])
    lags: list[float] = field(default_factory=list[float])  # real-time seconds (divided by s)
    missed: int = 0  # jobs whose terminal status was never polled
    webhooks_sent: int = 0
    learned_rate: float | None = None  # seconds per (second x step), real-time equivalent
    learned_spread: float | None = None
    schedules: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    errors: list[str] = field(default_factory=list[str])

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "label": self.label,
            "jobs": self.jobs,
            "completed": self.completed,
            "failed": self.failed,
            "missed_terminal_poll": self.missed,
            "wall_seconds": self.wall_seconds,
            "lag_p50_s": percentile(self.lags, 50),
            "lag_p75_s": percentile(self.lags, 75),
            "lag_p90_s": percentile(self.lags, 90),
            "lag_p95_s": percentile(self.lags, 95),
            "lag_over_2s_share": sum(lag > 2 for lag in self.lags) / len(self.lags) if self.lags else float("nan"),
            "lag_max_s": max(self.lags, default=float("nan")),
            "polls_mean": mean([float(p) for p in self.polls]),
            "polls_p50": percentile([float(p) for p in self.polls], 50),
            "polls_total": sum(self.polls),
            "webhooks_sent": self.webhooks_sent,
            "learned_seconds_per_unit": self.learned_rate,
            "learned_spread": self.learned_spread,
        }


def modes(scale: float) -> list[Mode]:
    adaptive = PollPolicy().scaled(scale)
    return [
        Mode("adaptive", "adaptive, after learning (warm-up)", adaptive),
        Mode("adaptive_fresh", "adaptive, fresh install", adaptive, fresh=True),
        Mode("fixed_5s", "fixed 5 s", PollPolicy.fixed(5.0 * scale)),
        Mode("fixed_1s", "fixed 1 s", PollPolicy.fixed(1.0 * scale)),
        Mode("webhook", "webhook + adaptive safety net", adaptive, webhook=True),
    ]


def _audio_durations(args: argparse.Namespace) -> list[int]:
    return sorted({duration for duration, _ in args.warmup_jobs} | set(args.durations))


def job_mix(count: int, seed: int, durations: tuple[int, ...], steps: tuple[int, ...]) -> list[tuple[int, int]]:
    """`count` (duration, steps) pairs cycling through every combination, in a seeded random order."""
    combos = [(duration, num_steps) for duration in durations for num_steps in steps]
    mix = [combos[index % len(combos)] for index in range(count)]
    random.Random(seed).shuffle(mix)
    return mix


class _WithoutLifespan:
    """Answer ASGI lifespan events ourselves, so the sandbox app does not start its own webhook dispatcher."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _call(client: Client, duration: int, steps: int) -> tuple[str | None, str | None]:
    """One generate_audio call; return (request_id, error)."""
    arguments = {
        "prompt": PROMPT,
        "duration": duration,
        "num_steps": steps,
        "wait_seconds": WAIT_SECONDS,
    }
    result = await client.call_tool("generate_audio", arguments)
    content: dict[str, Any] = result.structured_content or {}
    request_id = content.get("request_id")
    if result.is_error or content.get("status") != "COMPLETED" or not content.get("file"):
        text = " ".join(getattr(part, "text", "") for part in result.content)[:200]
        return request_id, f"{content.get('status')}: {text}"
    return request_id, None


async def drive(client: Client, jobs: list[tuple[int, int]], parallel: int) -> list[tuple[str, str]]:
    """Run the jobs with at most `parallel` calls in flight (FIFO); return (request_id or '', error or '')."""
    limiter = anyio.CapacityLimiter(parallel)
    outcomes: list[tuple[str, str]] = [("", "not run")] * len(jobs)

    async def one(slot: int, duration: int, steps: int) -> None:
        async with limiter:
            try:
                request_id, error = await _call(client, duration, steps)
            except Exception as exc:
                request_id, error = None, repr(exc)
            outcomes[slot] = (request_id or "", error or "")

    async with anyio.create_task_group() as tasks:
        for slot, (duration, steps) in enumerate(jobs):
            tasks.start_soon(one, slot, duration, steps)
    return outcomes


def _connect(mode: Mode, settings: Settings, sandbox_url: str) -> AbstractAsyncContextManager[Client]:
    """An MCP client wired to a fresh server for this mode."""
    settings = settings.model_copy(update={"gateway_url": sandbox_url})
    if not mode.webhook:
        return Client(build_server(settings, policy=mode.policy))
    return _webhook_client(settings, mode.policy)


async def _learned(state_dir: Path, policy: PollPolicy) -> Learned:
    store = await SqliteJobStore.open(state_dir)
    try:
        history = await store.recent(HISTORY_SIZE)
    finally:
        await store.aclose()
    return learn(history, policy)


def _webhook_client(settings: Settings, policy: PollPolicy) -> AbstractAsyncContextManager[Client]:
    @asynccontextmanager
    async def connected() -> AsyncGenerator[Client]:
        port = free_port()
        served = settings.model_copy(update={"transport": "streamable-http", "public_url": f"http://127.0.0.1:{port}"})
        server = build_server(served, policy=policy)
        async with (
            serve_on_loopback(http_app(server, Transport.STREAMABLE_HTTP), port=port) as url,
            Client(streamable_http_client(f"{url}/mcp")) as client,
        ):
            yield client

    return connected()


def _collect(result: ModeResult, jobs: dict[str, dict[str, Any]], measured: set[str], scale: float) -> None:
    """Per measured job, from the sandbox's timings (`asdict(JobTiming)`): polls, webhooks and the lag."""
    for request_id, timing in jobs.items():
        if request_id not in measured:
            continue
        result.polls.append(int(timing["polls"]))
        result.webhooks_sent += int(timing["webhooks_sent"])
        if timing["first_terminal_poll_at"] is None:
            result.missed += 1
        else:
            result.lags.append((timing["first_terminal_poll_at"] - timing["completed_at"]) / scale)


@dataclass
class _Gateway:
    url: str
    jobs: Callable[[], Awaitable[dict[str, dict[str, Any]]]]


@asynccontextmanager
async def _gateway(mode: Mode, args: argparse.Namespace, portal: BlockingPortal) -> AsyncGenerator[_Gateway]:
    """A fresh sandbox for one mode: in a child process (default) or on a thread of this process."""
    world: float = args.scenario.scale(args.scale)  # the time scale of the prior's world
    scale = world * args.scenario.speed_factor
    tick = max(SANDBOX_TICK * scale, 0.001) if mode.webhook else None
    # Pixazo's stamps have whole seconds however fast it runs: one second of the prior's world, not of the sandbox's
    quantum = world if args.scale_timestamps else None
    if args.sandbox == "process":
        port = free_port()
        argv = tuned_sandbox_argv(
            port,
            speed=scale,
            jitter=args.jitter,
            seed=args.seed,
            webhook_tick=tick,
            cache_audio=(PROMPT, _audio_durations(args)),
            timestamp_quantum=quantum,
        )
        async with sandbox_process(argv, port) as child:

            async def remote_jobs() -> dict[str, dict[str, Any]]:
                jobs: dict[str, dict[str, Any]] = (await child.stats())["jobs"]
                return jobs

            yield _Gateway(child.url, remote_jobs)
        return
    cache_sandbox_audio(PROMPT, _audio_durations(args))
    if quantum is not None:
        scale_sandbox_timestamps(quantum)  # process-wide, for the rest of this run
    sandbox = create_sandbox(SandboxConfig(speed=scale, jitter=args.jitter, seed=args.seed))

    async def local_jobs() -> dict[str, dict[str, Any]]:
        return {request_id: asdict(timing) for request_id, timing in sandbox.stats().jobs.items()}

    with portal.wrap_async_context_manager(serve_on_loopback(_WithoutLifespan(sandbox.app))) as url:
        hooks = portal.start_task_soon(functools.partial(sandbox.deliver_webhooks, tick=tick)) if tick else None
        try:
            yield _Gateway(url, local_jobs)
        finally:
            if hooks is not None:
                hooks.cancel()


async def run_mode(
    mode: Mode, mix: list[tuple[int, int]], args: argparse.Namespace, portal: BlockingPortal
) -> ModeResult:
    scale: float = args.scenario.scale(args.scale)
    with tempfile.TemporaryDirectory(prefix=f"bench-polling-{mode.name}-") as tmp:
        async with _gateway(mode, args, portal) as gateway:
            # spend_cap=0: the guard (60 jobs an hour by default) would refuse most of a 120-job run
            settings = sandbox_settings(Path(tmp), gateway.url, wait_seconds=WAIT_SECONDS, spend_cap=0)
            with anyio.fail_after(args.mode_timeout):
                async with _connect(mode, settings, gateway.url) as client:
                    if args.warmup_jobs and not mode.fresh:
                        await drive(client, args.warmup_jobs, len(args.warmup_jobs))
                    warm_ids = set(await gateway.jobs())
                    clock = Stopwatch()
                    outcomes = await drive(client, mix, len(mix) if args.scenario.batch else args.parallel)
                    wall = clock.seconds()
            jobs = await gateway.jobs()
        learned = await _learned(settings.state_dir, mode.policy)
    shapes = {request_id: mix[slot] for slot, (request_id, _) in enumerate(outcomes) if request_id}
    errors = [error for _, error in outcomes if error]
    measured = {request_id for request_id, _ in outcomes if request_id} - warm_ids
    result = ModeResult(
        mode=mode.name,
        label=mode.label,
        scenario=args.scenario.name,
        jobs=len(mix),
        completed=len(mix) - len(errors),
        failed=len(errors),
        wall_seconds=wall,
        learned_rate=learned.rate / scale if mode.policy.adaptive else None,
        learned_spread=learned.spread if mode.policy.adaptive else None,
        errors=errors[:5],
    )
    _collect(result, jobs, measured, scale)
    result.schedules = _schedules(jobs, measured, shapes, scale)
    return result


def _schedules(
    jobs: dict[str, dict[str, Any]], measured: set[str], shapes: dict[str, tuple[int, int]], scale: float
) -> list[dict[str, Any]]:
    """Per measured job, its shape and when it ran and was polled (real-time seconds from its submit), to see
    where a schedule spends its polls."""

    def since_submit(timing: dict[str, Any], at: float) -> float:
        return round((at - timing["submitted_at"]) / scale, 2)

    return [
        {
            "shape": shapes.get(request_id),
            "completed": since_submit(timing, timing["completed_at"]),
            "polls": [since_submit(timing, at) for at in timing["poll_times"]],
        }
        for request_id, timing in jobs.items()
        if request_id in measured
    ]


def render(results: list[ModeResult]) -> str:
    rows: list[list[object]] = []
    for result in results:
        base = next((r for r in results if r.mode == "fixed_5s" and r.scenario == result.scenario), None)
        base_polls = mean([float(p) for p in base.polls]) if base else float("nan")
        summary = result.summary()
        rows.append(
            [
                result.scenario,
                result.label,
                f"{result.completed}/{result.jobs}",
                summary["lag_p50_s"],
                summary["lag_p95_s"],
                summary["lag_max_s"],
                summary["polls_mean"],
                summary["polls_p50"],
                ratio(summary["polls_mean"], base_polls),
                "-" if result.learned_rate is None else f"{result.learned_rate:.4f}",
                "-" if result.learned_spread is None else f"{result.learned_spread:.3f}",
                summary["wall_seconds"],
            ]
        )
    headers = [
        "scenario",
        "mode",
        "done",
        "lag p50 (s)",
        "lag p95 (s)",
        "lag max (s)",
        "polls/job mean",
        "polls/job p50",
        "polls vs fixed 5 s",
        "learned s/unit",
        "learned spread",
        "wall (s, scaled)",
    ]
    return table(headers, rows)


async def amain(args: argparse.Namespace) -> None:
    clock = Stopwatch()
    facts = print_header(
        f"scale s={args.scale} (sandbox speed s, policies scaled by s; lags below are real-time seconds = measured/s; "
        "a faster-than-prior scenario runs its prior's world at s / speed factor, so the sandbox is never faster "
        f"than s; a batch runs {BATCH_SLOWDOWN:g}x slower still), "
        f"jitter {args.jitter}, seed {args.seed}, {args.jobs} measured jobs per mode "
        f"(durations {args.durations} x steps {args.steps}, cycled, shuffled), {args.parallel} calls in flight, "
        f"sandbox in a {'child process' if args.sandbox == 'process' else 'thread of this process'}.\n"
        + (
            f"warm-up: yes, {len(args.warmup_jobs)} untimed jobs per mode first (every mode, so the sandbox RNG stays "
            "aligned; only the adaptive/webhook ETA learns from them) - excluded from the figures."
            if args.warmup_jobs
            else "warm-up: no, the adaptive ETA starts from its prior (it still learns as jobs finish)."
        )
        + f"\nsandbox truth (real time): {TRUE_OVERHEAD:.0f} s + {TRUE_RATE} s per (second x step), the processing "
        + f"part x U({1 - args.jitter:g}, {1 + args.jitter:g}); "
        + (
            "its completed_at is precise to one real second, scaled like the clock, and rounded"
            if args.scale_timestamps
            else f"its completed_at keeps whole seconds ({1 / args.scale:.0f}x coarser than at real speed)"
        )
        + "; each (prompt, duration) WAV is synthesized once, up front"
    )
    mix = job_mix(args.jobs, args.seed, args.durations, args.steps)
    results: list[ModeResult] = []
    with start_blocking_portal(name="sandbox") as portal:
        for scenario_name in args.scenarios:
            args.scenario = SCENARIOS[scenario_name]
            chosen = [mode for mode in modes(args.scenario.scale(args.scale)) if mode.name in args.modes]
            for mode in chosen:
                result = await run_mode(mode, mix, args, portal)
                print(
                    f"  {scenario_name} / {mode.name}: {result.completed}/{result.jobs} completed in "
                    f"{result.wall_seconds:.1f} s",
                    flush=True,
                )
                for error in result.errors:
                    print(f"    error: {error}")
                results.append(result)
    print()
    print(render(results))
    print(
        "\nlag = first_terminal_poll_at - completed_at (sandbox clock) / s; polls = status GETs per job; "
        "learned s/unit = the adaptive ETA's rate after the run (truth 0.075)."
    )
    targets: dict[str, bool | None] = {}
    for scenario in args.scenarios:
        mine = [r for r in results if r.scenario == scenario]
        for name in ("adaptive", "adaptive_fresh"):
            targets[f"{scenario}/{name}: lag p50<=0.5 s, p95<=1.5 s"] = _target(
                mine, name, lambda r: percentile(r.lags, 50) <= 0.5 and percentile(r.lags, 95) <= 1.5
            )
            targets[f"{scenario}/{name}: fewer polls than fixed 5 s"] = _fewer_polls(mine, name)
        targets[f"{scenario}/webhook: lag p50<=0.2 s, about 1 poll"] = _target(
            mine,
            "webhook",
            lambda r: percentile(r.lags, 50) <= 0.2 and percentile([float(p) for p in r.polls], 50) <= 1,
        )
    print("targets (reported, not asserted):\n" + "\n".join(f"  {key}: {value}" for key, value in targets.items()))
    floors = {
        name: poll_floor(args.jitter, SCENARIOS[name].speed_factor, args.durations, args.steps)
        for name in args.scenarios
    }
    print(
        f"fewest polls per job with which any schedule meets both lag targets at jitter {args.jitter} (poll_floor): "
        + ", ".join(f"{name} {floor:.2f}" for name, floor in floors.items())
    )
    print(f"finished in {clock.seconds():.1f} s")
    write_results(
        "polling",
        {
            "command": command_line(),
            "args": vars(args),
            "machine": facts,
            "modes": [r.summary() for r in results],
            "targets": targets,
            "poll_floor": floors,
            "raw": {
                f"{r.scenario}/{r.mode}": {
                    "polls": r.polls,
                    "lags_s": r.lags,
                    "errors": r.errors,
                    "schedules": r.schedules,
                }
                for r in results
            },
            "total_seconds": clock.seconds(),
        },
    )


def poll_floor(jitter: float, speed: float, durations: tuple[int, ...], steps: tuple[int, ...]) -> float:
    """The fewest status polls per job with which any schedule meets both lag targets on this job mix, when each
    job's end is uniform over its +-jitter window and nothing reveals where in it: even one that knows every
    window. A poll sees only the 1.5 s (0.5 s) of window before it, so covering 95% (50%) of the jobs needs at
    least window / 1.5 s (0.5 s) polls per covered job, spent on the narrowest windows first; every job needs one."""
    # the jittered part of each job: its 1 s queue wait is not jittered
    windows = [2 * jitter * (TRUE_OVERHEAD - 1 + TRUE_RATE * d * s) * speed for d in durations for s in steps]

    def fewest(share: float, reach: float) -> float:
        seen = [min(1.0, reach / width) if width > 0 else 1.0 for width in windows]
        polls, missing = float(len(windows)), share * len(windows) - sum(seen)
        for index in sorted(range(len(windows)), key=windows.__getitem__):
            if missing <= 0:
                break
            more = min(1.0 - seen[index], missing)
            polls += more * windows[index] / reach
            missing -= more
        return polls / len(windows)

    return max(fewest(0.95, 1.5), fewest(0.5, 0.5))


def _target(results: list[ModeResult], name: str, check: Callable[[ModeResult], bool]) -> bool | None:
    found = next((r for r in results if r.mode == name), None)
    return None if found is None or not found.lags else bool(check(found))


def _fewer_polls(results: list[ModeResult], name: str) -> bool | None:
    by_name = {r.mode: r for r in results}
    if name not in by_name or "fixed_5s" not in by_name:
        return None
    return mean([float(p) for p in by_name[name].polls]) < mean([float(p) for p in by_name["fixed_5s"].polls])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 jobs per mode, no timing claims")
    parser.add_argument("--scale", type=float, default=0.05, help="time scale s (default 0.05)")
    parser.add_argument("--jobs", type=int, help="measured jobs per mode (default 120; --quick: 10)")
    parser.add_argument("--parallel", type=int, default=16, help="generate_audio calls in flight (default 16)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--jitter",
        type=float,
        default=JITTER,
        help=f"job-to-job spread of the upstream's run time, as a fraction (default {JITTER})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"untimed warm-up jobs per mode, 0-{len(WARMUP_JOBS)} (default {len(WARMUP_JOBS)}; --quick: 3)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["adaptive", "adaptive_fresh", "fixed_5s", "fixed_1s", "webhook"],
        help="which modes to run",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=list(SCENARIOS),
        default=["matched"],
        help="upstream speed against the prior (matched, fast4, slow4) and batches of 50 submitted at once",
    )
    parser.add_argument("--matrix", action="store_true", help="every scenario (50 measured jobs each unless --jobs)")
    parser.add_argument(
        "--sandbox",
        choices=["process", "thread"],
        default="process",
        help="where the sandbox runs: a child process (default) or a thread of this process (shares the GIL)",
    )
    parser.add_argument(
        "--whole-second-timestamps",
        dest="scale_timestamps",
        action="store_false",
        help="keep the sandbox's whole-second completed_at (by default its precision is scaled by s, like time)",
    )
    parser.add_argument("--mode-timeout", type=float, default=300.0, help="hard limit per mode, seconds")
    args = parser.parse_args()
    if args.matrix:
        args.scenarios = list(SCENARIOS)
    if args.jobs is None:
        args.jobs = 10 if args.quick else 50 if args.matrix else 120
    args.durations, args.steps = (QUICK_DURATIONS, QUICK_STEPS) if args.quick else (DURATIONS, STEPS)
    warmup = QUICK_WARMUP_JOBS if args.quick else WARMUP_JOBS
    args.warmup_jobs = list(warmup[: len(warmup) if args.warmup is None else max(args.warmup, 0)])
    if args.quick:
        args.mode_timeout = min(args.mode_timeout, 15.0)
    return args


def main() -> None:
    anyio.run(amain, parse_args())


if __name__ == "__main__":
    main()
