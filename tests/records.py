"""Job records and audio files for the store tests (one definition for the SQLite and the contract tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mmaudio_mcp.models import AudioFile, GenerationParams, JobRecord, JobStatus

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(n: int, status: JobStatus = JobStatus.QUEUED, *, request_id: str | None = "auto") -> JobRecord:
    return JobRecord(
        local_id=f"local-{n}",
        request_id=f"mmaudio-v2-text-to-audio_{n:08d}" if request_id == "auto" else request_id,
        status=status,
        params=GenerationParams(prompt=f"sound {n}"),
        created_at=T0 + timedelta(seconds=n),
        updated_at=T0 + timedelta(seconds=n),
    )


def audio(name: str) -> AudioFile:
    return AudioFile(
        path=f"/music/{name}",
        uri=f"file:///music/{name}",
        bytes=10,
        sha256=name * 4,
        sample_rate=44100,
        channels=2,
        sample_format="pcm16",
        duration_seconds=1.0,
        format=name.rsplit(".", 1)[-1],
    )
