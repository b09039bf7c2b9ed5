"""When a job should finish and when to ask about it next: pure functions, learned from past jobs."""

from __future__ import annotations

import statistics
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Final

from mmaudio_mcp.models import JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mmaudio_mcp.models import GenerationParams, JobRecord

MIN_HISTORY: Final = 3


@dataclass(frozen=True)
class PollPolicy:
    """Bounds of the adaptive schedule, and the prior for a new install (8 s at 25 steps ≈ 19 s in all)."""

    floor: float = 0.5
    ceiling: float = 5.0
    first_poll_cap: float = 30.0
    overhead_seconds: float = 3.0
    prior_seconds_per_unit: float = 0.08
    """Seconds per (audio second x diffusion step)."""

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy for a service `factor` times as slow (the sandbox runs faster than real time)."""
        return PollPolicy(*(value * factor for value in astuple(self)))


def _units(params: GenerationParams | None) -> float:
    return float(params.duration * params.num_steps) if params else 200.0


def seconds_per_unit(history: Iterable[JobRecord], policy: PollPolicy) -> float:
    """Learn the service's speed from finished jobs: the median is robust to the odd slow or queued job."""
    rates = [
        (record.run_seconds - policy.overhead_seconds) / _units(record.params)
        for record in history
        if record.status is JobStatus.COMPLETED and record.run_seconds and record.params
    ]
    rates = [rate for rate in rates if rate > 0]
    if len(rates) < MIN_HISTORY:
        return policy.prior_seconds_per_unit
    return statistics.median(rates)


def expected_seconds(params: GenerationParams | None, rate: float, policy: PollPolicy) -> float:
    """Estimate how long Pixazo takes for a job with these parameters."""
    return policy.overhead_seconds + rate * _units(params)


def next_poll_delay(elapsed: float, expected: float, policy: PollPolicy) -> float:
    """Wait until the expected end, then poll often, backing off gently if the estimate was too low.

    The back-off grows with how overdue the job is, up to a ceiling that scales with the job's length: a 2-minute
    job that runs late is not polled every 5 s."""
    remaining = expected - elapsed
    if remaining > policy.floor:
        return min(remaining, policy.first_poll_cap)
    overdue = -remaining
    ceiling = max(policy.ceiling, 0.1 * expected)
    return min(max(policy.floor, policy.floor + 0.2 * overdue), ceiling)


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
    "PollPolicy",
    "eta_seconds",
    "expected_seconds",
    "fallback_poll_delay",
    "next_poll_delay",
    "progress_message",
    "seconds_per_unit",
]
