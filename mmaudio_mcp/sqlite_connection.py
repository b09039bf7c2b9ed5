"""One connection to a SQLite file in the state folder, used one unit of work at a time from a worker thread.

The job store and the ledger each keep one, on the same `jobs.sqlite3`. A connection is opened on first use
(creating the folder), in WAL mode, and set up by its owner's `prepare` (schema, migrations). When the file is
deleted or replaced under it (the user removed the state folder), it is opened anew instead of writing on into a file
nobody will read again. Every sqlite3 or OS error becomes the `StoreError` that `database_faults` words.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread

from mmaudio_mcp.database_faults import database_error

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class SqliteConnection:
    """A lazily opened, serialized connection to one SQLite file, driven from worker threads."""

    def __init__(
        self,
        path: Path,
        prepare: Callable[[sqlite3.Connection], object],
        *,
        shielded: bool = False,
        says_replaced: bool = True,
    ) -> None:
        """`prepare` sets up each new connection (in its worker thread). `shielded` work finishes even when its
        caller is cancelled. `says_replaced` logs a warning when the file was deleted or replaced (one owner of a
        shared file says it; the others follow quietly)."""
        self.path = path
        self._prepare = prepare
        self._shielded = shielded
        self._says_replaced = says_replaced
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._closed = False
        self._lock = anyio.Lock()

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work(connection)` in a worker thread, after any work before it has ended."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("the job store is closed")
            with anyio.CancelScope(shield=self._shielded):
                return await anyio.to_thread.run_sync(self._work, work)
        raise AssertionError("unreachable")  # a shielded scope cannot swallow the return; pyright cannot know

    async def aclose(self) -> None:
        """Close the connection; later work raises RuntimeError."""
        async with self._lock:
            self._closed = True
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await anyio.to_thread.run_sync(conn.close)

    def _work(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run one unit of work on the connection (in a worker thread), opening or re-opening it as needed."""
        try:
            if self._conn is not None and self._inode != _inode(self.path):
                if self._says_replaced:
                    logger.warning(
                        "the job database %s was deleted or replaced while the server ran; re-creating it (jobs "
                        "recorded before are no longer listed; any of them can be resumed by request_id)",
                        self.path,
                    )
                self._conn.close()
                self._conn = None
            if self._conn is None:
                self._conn = self._connect()
                self._inode = _inode(self.path)
            # Autocommit: every statement is its own durable transaction, committed before we return.
            return work(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise database_error(self.path, exc) from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of this process (only a power loss can drop the last commits).
            conn.execute("PRAGMA synchronous=NORMAL")
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


__all__ = ["SqliteConnection"]
