"""Sounds saved where and how the user needs them: workspace folders from MCP roots, formats, loudness, loops;
never over another file by accident (exclusive placement), no temporary files left behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from mcp import Client
from mcp.types import ListRootsResult, Root

from mmaudio_mcp.audio import sha256_of
from mmaudio_mcp.errors import InvalidArgumentError
from mmaudio_mcp.jobs import open_job_service
from mmaudio_mcp.placement import place_copy, remove_leftovers, resolve_destination
from mmaudio_mcp.server import build_server
from tests.conftest import POLICY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.settings import Settings


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "game"
    folder.mkdir()
    return folder


@pytest.fixture
async def ide(settings: Settings, transport: httpx2.ASGITransport, workspace: Path) -> AsyncIterator[Client]:
    """A client that exposes one workspace folder as its MCP root, as IDE hosts do (2025-11-25 protocol)."""

    async def roots(_: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=workspace.as_uri(), name="game")])

    server = build_server(settings, http_transport=transport, policy=POLICY)
    async with Client(server, mode="legacy", list_roots_callback=roots) as client:
        yield client


async def finished_job(client: Client) -> dict[str, Any]:
    result = await client.call_tool("generate_audio", {"prompt": "rain on a tin roof", "duration": 3})
    assert result.structured_content is not None, text_of(result)
    return result.structured_content


async def test_a_relative_folder_lands_inside_the_client_workspace(ide: Client, workspace: Path) -> None:
    """folder='assets/sfx' is taken inside the first root; the result gives the path the code should use."""
    job = await finished_job(ide)
    saved = await ide.call_tool(
        "download_audio", {"request_id": job["request_id"], "folder": "assets/sfx", "filename": "rain"}
    )
    assert saved.structured_content is not None, text_of(saved)
    file = saved.structured_content["file"]
    assert file["path"] == str(workspace / "assets" / "sfx" / "rain.wav")
    assert file["relative_path"] == "assets/sfx/rain.wav"
    assert Path(file["path"]).read_bytes() == Path(job["file"]["path"]).read_bytes()


async def test_generate_audio_can_save_straight_into_the_workspace(ide: Client, workspace: Path) -> None:
    """The download after generation can go into the project too."""
    made = await ide.call_tool("generate_audio", {"prompt": "a door creaks", "duration": 2, "folder": "sfx"})
    assert made.structured_content is not None, text_of(made)
    assert made.structured_content["file"]["relative_path"].startswith("sfx/")
    assert Path(made.structured_content["file"]["path"]).parent == workspace / "sfx"


@pytest.mark.parametrize("folder", ["../escape", "/etc", "assets/../../escape"])
async def test_folders_outside_the_workspace_are_refused(
    ide: Client, tmp_path: Path, workspace: Path, folder: str
) -> None:
    """Relative escapes and absolute paths outside every root are clear errors, and nothing is written."""
    job = await finished_job(ide)
    result = await ide.call_tool("download_audio", {"request_id": job["request_id"], "folder": folder})
    assert result.is_error
    assert "outside" in text_of(result)
    assert not (tmp_path / "escape").exists()


async def test_a_symlink_cannot_lead_out_of_the_workspace(ide: Client, tmp_path: Path, workspace: Path) -> None:
    """A link inside the workspace that points elsewhere is resolved before the containment check."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "link").symlink_to(outside, target_is_directory=True)
    job = await finished_job(ide)
    result = await ide.call_tool("download_audio", {"request_id": job["request_id"], "folder": "link"})
    assert result.is_error
    assert list(outside.iterdir()) == []


async def test_an_absolute_folder_inside_the_workspace_is_accepted(ide: Client, workspace: Path) -> None:
    """An absolute path is fine when it lies inside a root."""
    job = await finished_job(ide)
    target = workspace / "audio"
    saved = await ide.call_tool("download_audio", {"request_id": job["request_id"], "folder": str(target)})
    assert saved.structured_content is not None, text_of(saved)
    assert Path(saved.structured_content["file"]["path"]).parent == target


async def test_existing_files_are_only_replaced_with_overwrite(ide: Client, workspace: Path) -> None:
    """A name that holds other audio is refused unless overwrite=true; then it is replaced."""
    first = await finished_job(ide)
    second = (await ide.call_tool("generate_audio", {"prompt": "a bell", "duration": 2})).structured_content
    assert second is not None
    place = {"folder": "sfx", "filename": "take"}
    assert not (await ide.call_tool("download_audio", {"request_id": first["request_id"], **place})).is_error
    clash = await ide.call_tool("download_audio", {"request_id": second["request_id"], **place})
    assert clash.is_error
    assert "overwrite" in text_of(clash)
    assert (workspace / "sfx" / "take.wav").read_bytes() == Path(first["file"]["path"]).read_bytes()
    replaced = await ide.call_tool("download_audio", {"request_id": second["request_id"], **place, "overwrite": True})
    assert not replaced.is_error, text_of(replaced)
    assert (workspace / "sfx" / "take.wav").read_bytes() == Path(second["file"]["path"]).read_bytes()


async def test_without_roots_a_folder_is_taken_inside_the_output_folder(client: Client, settings: Settings) -> None:
    """A client with no roots still gets sub-folders, inside the output folder."""
    job = await finished_job(client)
    saved = await client.call_tool("download_audio", {"request_id": job["request_id"], "folder": "sfx"})
    assert saved.structured_content is not None, text_of(saved)
    assert Path(saved.structured_content["file"]["path"]).parent == (settings.output_dir / "sfx").resolve()
    refused = await client.call_tool("download_audio", {"request_id": job["request_id"], "folder": "/tmp"})
    assert refused.is_error


async def test_a_normalized_looping_ogg_is_made_once_and_the_original_is_kept(ide: Client, workspace: Path) -> None:
    """Processing derives a variant from the delivered WAV (never replacing it) and caches it by options."""
    job = await finished_job(ide)
    original = Path(job["file"]["path"]).read_bytes()
    ask = {"request_id": job["request_id"], "format": "ogg", "normalize": True, "target_lufs": -18, "loop": True}
    first = await ide.call_tool("download_audio", ask)
    assert first.structured_content is not None, text_of(first)
    variant = first.structured_content["file"]
    assert variant["format"] == "ogg"
    assert variant["path"].endswith(".ogg")
    assert abs(variant["loudness_lufs"] - -18) <= 0.5
    assert 0 < variant["loop_seconds"] < 3
    made_at = os.stat(variant["path"]).st_mtime_ns
    again = await ide.call_tool("download_audio", {**ask, "folder": "music", "filename": "rain-loop"})
    assert again.structured_content is not None, text_of(again)
    assert again.structured_content["file"]["sha256"] == variant["sha256"]
    assert again.structured_content["file"]["relative_path"] == "music/rain-loop.ogg"
    assert os.stat(variant["path"]).st_mtime_ns == made_at, "the cached variant was made again"
    assert Path(job["file"]["path"]).read_bytes() == original


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"format": "aac"}, "format"),
        ({"format": "mp3", "sample_rate": 96000}, "Invalid processing options"),
        ({"fade_ms": -5}, "fade_ms"),
        ({"format": "ogg", "filename": "take.wav"}, "ogg"),
    ],
)
async def test_bad_processing_options_are_clear_errors(client: Client, options: dict[str, Any], words: str) -> None:
    """Options the encoders cannot honour are refused before any work, naming the problem."""
    job = await finished_job(client)
    result = await client.call_tool("download_audio", {"request_id": job["request_id"], **options})
    assert result.is_error
    assert words in text_of(result)


# --- exclusive placement and leftovers ------------------------------------------------------------------------------


async def test_of_concurrent_saves_under_one_name_exactly_one_wins(tmp_path: Path) -> None:
    """Twenty different sounds saved at once as 'hit.wav' without overwrite: one file is placed, intact, and the
    nineteen others are told the name is taken (nothing is checked and then replaced)."""
    sources: dict[str, Path] = {}
    for n in range(20):
        source = tmp_path / f"source-{n}.wav"
        source.write_bytes(bytes([n]) * 2_000_000)
        sources[sha256_of(source)] = source
    destination = resolve_destination(None, (), tmp_path / "out")
    outcomes: list[str] = []

    async def save(sha256: str, source: Path) -> None:
        try:
            await place_copy(source, sha256, destination, "hit.wav", overwrite=False)
        except InvalidArgumentError as exc:
            outcomes.append("refused" if "already exists" in exc.message else exc.message)
        else:
            outcomes.append(sha256)

    async with anyio.create_task_group() as tasks:
        for sha256, source in sources.items():
            tasks.start_soon(save, sha256, source)
    winners = [outcome for outcome in outcomes if outcome != "refused"]
    assert len(winners) == 1, f"{len(winners)} saves reported success"
    assert sha256_of(tmp_path / "out" / "hit.wav") == winners[0]
    assert not list((tmp_path / "out").glob(".*.part")), "no temporary file is left behind"


async def test_saving_the_same_sound_twice_under_its_name_is_not_an_error(tmp_path: Path) -> None:
    """The name is taken by identical audio: the save succeeds and returns it (a retried call is harmless)."""
    source = tmp_path / "source.wav"
    source.write_bytes(b"same" * 1000)
    destination = resolve_destination(None, (), tmp_path / "out")
    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(lambda: place_copy(source, sha256_of(source), destination, "a.wav", overwrite=False))
    assert (tmp_path / "out" / "a.wav").read_bytes() == source.read_bytes()


async def test_leftover_temporary_files_go_unless_a_live_process_has_them_open(tmp_path: Path) -> None:
    """An interrupted download's `.part` file is removed; one another process is still writing is kept."""
    out = tmp_path / "out"
    out.mkdir()
    orphan = out / ".rain-1234.wav.abc123.part"
    orphan.write_bytes(b"half a download")
    busy = out / ".wind-5678.wav.def456.part"
    busy.write_bytes(b"")
    keeper = "import sys, time; handle = open(sys.argv[1], 'ab'); print('open', flush=True); time.sleep(60)"
    async with await anyio.open_process([sys.executable, "-c", keeper, str(busy)]) as writer:
        assert writer.stdout is not None
        await writer.stdout.receive()  # the file is open in the other process now
        assert await remove_leftovers(out) == 1
        writer.kill()
    assert not orphan.exists()
    assert busy.exists()
    (out / "kept.wav").write_bytes(b"not temporary")
    assert await remove_leftovers(out) == 1  # the writer is gone: its file is a leftover now
    assert [path.name for path in out.iterdir()] == ["kept.wav"]


async def test_the_server_cleans_leftovers_when_it_starts(settings: Settings) -> None:
    """Starting a job service removes the temporary files an earlier, killed process left in the output folder."""
    out = settings.output_dir
    out.mkdir()
    (out / ".boom-1.wav.x1.part").write_bytes(b"interrupted")
    async with open_job_service(settings):
        with anyio.fail_after(10):
            while list(out.glob(".*.part")):  # noqa: ASYNC110 (the clean-up runs in the background)
                await anyio.sleep(0.02)
