"""When a job should finish and when to ask about it next: pure functions, learned from past jobs."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from mmaudio_mcp.models import JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mmaudio_mcp.models import GenerationParams, JobRecord

MIN_SPREAD: Final = 0.1
MIN_SPREAD_HISTORY: Final = 5
"""Finished jobs needed before their spread replaces the prior's (one job already replaces the prior's rate)."""


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
    window_step_cap: float = 1.5
    """The longest pause between polls while the job is likely to end (its lag then stays under this)."""
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
        times = ("floor", "ceiling", "first_poll_cap", "overhead_seconds", "prior_seconds_per_unit", "window_step_cap")
        return replace(self, **{name: getattr(self, name) * factor for name in times})

    @classmethod
    def fixed(cls, interval: float) -> PollPolicy:
        """Poll every `interval` seconds, learning nothing (the naive poller, for comparison)."""
        return cls(floor=interval, ceiling=interval, first_poll_cap=interval, adaptive=False)


@dataclass(frozen=True)
class Learned:
    """What finished jobs taught: the service's speed, how far single jobs stray from it, and from how many jobs."""

    rate: float
    spread: float
    samples: int


def _units(params: GenerationParams | None) -> float:
    return float(params.duration * params.num_steps) if params else 200.0


def learn(history: Iterable[JobRecord], policy: PollPolicy) -> Learned:
    """Learn how many times as slow as the prior the service is, from finished jobs (the median, robust to the odd
    slow or queued job), from the first one on: a prior 4x off either way costs more than one job's jitter. The
    whole estimate scales (overhead included), as it does when the service is busier or idler. The spread of single
    jobs around it needs a few more jobs."""
    ratios = [
        record.run_seconds / _prior_seconds(record.params, policy)
        for record in history
        if record.status is JobStatus.COMPLETED and record.run_seconds and record.params
    ]
    ratios = sorted(ratio for ratio in ratios if ratio > 0)
    if not ratios:
        return Learned(policy.prior_seconds_per_unit, policy.prior_spread, 0)
    factor = statistics.median(ratios)
    spread = policy.prior_spread
    if len(ratios) >= MIN_SPREAD_HISTORY:
        # The widest stray seen, not a percentile: a window too narrow is paid in lag, one too wide only in polls.
        spread = min(max(1 - ratios[0] / factor, ratios[-1] / factor - 1, MIN_SPREAD), 0.5)
    return Learned(factor * policy.prior_seconds_per_unit, spread, len(ratios))


def seconds_per_unit(history: Iterable[JobRecord], policy: PollPolicy) -> float:
    """The learned speed alone (see learn)."""
    return learn(history, policy).rate


def _prior_seconds(params: GenerationParams | None, policy: PollPolicy) -> float:
    return policy.overhead_seconds + policy.prior_seconds_per_unit * _units(params)


def expected_seconds(params: GenerationParams | None, rate: float, policy: PollPolicy) -> float:
    """Estimate how long Pixazo takes for a job with these parameters, at `rate` seconds per (second x step); the
    fixed overhead scales with the rate against the prior's."""
    return _prior_seconds(params, policy) * rate / policy.prior_seconds_per_unit


def next_poll_delay(
    elapsed: float, expected: float, policy: PollPolicy, *, spread: float | None = None, learned: bool = True
) -> float:
    """When to poll next, `elapsed` seconds into a job expected to take `expected`.

    Wait until the job may end (the expected time less its spread), then poll in short steps through the window
    where it is likely to end (so a completion goes unnoticed for at most one step), then back off gently, growing
    with how overdue it is up to a ceiling that scales with the job (a 2-minute job running late is not polled every
    0.5 s). While nothing is learned the prior may be 4x off either way: probe early, at fractions of its guess."""
    if not policy.adaptive:
        return policy.floor
    spread = policy.prior_spread if spread is None else spread
    early, late = expected * (1 - spread), expected * (1 + spread)
    if not learned and elapsed < early:
        probe = max(expected * policy.explore, policy.floor)
        next_probe = (int(elapsed / probe) + 1) * probe
        return min(max(min(next_probe, early) - elapsed, policy.floor), policy.first_poll_cap)
    if elapsed < early - policy.floor:
        return min(early - elapsed, policy.first_poll_cap)
    step = min(max(policy.window_step * expected, policy.floor), max(policy.window_step_cap, policy.floor))
    if elapsed <= late:
        return step
    overdue = elapsed - late
    ceiling = max(policy.ceiling, 0.1 * expected)
    return min(step + 0.1 * overdue, ceiling)


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
    "expected_seconds",
    "fallback_poll_delay",
    "learn",
    "next_poll_delay",
    "progress_message",
    "seconds_per_unit",
]
