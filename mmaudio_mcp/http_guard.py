"""Keep the HTTP transports usable while someone holds sockets open: header and idle timeouts, a cap on open
connections, and logs that do not flood.

uvicorn (0.55, h11) never times out a request whose headers trickle in, and it accepts connections until the process
runs out of file descriptors; then every `accept()` fails and asyncio logs a traceback for each. Here:

- a connection must send a complete request head within `header_seconds` of opening, and again of finishing a
  response (keep-alive); idle keep-alive connections close after uvicorn's `timeout_keep_alive`;
- at most `max_connections` are open, below the descriptor limit with room to spare (the job store, the Pixazo
  client and output files need descriptors too). A new connection over the cap closes the oldest one that has
  not sent a complete request head. An authenticated client's request (and /healthz) arrives whole at once, so it
  is served; the half-open ones make room;
- a message repeated within a minute is logged once, and the next one says how many were left out.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger(__name__)

HEADER_SECONDS: Final = 10.0
IDLE_SECONDS: Final = 5.0
ACCEPT_BURST: Final = 128
"""How many connections asyncio accepts in one go (uvicorn's `backlog`): the cap leaves room for one burst."""
_SPARE_DESCRIPTORS: Final = 64
_MAX_CONNECTIONS: Final = 4096


def connection_cap(limit: int | None = None) -> int:
    """The most connections to keep open under this process's descriptor limit (RLIMIT_NOFILE unless given)."""
    if limit is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = soft if soft != resource.RLIM_INFINITY else _MAX_CONNECTIONS * 2
    return max(8, min(_MAX_CONNECTIONS, limit - ACCEPT_BURST - _SPARE_DESCRIPTORS))


def guarded_protocol(
    *, header_seconds: float = HEADER_SECONDS, max_connections: int | None = None
) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn's `http=` setting with these limits."""
    cap = max_connections if max_connections is not None else connection_cap()
    return type(
        "GuardedH11Protocol",
        (_GuardedH11Protocol,),
        {"header_seconds": header_seconds, "max_connections": cap, "waiting": {}},
    )


class _GuardedH11Protocol(H11Protocol):
    header_seconds: ClassVar[float]
    max_connections: ClassVar[int]
    waiting: ClassVar[dict[_GuardedH11Protocol, None]]
    """Connections that have not sent a complete request head, oldest first (shared by the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._cycle_seen: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self.max_connections:
            oldest = next(iter(self.waiting))
            oldest.transport.close()
            oldest._stop_waiting()
            logger.warning(
                "more than %d connections open: closed the oldest one that had sent no complete request",
                self.max_connections,
            )

    def handle_events(self) -> None:
        super().handle_events()
        cycle: object = getattr(self, "cycle", None)  # None until a request head arrives (typed as always set)
        if cycle is not None and cycle is not self._cycle_seen:  # a complete request head arrived
            self._cycle_seen = cycle
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self.waiting[self] = None
        self._head_timer = self.loop.call_later(self.header_seconds, self._head_timed_out)

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.waiting.pop(self, None)
        if not self.transport.is_closing():
            logger.info("closed a connection that sent no complete request within %g s", self.header_seconds)
            self.transport.close()


class RepeatFilter(logging.Filter):
    """Let the first of a repeated log message through; drop repeats within `window` seconds, counting them, and
    say how many were left out when the message next passes."""

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        since, dropped = self._seen.get(key, (-self.window, 0))
        if now - since < self.window:
            self._seen[key] = (since, dropped + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the {self.window:g} s before)"
        return True


def quiet_repeats(*names: str, window: float = 60.0) -> None:
    """Install one RepeatFilter on each named logger (once)."""
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(existing, RepeatFilter) for existing in target.filters):
            target.addFilter(RepeatFilter(window))


__all__ = [
    "ACCEPT_BURST",
    "HEADER_SECONDS",
    "IDLE_SECONDS",
    "RepeatFilter",
    "connection_cap",
    "guarded_protocol",
    "quiet_repeats",
]
