"""Keep the sandbox's jobs in a file, so that a new sandbox process answers for jobs an earlier one created.

A job's whole future is fixed at submit (its schedule, fate and media), so one row per job is all a later process
needs: it reads the schedule against the clock and synthesizes the same audio again (the synthesis is deterministic).
Stdlib sqlite3, written on the caller's thread: the sandbox is a test and demo fake, and one row per submit is small.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    request_id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,
    duration INTEGER NOT NULL,
    created REAL NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    fate TEXT,
    media_origin TEXT NOT NULL,
    media_kind TEXT,
    key_hash TEXT
)
"""


@dataclass(frozen=True)
class StoredJob:
    """What a later sandbox process needs to answer status and media for one job."""

    request_id: str
    prompt: str
    duration: int
    created: float
    started: float
    finished: float
    fate: str | None
    media_origin: str
    media_kind: str | None
    key_hash: str | None


class SandboxState:
    """The sandbox's jobs in one SQLite file (created, with its folder, on first use)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(self._path, timeout=10.0, isolation_level=None))

    def save(self, job: StoredJob) -> None:
        """Insert or replace one job."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.request_id,
                    job.prompt,
                    job.duration,
                    job.created,
                    job.started,
                    job.finished,
                    job.fate,
                    job.media_origin,
                    job.media_kind,
                    job.key_hash,
                ),
            )

    def load(self) -> list[StoredJob]:
        """Every stored job, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created").fetchall()
        return [StoredJob(*row) for row in rows]


__all__ = ["SandboxState", "StoredJob"]
