"""The adaptive poll schedule: first poll near the expected end, then short steps, learned from history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mmaudio_mcp.models import GenerationParams, JobRecord, JobStatus
from mmaudio_mcp.schedule import (
    MIN_SPREAD,
    PollPolicy,
    learn,
    next_poll_delay,
    progress_message,
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
    assert learn([], POLICY).expected(GenerationParams(prompt="x"), POLICY) == 19.0


def test_the_rate_is_learned_from_history_and_robust_to_an_outlier() -> None:
    """The median of past jobs wins over the prior, and one very slow job does not drag it."""
    history = [finished(13.0), finished(13.0), finished(13.0), finished(300.0)]
    assert learn(history, POLICY).expected(GenerationParams(prompt="x"), POLICY) == 13.0


def test_the_first_poll_waits_for_the_window_where_the_job_may_end_and_later_ones_are_short() -> None:
    """Polls wait until the job may end (the estimate less its spread), then come in short steps through the window
    where it is likely to end, then back off slowly, up to a ceiling that scales with the job."""
    step = POLICY.window_step_cap  # 5% of a 20 s job is 1 s: capped
    assert next_poll_delay(0.0, 19.0, POLICY, spread=0.0) == 19.0
    assert next_poll_delay(0.0, 20.0, POLICY, spread=0.25) == pytest.approx(15.0 + 0.4)  # a step at most into 15-25 s
    assert next_poll_delay(15.4, 20.0, POLICY, spread=0.25) == pytest.approx(step)
    assert next_poll_delay(250.0 - 10 * step, 200.0, POLICY, spread=0.25) == pytest.approx(step)  # 5% is 10 s
    assert POLICY.floor < next_poll_delay(35.0, 20.0, POLICY, spread=0.25) <= POLICY.ceiling
    assert next_poll_delay(500.0, 19.0, POLICY) == POLICY.ceiling
    assert next_poll_delay(0.0, 500.0, POLICY) == POLICY.first_poll_cap


def polls_until(actual: float, expected: float, spread: float) -> list[float]:
    """The times of the polls a job that really ends at `actual` gets, up to the first that sees it done."""
    times = [0.0]
    while times[-1] < actual:
        times.append(times[-1] + next_poll_delay(times[-1], expected, POLICY, spread=spread))
    return times[1:]


def test_the_window_is_polled_on_a_grid_that_ends_at_its_far_edge() -> None:
    """No poll is spent at the window's very start (the job has almost never ended there); the last one falls on its
    far edge, where the job is almost surely done; in between a completion goes unnoticed for at most one step."""
    expected, spread = 20.0, 0.1  # a window from 18 to 22 s
    polls = polls_until(22.0, expected, spread)
    assert 18.0 < polls[0] <= 18.0 + POLICY.window_step_cap
    assert polls[-1] == pytest.approx(22.0)
    for actual in (18.01, 19.3, 20.7, 21.99):
        assert polls_until(actual, expected, spread)[-1] - actual <= POLICY.window_step_cap + 1e-9


def test_a_window_narrower_than_a_step_gets_one_poll_at_its_end() -> None:
    """A short job whose spread is small is polled once, when it should surely be done: one poll, little lag."""
    assert polls_until(10.1, 10.0, 0.02) == [pytest.approx(10.2)]  # a window of 9.8-10.2 s, and a step of 0.5 s


def test_a_typical_job_takes_few_polls_when_the_estimate_and_spread_are_right() -> None:
    """With an accurate estimate and a steady service an 8 s / 25-step job needs only a handful of polls."""
    elapsed, polls, actual = 0.0, 0, 19.8
    while elapsed < actual:
        elapsed += next_poll_delay(elapsed, 19.0, POLICY, spread=0.05)
        polls += 1
    assert polls <= 4


def test_while_nothing_is_learned_the_schedule_probes_early() -> None:
    """A fresh install does not trust its prior (the service may be 4x faster or slower): it polls at a quarter of
    the guess, then every quarter, before, through and after the guessed end, instead of once at the guessed end or
    in short steps through a window the guess may have misplaced."""
    assert next_poll_delay(0.0, 20.0, POLICY, learned=False) == 5.0
    assert next_poll_delay(5.0, 20.0, POLICY, learned=False) == 5.0
    assert next_poll_delay(15.2, 20.0, POLICY, learned=False) == pytest.approx(4.8)  # in the window: no short steps
    assert next_poll_delay(41.0, 20.0, POLICY, learned=False) == pytest.approx(4.0)  # 4x the guess: still quarters
    assert next_poll_delay(0.0, 200.0, POLICY, learned=False) == 20.0  # a long job: a tenth of it, as when overdue


def test_a_fixed_policy_polls_at_its_interval_whatever_happens() -> None:
    """The benchmark's naive baselines: the same pause early, in the window and overdue."""
    fixed = PollPolicy.fixed(5.0)
    assert {next_poll_delay(t, 19.0, fixed, learned=False) for t in (0.0, 15.0, 100.0)} == {5.0}


def test_one_finished_job_replaces_the_prior_and_a_few_teach_the_spread() -> None:
    """A prior 4x off costs more than one job's jitter, so the first job already sets the rate; the spread of single
    jobs around it is learned from five."""
    one = learn([finished(19.0 / 4)], POLICY)  # a service 4x faster than the prior
    assert (one.samples, one.spread) == (1, POLICY.prior_spread)
    assert one.expected(GenerationParams(prompt="x"), POLICY) == pytest.approx(19.0 / 4)
    assert one.expected(GenerationParams(prompt="x", duration=30), POLICY) == pytest.approx(63.0 / 4)
    steady = learn([finished(13.0 + d) for d in (-0.2, -0.1, 0.0, 0.1, 0.2)], POLICY)
    assert steady.samples == 5 and steady.spread < POLICY.prior_spread


def test_scaling_a_policy_scales_every_duration() -> None:
    """The sandbox runs faster than real time; its policy is the same shape, shorter."""
    fast = POLICY.scaled(0.1)
    assert (fast.floor, fast.ceiling, fast.overhead_seconds) == pytest.approx((0.05, 0.5, 0.3))


def test_progress_messages_read_naturally() -> None:
    """The message says the status, time so far and time left."""
    assert progress_message(JobStatus.PROCESSING, 12.0, 20.0) == "PROCESSING, 12 s elapsed, about 8 s left"
    assert progress_message(JobStatus.PROCESSING, 25.0, 20.0) == "PROCESSING, 25 s elapsed, should finish any moment"


async def test_what_one_job_teaches_reaches_the_pollers_of_the_others_at_once() -> None:
    """Pollers.replan: a job expected to take an hour is polled right after the estimate drops below its elapsed
    time (the first of a batch to finish tells the rest), not at the hour. (The liveness bound is far below the
    hour the poller would otherwise sleep.)"""
    import anyio

    from mmaudio_mcp.polling import Pollers

    expected = {"value": 3600.0}
    polled = anyio.Event()

    async def step(record: JobRecord) -> JobRecord:
        polled.set()
        return record.model_copy(update={"status": JobStatus.COMPLETED})

    now = datetime.now(UTC)
    job = JobRecord(
        local_id="l", request_id="due", status=JobStatus.QUEUED, created_at=now, updated_at=now, submitted_at=now
    )
    policy = PollPolicy(first_poll_cap=3600.0)
    async with Pollers(step, lambda _record: expected["value"], policy) as pollers, anyio.create_task_group() as tasks:
        tasks.start_soon(pollers.wait, job, 3600, None)
        await anyio.sleep(0.2)
        expected["value"] = 0.1  # something finished: jobs like this one take 0.1 s
        with anyio.fail_after(20):
            pollers.replan()
            await polled.wait()
        tasks.cancel_scope.cancel()


def test_jobs_of_several_shapes_fit_the_upstreams_own_fixed_and_per_step_cost() -> None:
    """An upstream with a larger fixed cost and a smaller per-step cost than the prior (10 s + 0.02 s per second x
    step) is predicted for every shape once a few shapes are seen: scaling the prior would be off by half either
    way, and that error would pass for jitter and widen every window."""
    shapes = [(2, 10), (8, 25), (30, 50), (4, 25), (15, 10), (30, 25)]
    history = [finished(10.0 + 0.02 * d * s, d, s) for d, s in shapes]
    learned = learn(history, POLICY)
    for duration, steps in ((2, 10), (30, 50), (15, 25)):
        params = GenerationParams(prompt="x", duration=duration, num_steps=steps)
        assert learned.expected(params, POLICY) == pytest.approx(10.0 + 0.02 * duration * steps)
    assert learned.spread == MIN_SPREAD


def test_the_whole_second_stamps_blur_is_not_taken_for_jitter() -> None:
    """Short jobs measured to +-0.5 s (Pixazo's completed_at has whole seconds) do not widen the window; a job that
    really strays does."""
    blurred = [finished(5.0 + blur, 2, 25) for blur in (-0.45, 0.3, 0.0, 0.45, -0.2)]
    assert learn(blurred, POLICY).spread == MIN_SPREAD
    erratic = [*blurred[:4], finished(7.0, 2, 25)]
    widened = 1 + 2 / 5  # five jobs seldom show the widest stray there is
    assert learn(erratic, POLICY).spread == pytest.approx((7.0 - 5.3 - 0.5) / 5.3 * widened)  # the median: 5.3 s


def test_three_steady_jobs_narrow_the_window_and_a_few_are_not_trusted_as_much_as_many() -> None:
    """The prior's 30% stands only until three jobs are done; the stray they show is widened while jobs are few."""
    three = learn([finished(20.0 * factor) for factor in (0.9, 1.0, 1.1)], POLICY)
    many = learn([finished(20.0 * factor) for factor in (0.9, 1.0, 1.1) * 10], POLICY)
    assert MIN_SPREAD < many.spread < three.spread < POLICY.prior_spread
    assert many.spread == pytest.approx((2.0 - 0.5) / 20.0 * (1 + 2 / 30))


async def test_a_replan_right_after_a_poll_waits_for_the_new_schedule_instead_of_polling_again() -> None:
    """In a batch, what the first jobs teach moves every estimate: a job polled a moment ago is not polled again
    at once because it now looks overdue (the next poll follows the new schedule)."""
    import anyio

    from mmaudio_mcp.polling import Pollers

    polls: list[float] = []
    first = anyio.Event()

    async def step(record: JobRecord) -> JobRecord:
        polls.append(anyio.current_time())
        first.set()
        return record.model_copy(update={"polled_at": datetime.now(UTC), "status": JobStatus.PROCESSING})

    now = datetime.now(UTC)
    job = JobRecord(
        local_id="l", request_id="due", status=JobStatus.QUEUED, created_at=now, updated_at=now, submitted_at=now
    )
    expected = {"value": 0.3}
    policy = PollPolicy(floor=1.0, window_step_cap=1.0)
    async with Pollers(step, lambda _record: expected["value"], policy) as pollers, anyio.create_task_group() as tasks:
        tasks.start_soon(pollers.wait, job, 3600, None)
        with anyio.fail_after(20):
            await first.wait()
        expected["value"] = 0.2  # something finished: the job now looks overdue
        pollers.replan()
        await anyio.sleep(0.5)
        assert len(polls) == 1
        tasks.cancel_scope.cancel()


def test_short_jobs_blurred_by_whole_second_stamps_do_not_draw_a_line_for_long_ones() -> None:
    """Six jobs of 3-6 s measured to +-0.5 s would give a slope that is mostly blur; extrapolated to a 2-minute job
    it would misplace its window by far more than its jitter. They scale the prior instead, until jobs of shapes far
    enough apart are done."""
    truth = [(2, 10, 0.4), (4, 10, -0.4), (2, 25, 0.3), (4, 25, -0.3), (2, 50, -0.45), (8, 10, 0.45)]
    short = [finished(3.0 + 0.075 * d * s + blur, d, s) for d, s, blur in truth]
    learned = learn(short, POLICY)
    assert learned.overhead is None
    long_job = GenerationParams(prompt="x", duration=30, num_steps=50)
    assert learned.expected(long_job, POLICY) == pytest.approx(3.0 + 0.075 * 1500, rel=0.1)
