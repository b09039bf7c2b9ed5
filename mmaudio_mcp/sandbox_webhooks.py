"""Deliver the sandbox's webhook callbacks: each job's phases in order when the clock reaches them, plus duplicates.

The only part of the sandbox that needs a task: `Webhooks.deliver`, which the app's lifespan also runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx2

    from mmaudio_mcp.sandbox_jobs import Job, Phase, SandboxConfig, SandboxStats, Webhook

__all__ = ["WEBHOOK_TIMEOUT", "Webhooks"]

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 5.0


class Webhooks:
    """The jobs with callbacks still to announce, and the dispatcher that POSTs them."""

    def __init__(
        self,
        config: SandboxConfig,
        stats: SandboxStats,
        body_of: Callable[[Job, Phase], dict[str, object]],
    ) -> None:
        """Announce through `body_of` (the status body of a job in a phase) and count in `stats` (shared, live)."""
        self._config = config
        self._stats = stats
        self._body_of = body_of
        self._hooked: dict[str, Job] = {}  # jobs with webhook phases not yet announced

    def watch(self, job: Job) -> None:
        """Announce this job's phases (it has a webhook) as the clock reaches them."""
        self._hooked[job.request_id] = job

    async def deliver(self, transport: httpx2.AsyncBaseTransport | None = None, *, tick: float = 0.02) -> None:
        """POST due webhook callbacks until cancelled, checking the clock every `tick` real seconds.

        Each job's callbacks go out in order (duplicates right after their original), jobs in parallel. A failed
        POST (error or non-2xx) is logged at debug and counted in `webhook_failures`, never raised or retried.
        """
        import httpx2

        if tick <= 0:
            raise ValueError("tick must be positive")
        sending: set[str] = set()
        async with (
            httpx2.AsyncClient(transport=transport, timeout=WEBHOOK_TIMEOUT) as client,
            anyio.create_task_group() as tasks,
        ):
            while True:
                for job in self._announce_due(self._config.clock()):
                    if job.request_id not in sending:
                        sending.add(job.request_id)
                        tasks.start_soon(self._send_outbox, client, job, sending)
                await anyio.sleep(tick)

    def _announce_due(self, now: float) -> list[Job]:
        """Put the callbacks due at `now` in their jobs' outboxes; return the jobs with something to send."""
        copies = 1 + self._config.webhook_duplicates
        ready: list[Job] = []
        for job in list(self._hooked.values()):
            webhook = cast("Webhook", job.webhook)
            phases = job.callback_phases()
            while webhook.announced < len(phases) and phases[webhook.announced].since <= now:
                body = self._body_of(job, phases[webhook.announced])
                webhook.outbox.extend([body] * copies)
                webhook.announced += 1
            if webhook.announced == len(phases):
                del self._hooked[job.request_id]
            if webhook.outbox:
                ready.append(job)
        return ready

    async def _send_outbox(self, client: httpx2.AsyncClient, job: Job, sending: set[str]) -> None:
        """POST the job's pending callbacks one after the other."""
        webhook = cast("Webhook", job.webhook)
        try:
            while webhook.outbox:
                await self._post(client, job.request_id, webhook.url, webhook.outbox.pop(0))
        finally:
            sending.discard(job.request_id)

    async def _post(self, client: httpx2.AsyncClient, request_id: str, url: str, body: object) -> None:
        self._stats.jobs[request_id].webhooks_sent += 1
        try:
            response = await client.post(url, json=body)
        except Exception as exc:  # a broken receiver must never break the dispatcher
            problem = repr(exc)
        else:
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
        self._stats.webhook_failures += 1
        logger.debug("webhook for %s to %s failed: %s", request_id, url, problem)
