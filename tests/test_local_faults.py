"""Local faults, named with their cause and what to do: a full disk, a read-only folder, a damaged job database and
a state folder deleted while the server runs. Real filesystems: a tiny tmpfs and a read-only bind mount (root is
needed to mount; without it those two tests are skipped)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest
from mcp import Client

from mmaudio_mcp.errors import StoreError
from mmaudio_mcp.models import GenerationParams, JobRecord, utc_now
from mmaudio_mcp.server import build_server
from mmaudio_mcp.store import SqliteJobStore
from tests.conftest import POLICY
from tests.processes import server_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.settings import Settings

GENERATE = {"prompt": "a door creaks open", "duration": 2, "num_steps": 10, "wait_seconds": 20}


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


@pytest.fixture
def full_disk(settings: Settings) -> Iterator[Path]:
    """The output folder on a 64 KiB tmpfs: a 2-second WAV (about 350 KB) does not fit."""
    folder = settings.output_dir
    folder.mkdir(parents=True)
    if not _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)):
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    _run("umount", str(folder))


@pytest.fixture
def read_only_output(settings: Settings) -> Iterator[Path]:
    """The output folder bind-mounted read-only (read-only even for root)."""
    folder = settings.output_dir
    folder.mkdir(parents=True)
    if not _run("mount", "--bind", str(folder), str(folder)):
        pytest.skip("bind mounts need root")
    if not _run("mount", "-o", "remount,ro,bind", str(folder), str(folder)):
        _run("umount", str(folder))
        pytest.skip("cannot remount read-only here")
    yield folder
    _run("umount", str(folder))


async def test_a_full_disk_is_named_with_the_folder_and_what_to_do(
    full_disk: Path, settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """The job completes, the download hits ENOSPC: the tool says the disk is full, where, and how to get the
    audio afterwards; the job is kept."""
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as client:
        result = await client.call_tool("generate_audio", GENERATE)
    message = text_of(result)
    assert result.is_error, message
    assert f"The disk holding {full_disk} is full (no space left on device)" in message
    assert "Free some space" in message
    assert 'download_audio(request_id="' in message
    assert not list(full_disk.glob(".*.part")), "the partial download is removed"


async def test_a_read_only_output_folder_is_named_with_the_folder_and_what_to_do(
    read_only_output: Path, settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """EROFS: the tool names the folder as not writable and says how to fix it, not 'Internal error'."""
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as client:
        result = await client.call_tool("generate_audio", GENERATE)
    message = text_of(result)
    assert result.is_error, message
    assert f"{read_only_output} is not writable (Read-only file system" in message
    assert "MMAUDIO_OUTPUT_DIR" in message


async def test_a_damaged_database_is_named_in_every_tool_and_in_the_cli(
    settings: Settings, transport: httpx2.ASGITransport, tmp_path: Path
) -> None:
    """Garbage in jobs.sqlite3: the tools and the CLI both give its path and say to move it aside."""
    settings.state_dir.mkdir(parents=True)
    database = settings.state_dir / "jobs.sqlite3"
    database.write_bytes(b"\x00garbage, not SQLite\x00" * 500)
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as client:
        result = await client.call_tool("generate_audio", GENERATE)
        status = await client.call_tool("check_status", {"request_id": "mmaudio-v2-text-to-audio_1"})
    for answer in (result, status):
        assert answer.is_error
        assert f"The job database {database} is unreadable or damaged" in text_of(answer)
        assert "Move it aside" in text_of(answer)
    env = server_env(tmp_path, MMAUDIO_STATE_DIR=str(settings.state_dir))
    cli = await anyio.run_process([sys.executable, "-m", "mmaudio_mcp", "jobs"], env=env, check=False)
    assert cli.returncode == 1
    assert f"The job database {database} is unreadable or damaged" in cli.stderr.decode()
    assert "mv " in cli.stderr.decode()


async def test_a_state_folder_deleted_while_serving_is_recreated_and_later_jobs_survive_a_restart(
    settings: Settings, transport: httpx2.ASGITransport, caplog: pytest.LogCaptureFixture
) -> None:
    """The user deletes the state folder while the server runs: the next job goes into a new database (logged),
    which a restarted server reads; nothing is written into the deleted file."""
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as client:
        first = await client.call_tool("generate_audio", GENERATE)
        assert not first.is_error, text_of(first)
        shutil.rmtree(settings.state_dir)
        second = await client.call_tool("generate_audio", GENERATE)
        assert not second.is_error, text_of(second)
    assert "was deleted or replaced while the server ran; re-creating it" in caplog.text
    assert second.structured_content is not None
    store = await SqliteJobStore.open(settings.state_dir)
    kept = [job.request_id for job in await store.recent()]
    await store.aclose()
    assert kept == [second.structured_content["request_id"]]


@pytest.mark.parametrize(
    ("mount", "words"),
    [
        (("-t", "tmpfs", "-o", "size=4k", "tmpfs"), "the disk is full"),
        (("-t", "tmpfs", "-o", "ro", "tmpfs"), "its folder is read-only or not yours"),
    ],
    ids=["full", "read-only"],
)
async def test_a_state_folder_that_cannot_be_written_is_named(
    tmp_path: Path, mount: tuple[str, ...], words: str
) -> None:
    """The job database on a full or read-only disk: the error names the file, the cause and MMAUDIO_STATE_DIR."""
    state = tmp_path / "state"
    state.mkdir()
    if not _run("mount", *mount, str(state)):
        pytest.skip("mounting a tmpfs needs root")
    try:
        store = SqliteJobStore.in_folder(state)
        with pytest.raises(StoreError) as caught:
            for n in range(200):  # a few rows fit in 4 KiB: write until the disk is full
                await store.save(_job(n))
        await store.aclose()
    finally:
        _run("umount", str(state))
    message = caught.value.message
    assert str(state / "jobs.sqlite3") in message
    assert words in message
    assert "MMAUDIO_STATE_DIR" in message


def _job(n: int) -> JobRecord:
    now = utc_now()
    return JobRecord(local_id=f"local-{n}", params=GenerationParams(prompt="x" * 1000), created_at=now, updated_at=now)
