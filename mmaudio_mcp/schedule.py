"""When a job should finish and when to ask about it next: pure functions, learned from past jobs."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from mmaudio_mcp.models import JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mmaudio_mcp.models import GenerationParams, JobRecord

MIN_SPREAD: Final = 0.03
"""The narrowest window trusted, as a fraction of the expected time, however steady past jobs were."""
MIN_SPREAD_HISTORY: Final = 3
"""Finished jobs needed before their spread replaces the prior's (one job already replaces the prior's rate)."""
MIN_FIT_HISTORY: Final = 5
"""Finished jobs (and pairs of them far enough apart) needed before they fit a line of their own."""
FIT_SPAN: Final = 10.0
"""How many stamp precisions apart two jobs' times should be for their slope to count in the line."""


@dataclass(frozen=True)
class PollPolicy:
    """Bounds of the adaptive schedule, and the prior for a new install (8 s at 25 steps ≈ 19 s in all).

    Times are in seconds; `scaled` shrinks them all for a sandbox that runs faster than real time. The fractions
    (spread, window step, exploration) are the same at every speed."""

    floor: float = 0.5
    ceiling: float = 5.0
    first_poll_cap: float = 30.0
    overhead_seconds: float = 3.0
    prior_seconds_per_unit: float = 0.08
    """Seconds per (audio second x diffusion step)."""
    window_step_cap: float = 0.8
    """The longest pause between polls while the job is likely to end: a completion there goes unnoticed for at
    most this long, half of it in the middle case."""
    stamp_precision: float = 1.0
    """Pixazo's completed_at has whole seconds: a finished job's measured time is known to half of this."""
    prior_spread: float = 0.3
    """How far single jobs stray from the expected time, as a fraction, until history says otherwise."""
    window_step: float = 0.05
    """The pause between polls while the job is likely to end, as a fraction of the expected time."""
    explore: float = 0.25
    """While nothing is learned, probe at this fraction of the prior's guess, and every such step after it."""
    adaptive: bool = True
    """False: poll every `floor` seconds whatever happens (a baseline for benchmarks)."""

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy for a service `factor` times as slow (the sandbox runs faster than real time)."""
        times = (
            "floor",
            "ceiling",
            "first_poll_cap",
            "overhead_seconds",
            "prior_seconds_per_unit",
            "window_step_cap",
            "stamp_precision",
        )
        return replace(self, **{name: getattr(self, name) * factor for name in times})

    @classmethod
    def fixed(cls, interval: float) -> PollPolicy:
        """Poll every `interval` seconds, learning nothing (the naive poller, for comparison)."""
        return cls(floor=interval, ceiling=interval, first_poll_cap=interval, adaptive=False)


@dataclass(frozen=True)
class Learned:
    """What finished jobs taught: the service's speed, how far single jobs stray from it, and from how many jobs."""

    rate: float
    """Seconds per (audio second x step)."""
    spread: float
    samples: int
    overhead: float | None = None
    """Fixed seconds per job, once jobs of several shapes gave a line of their own; None: the prior's, scaled."""

    def expected(self, params: GenerationParams | None, policy: PollPolicy) -> float:
        """How long a job with these parameters should take, by what was learned."""
        return _expected_for(_units(params), self, policy)


def _units(params: GenerationParams | None) -> float:
    return float(params.duration * params.num_steps) if params else 200.0


def learn(history: Iterable[JobRecord], policy: PollPolicy) -> Learned:
    """Learn the service's speed from finished jobs, from the first one on: a prior 4x off either way costs more
    than one job's jitter. One job, or jobs of one shape, scale the whole prior (overhead included), as a busier or
    idler service does; jobs of several shapes fit a line of their own (Theil-Sen: medians, so an odd slow or
    queued job does not drag it), since the upstream's fixed cost and per-step cost need not keep the prior's
    proportions. The spread of single jobs around it needs a few more jobs (three, and it is widened while few)."""
    runs = [
        (_units(record.params), record.run_seconds)
        for record in history
        if record.status is JobStatus.COMPLETED and record.run_seconds and record.run_seconds > 0 and record.params
    ]
    if not runs:
        return Learned(policy.prior_seconds_per_unit, policy.prior_spread, 0)
    factor = statistics.median(seconds / _prior_seconds_for(units, policy) for units, seconds in runs)
    learned = Learned(factor * policy.prior_seconds_per_unit, policy.prior_spread, len(runs))
    if len(runs) < MIN_SPREAD_HISTORY:
        return learned
    line = _fit_line(runs, learned.rate, policy) if len(runs) >= MIN_FIT_HISTORY else None
    if line is not None:
        learned = replace(learned, rate=line[1], overhead=line[0])
    return replace(learned, spread=_spread(runs, learned, policy))


def _fit_line(runs: list[tuple[float, float]], rate: float, policy: PollPolicy) -> tuple[float, float] | None:
    """(overhead, rate) of the Theil-Sen line through (units, seconds), or None if the jobs do not span shapes far
    enough apart or the line makes no sense (a job that costs less the more it does). Only pairs whose times should
    differ by FIT_SPAN stamp precisions count (by the scaled prior's `rate`): two short jobs' slope is mostly the
    stamps' blur, and extrapolated to a long job it would misplace its window by far more than its jitter."""
    span = FIT_SPAN * policy.stamp_precision / rate
    slopes = [(s2 - s1) / (u2 - u1) for (u1, s1), (u2, s2) in itertools.combinations(runs, 2) if abs(u2 - u1) >= span]
    if len(slopes) < MIN_FIT_HISTORY:
        return None
    slope = statistics.median(slopes)
    overhead = statistics.median(seconds - slope * units for units, seconds in runs)
    return (overhead, slope) if slope > 0 and overhead >= 0 else None


def _spread(runs: list[tuple[float, float]], learned: Learned, policy: PollPolicy) -> float:
    """The widest stray of a single job from its expected time, as a fraction of it, less what the upstream's
    whole-second stamps blur (a 4 s job measured to +-0.5 s is not 12% erratic). The widest, not a percentile: a
    window too narrow is paid in lag, one too wide only in polls."""
    strays = [
        max(abs(seconds - expected) - policy.stamp_precision / 2, 0.0) / expected
        for units, seconds in runs
        if (expected := _expected_for(units, learned, policy)) > 0
    ]
    margin = 1 + 2 / len(runs)  # a few jobs seldom show the widest stray there is: widen it while they are few
    return min(max(max(strays, default=0.0) * margin, MIN_SPREAD), 0.5)


def _prior_seconds_for(units: float, policy: PollPolicy) -> float:
    return policy.overhead_seconds + policy.prior_seconds_per_unit * units


def _expected_for(units: float, learned: Learned, policy: PollPolicy) -> float:
    """Seconds for a job of `units` by what was learned: its own fixed cost once known, else the prior's, scaled."""
    overhead = policy.overhead_seconds * learned.rate / policy.prior_seconds_per_unit
    return (overhead if learned.overhead is None else learned.overhead) + learned.rate * units


def next_poll_delay(
    elapsed: float, expected: float, policy: PollPolicy, *, spread: float | None = None, learned: bool = True
) -> float:
    """When to poll next, `elapsed` seconds into a job expected to take `expected`.

    Wait until the job may end (the expected time less its spread), then poll in short steps through the window
    where it is likely to end (so a completion goes unnoticed for at most one step), then back off gently, growing
    with how overdue it is up to a ceiling that scales with the job (a 2-minute job running late is not polled every
    0.5 s). While nothing is learned the prior may be 4x off either way: probe at fractions of its guess instead."""
    if not policy.adaptive:
        return policy.floor
    if not learned:
        return _probe_delay(elapsed, expected, policy)
    spread = policy.prior_spread if spread is None else spread
    early, late = expected * (1 - spread), expected * (1 + spread)
    step = min(max(policy.window_step * expected, policy.floor), max(policy.window_step_cap, policy.floor))
    if elapsed < late:
        due = _window_poll(max(elapsed, early), late, step)
        if due - elapsed < 0.2 * step and due < late:
            due += step  # just polled at (or a hair before) this point of the grid
        return min(max(due - elapsed, policy.floor), policy.first_poll_cap)
    overdue = elapsed - late
    ceiling = max(policy.ceiling, 0.1 * expected)
    return min(step + 0.1 * overdue, ceiling)


def _probe_delay(elapsed: float, expected: float, policy: PollPolicy) -> float:
    """Before any job has finished, the guess may be 4x off either way, so its window is no place for short steps:
    probe at even fractions of it, before, through and after it, until the first job to finish teaches the rate (a
    long job's probes at most every tenth of it, as when overdue)."""
    probe = min(max(expected * policy.explore, policy.floor), max(policy.ceiling, 0.1 * expected))
    return min((int(elapsed / probe) + 1) * probe - elapsed, policy.first_poll_cap)


def _window_poll(after: float, late: float, step: float) -> float:
    """The first poll after `after` on a grid of `step`s that ends exactly at the window's far edge: a window's
    first poll then falls one step (at most) into it, not at its start, where the job has almost never ended yet;
    a window narrower than a step gets one poll, at its end, where the job is almost surely done."""
    steps_back = math.ceil((late - after) / step) - 1
    return late - max(steps_back, 0) * step


def fallback_poll_delay(elapsed: float, expected: float, policy: PollPolicy) -> float:
    """With webhooks, polls are only a safety net: one well after the expected end, then rarely. (No early cap:
    the callback reports failures as well as completions.)"""
    safety_net = expected * 1.25 + policy.ceiling
    remaining = safety_net - elapsed
    return remaining if remaining > policy.floor else max(3 * policy.ceiling, 0.25 * expected)


def eta_seconds(elapsed: float, expected: float) -> float:
    """Seconds left by the estimate; once overdue, a small positive number rather than a negative one."""
    return max(expected - elapsed, 1.0)


def progress_message(status: JobStatus, elapsed: float, expected: float, *, heard: bool = True) -> str:
    """Say where the job is in words a person reads at a glance: a finished job has no time left, and before the
    first status check the job's status is not claimed (the 202's QUEUED says nothing about now)."""
    if status.is_terminal:
        return f"{status.value} after {elapsed:.0f} s"
    left = expected - elapsed
    when = f"about {left:.0f} s left" if left >= 1 else "should finish any moment"
    if not heard:
        return f"Submitted, {elapsed:.0f} s elapsed, {when} (status not checked yet)"
    return f"{status.value}, {elapsed:.0f} s elapsed, {when}"


__all__ = [
    "Learned",
    "PollPolicy",
    "eta_seconds",
    "fallback_poll_delay",
    "learn",
    "next_poll_delay",
    "progress_message",
]
