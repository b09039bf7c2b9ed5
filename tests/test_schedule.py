"""The adaptive poll schedule: first poll near the expected end, then short steps, learned from history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mmaudio_mcp.models import GenerationParams, JobRecord, JobStatus
from mmaudio_mcp.schedule import (
    PollPolicy,
    expected_seconds,
    next_poll_delay,
    progress_message,
    seconds_per_unit,
)

POLICY = PollPolicy()
NOW = datetime(2026, 11, 29, tzinfo=UTC)


def finished(run_seconds: float, duration: int = 8, num_steps: int = 25) -> JobRecord:
    params = GenerationParams(prompt="x", duration=duration, num_steps=num_steps)
    return JobRecord(
        local_id="l", status=JobStatus.COMPLETED, params=params, created_at=NOW, updated_at=NOW, run_seconds=run_seconds
    )


def test_a_new_install_uses_the_prior() -> None:
    """Without history, an 8 s / 25-step job is expected to take about 19 s."""
    rate = seconds_per_unit([], POLICY)
    assert expected_seconds(GenerationParams(prompt="x"), rate, POLICY) == 19.0


def test_the_rate_is_learned_from_history_and_robust_to_an_outlier() -> None:
    """The median of past jobs wins over the prior, and one very slow job does not drag it."""
    history = [finished(13.0), finished(13.0), finished(13.0), finished(300.0)]
    rate = seconds_per_unit(history, POLICY)
    assert expected_seconds(GenerationParams(prompt="x"), rate, POLICY) == 13.0


def test_the_first_poll_lands_at_the_expected_end_and_later_ones_are_short() -> None:
    """Polls wait out the estimate, then come often, backing off slowly if the estimate was low."""
    assert next_poll_delay(0.0, 19.0, POLICY) == 19.0
    assert next_poll_delay(19.0, 19.0, POLICY) == POLICY.floor
    assert POLICY.floor < next_poll_delay(29.0, 19.0, POLICY) <= POLICY.ceiling
    assert next_poll_delay(500.0, 19.0, POLICY) == POLICY.ceiling
    assert next_poll_delay(0.0, 500.0, POLICY) == POLICY.first_poll_cap


def test_a_typical_job_takes_few_polls_when_the_estimate_is_right() -> None:
    """With an accurate estimate an 8 s / 25-step job needs only a handful of polls."""
    elapsed, polls, actual = 0.0, 0, 19.8
    while elapsed < actual:
        elapsed += next_poll_delay(elapsed, 19.0, POLICY)
        polls += 1
    assert polls <= 4


def test_scaling_a_policy_scales_every_duration() -> None:
    """The sandbox runs faster than real time; its policy is the same shape, shorter."""
    fast = POLICY.scaled(0.1)
    assert (fast.floor, fast.ceiling, fast.overhead_seconds) == pytest.approx((0.05, 0.5, 0.3))


def test_progress_messages_read_naturally() -> None:
    """The message says the status, time so far and time left."""
    assert progress_message(JobStatus.PROCESSING, 12.0, 20.0) == "PROCESSING, 12 s elapsed, about 8 s left"
    assert progress_message(JobStatus.PROCESSING, 25.0, 20.0) == "PROCESSING, 25 s elapsed, should finish any moment"
