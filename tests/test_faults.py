"""Every sandbox fault and every bad input ends in a clear tool error, with the server alive and no stray file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mmaudio_mcp.sandbox import SANDBOX_API_KEY, Fault, FaultKind

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

UNKNOWN_ID = "mmaudio-v2-text-to-audio_00000000-0000-4000-8000-000000000000"


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def still_serves(client: Client) -> None:
    """The server answers a fresh, good request after the failure."""
    result = await client.call_tool("generate_audio", {"prompt": "a bell rings", "duration": 2})
    assert not result.is_error, text_of(result)


def stray_files(tmp_path: Path, settings: Settings) -> list[Path]:
    """Files anywhere under tmp_path but outside the output and state folders."""
    allowed = (settings.output_dir, settings.state_dir)
    return [p for p in tmp_path.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]


def partial_files(settings: Settings) -> list[Path]:
    return [p for p in settings.output_dir.rglob("*") if p.name.startswith(".") or p.suffix != ".wav"]


SUBMIT_FAULTS = [
    (FaultKind.UNAUTHORIZED, "401", "PIXAZO_API_KEY"),
    (FaultKind.FORBIDDEN, "403", "not allowed"),
    (FaultKind.BAD_REQUEST, "400", "Model"),
    (FaultKind.INSUFFICIENT_BALANCE, "402", "top up"),
    (FaultKind.SUBMIT_500, "500", "not resent"),
]


@pytest.mark.parametrize(("kind", "code", "advice"), SUBMIT_FAULTS, ids=[f[0].value for f in SUBMIT_FAULTS])
async def test_submit_faults_are_clear_tool_errors(
    client: Client, sandbox: Sandbox, settings: Settings, tmp_path: Path, kind: FaultKind, code: str, advice: str
) -> None:
    """A refused submit says what Pixazo said and what to do; nothing is written; the server goes on."""
    sandbox.add_fault(Fault(kind, times=1))
    result = await client.call_tool("generate_audio", {"prompt": "rain"})
    assert result.is_error
    assert code in text_of(result)
    assert advice in text_of(result)
    assert SANDBOX_API_KEY not in text_of(result)
    assert not list(settings.output_dir.glob("*.wav")) if settings.output_dir.exists() else True
    await still_serves(client)
    assert stray_files(tmp_path, settings) == []


async def test_a_brief_rate_limit_on_submit_is_waited_out(client: Client, sandbox: Sandbox) -> None:
    """One 429 with Retry-After is honoured and the job still goes through, once."""
    sandbox.add_fault(Fault(FaultKind.RATE_LIMITED, times=1))
    result = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert not result.is_error, text_of(result)
    stats = sandbox.stats()
    assert stats.submits == 2  # the refused attempt and the accepted one
    assert len(stats.polls) == 1  # one job exists


async def test_transient_poll_failures_do_not_fail_the_job(client: Client, sandbox: Sandbox) -> None:
    """HTML 5xx answers to status polls are retried; the job completes."""
    sandbox.add_fault(Fault(FaultKind.POLL_500, times=3))
    result = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [(FaultKind.JOB_FAILED, "FAILED", "failed"), (FaultKind.JOB_ERROR, "ERROR", "not charged")],
)
async def test_failed_jobs_are_tool_errors_that_say_why(
    client: Client, sandbox: Sandbox, kind: FaultKind, status: str, words: str
) -> None:
    """FAILED and ERROR jobs end the call with an error naming the job, the status and Pixazo's reason."""
    sandbox.add_fault(Fault(kind, times=1))
    result = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert result.is_error
    assert status in text_of(result)
    assert words in text_of(result)
    assert "mmaudio-v2-text-to-audio_" in text_of(result)
    await still_serves(client)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (FaultKind.TRUNCATED_WAV, "truncated"),
        (FaultKind.NOT_WAV, "not audio"),
        (FaultKind.MEDIA_404, "404"),
    ],
)
async def test_bad_media_is_refused_and_can_be_fetched_again_later(
    client: Client, sandbox: Sandbox, settings: Settings, kind: FaultKind, words: str
) -> None:
    """A broken download leaves no file that passes for audio, says how to retry, and the retry works."""
    sandbox.add_fault(Fault(kind, times=2))  # the first try and its one retry with a fresh URL
    result = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert result.is_error
    assert words in text_of(result).lower() or words in text_of(result)
    assert "download_audio" in text_of(result)
    assert list(settings.output_dir.glob("*.wav")) == []
    assert partial_files(settings) == []
    request_id = next(w for w in text_of(result).split() if w.startswith("mmaudio-v2-text-to-audio_"))
    retry = await client.call_tool("download_audio", {"request_id": request_id})
    assert not retry.is_error, text_of(retry)


BAD_GENERATE_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("missing prompt", {}),
    ("blank prompt", {"prompt": "   \n\t "}),
    ("empty prompt", {"prompt": ""}),
    ("huge prompt", {"prompt": "rain " * 20_000}),
    ("duration too short", {"prompt": "rain", "duration": 1}),
    ("duration too long", {"prompt": "rain", "duration": 31}),
    ("fractional duration", {"prompt": "rain", "duration": 8.5}),
    ("duration as words", {"prompt": "rain", "duration": "eight"}),
    ("num_steps too low", {"prompt": "rain", "num_steps": 9}),
    ("num_steps too high", {"prompt": "rain", "num_steps": 101}),
    ("cfg_strength NaN", {"prompt": "rain", "cfg_strength": math.nan}),
    ("cfg_strength infinite", {"prompt": "rain", "cfg_strength": math.inf}),
    ("cfg_strength too high", {"prompt": "rain", "cfg_strength": 10.5}),
    ("negative wait", {"prompt": "rain", "wait_seconds": -1}),
    ("wait too long", {"prompt": "rain", "wait_seconds": 301}),
]


@pytest.mark.parametrize(("case", "arguments"), BAD_GENERATE_ARGUMENTS, ids=[c for c, _ in BAD_GENERATE_ARGUMENTS])
async def test_bad_generate_arguments_are_refused_before_anything_is_paid(
    client: Client, sandbox: Sandbox, case: str, arguments: dict[str, Any]
) -> None:
    """Invalid arguments give a tool error naming the field, and no job is submitted."""
    result = await client.call_tool("generate_audio", arguments)
    assert result.is_error, case
    assert sandbox.stats().submits == 0
    await still_serves(client)


BAD_REQUEST_IDS = [
    ("path traversal", "../../etc/passwd"),
    ("absolute path", "/etc/passwd"),
    ("windows path", "..\\..\\boot.ini"),
    ("empty", ""),
    ("oversized", "x" * 5000),
    ("control characters", "mmaudio\x00\n"),
    ("url", "http://evil.example/x"),
]


@pytest.mark.parametrize(("case", "request_id"), BAD_REQUEST_IDS, ids=[c for c, _ in BAD_REQUEST_IDS])
@pytest.mark.parametrize("tool", ["check_status", "download_audio"])
async def test_malformed_request_ids_are_refused_without_touching_anything(
    client: Client, sandbox: Sandbox, settings: Settings, tmp_path: Path, tool: str, case: str, request_id: str
) -> None:
    """A request_id that cannot be Pixazo's is refused before any network call or file access."""
    result = await client.call_tool(tool, {"request_id": request_id})
    assert result.is_error, case
    assert sandbox.stats().polls == {}
    assert stray_files(tmp_path, settings) == []


@pytest.mark.parametrize("tool", ["check_status", "download_audio"])
async def test_an_unknown_request_id_is_reported_as_unknown(client: Client, tool: str) -> None:
    """A well-formed id that neither the store nor Pixazo knows is an error saying so."""
    result = await client.call_tool(tool, {"request_id": UNKNOWN_ID})
    assert result.is_error
    assert "Unknown request_id" in text_of(result)


BAD_FILENAMES = ["../escape.wav", "/tmp/abs.wav", "sub/dir.wav", "..\\win.wav", "CON", "nul.wav", ".hidden.wav"]


@pytest.mark.parametrize("filename", [*BAD_FILENAMES, "x" * 300, "song.mp3"])
async def test_path_like_or_reserved_filenames_write_nothing_outside_the_output_folder(
    client: Client, settings: Settings, tmp_path: Path, filename: str
) -> None:
    """download_audio refuses names that are paths, hidden, reserved on Windows or over-long."""
    job = (await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})).structured_content
    assert job is not None
    result = await client.call_tool("download_audio", {"request_id": job["request_id"], "filename": filename})
    assert result.is_error
    assert stray_files(tmp_path, settings) == []
    assert [p.name for p in settings.output_dir.iterdir()] == [Path(job["file"]["path"]).name]


async def test_a_named_copy_never_overwrites_other_audio(client: Client, settings: Settings) -> None:
    """Asking for a filename that already holds a different sound is refused; the existing file is kept."""
    first = (await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2})).structured_content
    second = (await client.call_tool("generate_audio", {"prompt": "a bell", "duration": 2})).structured_content
    assert first is not None
    assert second is not None
    ok = await client.call_tool("download_audio", {"request_id": first["request_id"], "filename": "take.wav"})
    assert not ok.is_error, text_of(ok)
    clash = await client.call_tool("download_audio", {"request_id": second["request_id"], "filename": "take.wav"})
    assert clash.is_error
    assert "already exists" in text_of(clash)
    assert (settings.output_dir / "take.wav").read_bytes() == Path(first["file"]["path"]).read_bytes()
