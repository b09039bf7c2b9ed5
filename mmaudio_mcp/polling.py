"""One poller per job, however many callers wait on it: each answer fans out to every waiter.

A poller runs while someone waits and stops when the last waiter leaves (the job itself goes on upstream and in
the store; the next waiter starts a new poller). Waiters get progress every couple of seconds and on every change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Self

import anyio

from mmaudio_mcp.errors import MmaudioError, NetworkError, RateLimitedError, UpstreamUnavailableError
from mmaudio_mcp.models import JobError
from mmaudio_mcp.schedule import fallback_poll_delay, next_poll_delay, progress_message

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from anyio.abc import TaskGroup

    from mmaudio_mcp.models import JobRecord
    from mmaudio_mcp.schedule import Learned, PollPolicy
    from mmaudio_mcp.store import Leases

    ProgressCallback = Callable[[float, float | None, str], Awaitable[None]]
    Step = Callable[[JobRecord], Awaitable[JobRecord]]

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL: Final = 2.0
_TRANSIENT: Final = (NetworkError, RateLimitedError, UpstreamUnavailableError)
"""Failures of the status poll itself, which the next poll may not meet; anything else ends the wait."""


def elapsed_seconds(record: JobRecord) -> float:
    """Seconds from the submit to the end of the job (or to now while it runs), all by this server's clock: the
    end is when we first saw it finished, never Pixazo's completed_at (its clock may be minutes off ours)."""
    start = record.submitted_at or record.created_at
    finished = record.finished_at or record.completed_at  # completed_at: rows stored before finished_at existed
    end = finished if record.status.is_terminal and finished else datetime.now(UTC)
    return max((end - start).total_seconds(), 0.0)


@dataclass
class _Series:
    """One call's progress notifications: each value is greater than the one before (the protocol says MUST)."""

    send: ProgressCallback
    last: float | None = None

    async def report(self, value: float, total: float | None, message: str) -> None:
        value = round(value, 1)
        if self.last is not None and value <= self.last:
            value = round(self.last + 0.1, 1)
        self.last = value
        await self.send(value, None if total is None else max(round(total, 1), value), message)


@dataclass
class _Watch:
    """One job being polled, and how many wait on it."""

    record: JobRecord
    changed: anyio.Event = field(default_factory=anyio.Event)
    wake: anyio.Event = field(default_factory=anyio.Event)
    waiters: int = 0
    done: bool = False
    failure: MmaudioError | None = None
    note: str | None = None
    last_error: MmaudioError | None = None
    replanned: bool = False
    """The failure of the last poll, if it failed (a transient one: the poller goes on)."""

    def publish(self, record: JobRecord, *, done: bool = False) -> None:
        self.record, self.done = record, done or self.done
        self.changed.set()
        self.changed = anyio.Event()


class Pollers:
    """Run `step` (one status poll, and the download once complete) on the adaptive schedule, per job."""

    def __init__(
        self,
        step: Step,
        expected: Callable[[JobRecord], float],
        policy: PollPolicy,
        *,
        webhooks: bool = False,
        leases: Leases | None = None,
        learned: Callable[[], Learned] | None = None,
    ) -> None:
        """With `leases`, the poller of a job whose lease another process holds follows it instead: `step` then
        re-reads the row (cheap), every `leases.follow_seconds`, and takes the lease over if it expires. `learned`
        tells what finished jobs taught so far (the schedule probes early while nothing is)."""
        self._learned = learned
        self._step = step
        self._leases = leases
        self._expected = expected
        self._policy = policy
        self._webhooks = webhooks
        self._watches: dict[str, _Watch] = {}
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        # The pollers are background work that catch their own errors; an exception from the code using us passes
        # through unchanged instead of being wrapped in an ExceptionGroup by the task group.
        await self._task_group.__aexit__(None, None, None)
        return None

    async def wait(self, record: JobRecord, seconds: float, progress: ProgressCallback | None) -> JobRecord:
        """Wait up to `seconds` for the job to finish, reporting progress; return the latest record."""
        watch = self._watch(record)
        series = _Series(progress) if progress is not None else None
        watch.waiters += 1
        try:
            with anyio.move_on_after(seconds):
                while not watch.done:
                    await self._report(watch, series)
                    with anyio.move_on_after(PROGRESS_INTERVAL):
                        await watch.changed.wait()
        finally:
            watch.waiters -= 1
        if watch.failure is not None:
            raise watch.failure
        await self._report(watch, series)
        if not watch.done and watch.last_error is not None:
            # The wait ends on a failed poll: say what failed, as check_status would, but as a note on the job
            # (still running, still paid for), never as a failure that invites generating it again.
            failed = watch.last_error
            note = JobError(kind=failed.kind, message=failed.message, retryable=True)
            return watch.record.model_copy(update={"error": note})
        return watch.record

    def replan(self) -> None:
        """Something was learned (a job finished): every poller recomputes its next poll, and a job now past its
        expected end is polled at once (the first of a batch to finish tells the rest theirs are due)."""
        if self._webhooks:
            return  # the callback says when each job ends; polls are only a safety net
        for watch in self._watches.values():
            watch.replanned = True
            watch.wake.set()

    def nudge(self, request_id: str) -> None:
        """Another process changed this job's row (PostgreSQL NOTIFY): its follower here re-reads it now instead
        of at its next tick. Nothing starts if nobody here waits on it."""
        watch = self._watches.get(request_id)
        if watch is not None:
            watch.wake.set()

    def wake(self, record: JobRecord) -> None:
        """Poll this job now (a webhook said it changed): through its poller, or once in the background."""
        assert record.request_id is not None
        watch = self._watches.get(record.request_id)
        if watch is not None:
            watch.wake.set()
        elif self._task_group is not None:
            self._task_group.start_soon(self._step_in_background, record, name=f"webhook {record.request_id}")

    async def _step_in_background(self, record: JobRecord) -> None:
        try:
            await self._step(record)
        except MmaudioError as exc:
            logger.warning("background poll of %s failed: %s", record.request_id, exc.message)
        except Exception:  # never let one job's bug end the task group the others share
            logger.exception("background poll of %s failed unexpectedly", record.request_id)

    def _watch(self, record: JobRecord) -> _Watch:
        assert record.request_id is not None
        watch = self._watches.get(record.request_id)
        if watch is None:
            if self._task_group is None:
                raise RuntimeError("Pollers must be used as an async context manager")
            watch = self._watches[record.request_id] = _Watch(record)
            self._task_group.start_soon(self._poll, watch, name=f"poll {record.request_id}")
        return watch

    async def _poll(self, watch: _Watch) -> None:
        request_id = watch.record.request_id
        assert request_id is not None
        leading = False  # this poller holds the job's lease (across polls, so no other process polls meanwhile)
        try:
            while watch.waiters > 0 and not watch.done:
                if self._leases is not None and not (leading and self._leases.holds(request_id)):
                    leading = await self._leases.acquire(request_id)  # else follow: re-read the row, try again
                await self._pause(watch, leading=leading)
                if watch.waiters == 0:
                    break
                await self._poll_once(watch)
        except MmaudioError as exc:
            watch.failure = exc
            watch.publish(watch.record, done=True)
        except Exception as exc:  # a bug must end this wait, not the task group every other job shares
            logger.exception("polling %s failed unexpectedly", request_id)
            watch.failure = MmaudioError(
                f"Internal error while waiting for {request_id} ({type(exc).__name__}); the job is kept: "
                "try check_status again."
            )
            watch.publish(watch.record, done=True)
        finally:
            del self._watches[request_id]
            if leading and self._leases is not None:
                await self._leases.release(request_id)

    async def _pause(self, watch: _Watch, *, leading: bool) -> None:
        """Sleep until the next poll is due, or until a webhook asks for one now; a replan recomputes the pause."""
        while True:
            with anyio.move_on_after(self._delay(watch, leading=leading)) as slept:
                await watch.wake.wait()
            watch.wake = anyio.Event()
            if slept.cancelled_caught or not watch.replanned:
                return
            watch.replanned = False
            if watch.waiters == 0 or (self._overdue(watch.record) and not self._just_polled(watch.record)):
                return

    def _overdue(self, record: JobRecord) -> bool:
        return elapsed_seconds(record) >= self._expected(record)

    def _just_polled(self, record: JobRecord) -> bool:
        """Polled less than the shortest pause ago: a replan then waits for the new schedule, not a second poll."""
        last = record.polled_at
        return last is not None and (datetime.now(UTC) - last).total_seconds() < self._policy.floor

    async def _poll_once(self, watch: _Watch) -> None:
        try:
            record = await self._step(watch.record)
        except _TRANSIENT as exc:
            watch.note = exc.message  # said in the progress message; the next poll comes after a longer pause
            watch.last_error = exc
            watch.publish(watch.record)  # waiters hear of it now, not at their next progress tick
            return
        watch.note = None
        watch.last_error = None
        watch.publish(record, done=record.status.is_terminal)

    def _delay(self, watch: _Watch, *, leading: bool = True) -> float:
        elapsed, expected = elapsed_seconds(watch.record), self._expected(watch.record)
        if self._webhooks:
            delay = fallback_poll_delay(elapsed, expected, self._policy)
        else:
            learned = self._learned() if self._learned is not None else None
            spread = learned.spread if learned is not None else None
            delay = next_poll_delay(
                elapsed, expected, self._policy, spread=spread, learned=learned is None or learned.samples > 0
            )
        if not leading and self._leases is not None:  # following another process's poller: re-read the row often
            return min(delay, self._leases.follow_seconds)
        return max(delay, self._policy.ceiling) if watch.note else delay

    async def _report(self, watch: _Watch, series: _Series | None) -> None:
        if series is None:
            return
        record = watch.record
        elapsed, expected = elapsed_seconds(record), self._expected(record)
        message = progress_message(record.status, elapsed, expected, heard=record.polled_at is not None)
        if watch.note:
            message += f" (last poll: {watch.note})"
        total = elapsed if record.status.is_terminal else max(expected, elapsed + 1.0)
        await series.report(elapsed, total, message)


__all__ = ["PROGRESS_INTERVAL", "Pollers", "elapsed_seconds"]
