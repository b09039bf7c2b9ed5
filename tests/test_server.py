"""The three tools and the resources, through the SDK's in-memory client, against the sandbox gateway."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mcp import Client, MCPError

from mmaudio_mcp.results import MAX_MESSAGE_BYTES
from mmaudio_mcp.server import build_server
from tests.conftest import POLICY

if TYPE_CHECKING:
    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def generate(client: Client, **arguments: Any) -> CallToolResult:
    return await client.call_tool("generate_audio", {"prompt": "rain on a tin roof", **arguments})


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


# --- the tool list ------------------------------------------------------------------------------------------------


async def test_tools_list_has_the_three_tools_with_ranges_and_honest_annotations(client: Client) -> None:
    """The schema carries every documented bound, and annotations say what each tool really does."""
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"generate_audio", "check_status", "download_audio"}
    props = tools["generate_audio"].input_schema["properties"]
    assert tools["generate_audio"].input_schema["required"] == ["prompt"]
    assert (props["duration"]["type"], props["duration"]["minimum"], props["duration"]["maximum"]) == ("integer", 2, 30)
    assert (props["num_steps"]["type"], props["num_steps"]["minimum"], props["num_steps"]["maximum"]) == (
        "integer",
        10,
        100,
    )
    assert (props["cfg_strength"]["minimum"], props["cfg_strength"]["maximum"]) == (1.0, 10.0)
    assert props["prompt"]["minLength"] == 1
    assert props["wait_seconds"]["default"] == 20
    generate_hints = tools["generate_audio"].annotations
    assert generate_hints is not None
    assert (generate_hints.read_only_hint, generate_hints.idempotent_hint, generate_hints.open_world_hint) == (
        False,
        False,
        True,
    )
    check_hints = tools["check_status"].annotations
    assert check_hints is not None
    check = (check_hints.read_only_hint, check_hints.destructive_hint, check_hints.idempotent_hint)
    assert check == (False, False, True)
    assert all(tool.output_schema and tool.output_schema["title"] == "AudioJob" for tool in tools.values())


async def test_what_models_read_of_the_tool_list_is_well_under_five_kilobytes(client: Client) -> None:
    """Names, descriptions and input schemas (what hosts send to the model) stay small; output schemas are compact."""
    tools = (await client.list_tools()).tools
    model_side = json.dumps([[tool.name, tool.description, tool.input_schema] for tool in tools], separators=(",", ":"))
    assert len(model_side) < 3800, len(model_side)  # well under 5 KB, with processing options included
    whole = json.dumps(
        [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools], separators=(",", ":")
    )
    # output schemas now also carry audio_url (replicas) and reattached (a re-issued call joined its job)
    assert len(whole) < 11 * 1024, len(whole)
    assert '"title":"Prompt"' not in whole


# --- the happy path -----------------------------------------------------------------------------------------------


async def test_generate_audio_waits_reports_progress_and_saves_a_wav(client: Client, settings: Settings) -> None:
    """One call submits, reports progress while waiting, downloads the WAV and links it as a resource."""
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await client.call_tool(
        "generate_audio", {"prompt": "rain on a tin roof", "duration": 4}, progress_callback=on_progress
    )
    assert not result.is_error, text_of(result)
    job = result.structured_content
    assert job is not None
    assert job["status"] == "COMPLETED"
    assert job["request_id"].startswith("mmaudio-v2-text-to-audio_")
    file = job["file"]
    assert Path(file["path"]).parent == settings.output_dir
    assert Path(file["path"]).name.startswith("rain-on-a-tin-roof-")
    assert (file["sample_rate"], file["channels"], file["sample_format"]) == (44100, 1, "float32")
    assert file["duration_seconds"] == 4.0
    assert Path(file["path"]).stat().st_size == file["bytes"]
    links = [block for block in result.content if block.type == "resource_link"]
    # 705,680 bytes of WAV would not fit in one 1 MiB message as base64: only the preview is linked.
    assert [str(link.uri) for link in links] == [f"audio://{job['request_id']}/preview.ogg"]
    assert seen, "no progress notification reached the client"
    progresses = [progress for progress, _, _ in seen]
    assert progresses == sorted(progresses)
    assert all(message for _, _, message in seen)


async def test_generate_with_no_wait_returns_a_handle_that_check_status_completes(
    client: Client, sandbox: Sandbox
) -> None:
    """wait_seconds=0 hands back the request_id at once; check_status with a wait finishes the job."""
    handle = await generate(client, wait_seconds=0)
    assert not handle.is_error, text_of(handle)
    job = handle.structured_content
    assert job is not None
    assert job["status"] == "QUEUED"
    assert job["file"] is None
    assert "check_status" in job["next_step"]
    assert job["eta_seconds"] > 0
    done = await client.call_tool("check_status", {"request_id": job["request_id"], "wait_seconds": 10})
    assert not done.is_error, text_of(done)
    assert done.structured_content is not None
    assert done.structured_content["status"] == "COMPLETED"
    assert Path(done.structured_content["file"]["path"]).exists()


async def test_finished_jobs_are_answered_from_the_store_without_network_calls(
    client: Client, sandbox: Sandbox
) -> None:
    """check_status and download_audio on a completed job neither poll Pixazo nor fetch the media again."""
    job = (await generate(client)).structured_content
    assert job is not None
    before = sandbox.stats()
    again = await client.call_tool("check_status", {"request_id": job["request_id"]})
    fetched = await client.call_tool("download_audio", {"request_id": job["request_id"]})
    after = sandbox.stats()
    assert not again.is_error and not fetched.is_error
    assert after.polls == before.polls
    assert after.media_fetches == before.media_fetches == {job["request_id"]: 1}
    assert fetched.structured_content is not None
    assert fetched.structured_content["file"]["sha256"] == job["file"]["sha256"]


async def test_download_audio_fetches_again_when_the_cached_file_was_changed(client: Client, sandbox: Sandbox) -> None:
    """A file whose checksum no longer matches is replaced with a fresh, verified download."""
    job = (await generate(client)).structured_content
    assert job is not None
    Path(job["file"]["path"]).write_bytes(b"RIFF garbage")
    fetched = await client.call_tool("download_audio", {"request_id": job["request_id"]})
    assert not fetched.is_error, text_of(fetched)
    assert sandbox.stats().media_fetches == {job["request_id"]: 2}
    assert Path(job["file"]["path"]).read_bytes()[:4] == b"RIFF"
    assert fetched.structured_content is not None
    assert fetched.structured_content["file"]["sha256"] == job["file"]["sha256"]


async def test_download_audio_with_a_filename_saves_a_named_copy(client: Client, settings: Settings) -> None:
    """A bare filename puts a verified copy in the output folder, without fetching again."""
    job = (await generate(client)).structured_content
    assert job is not None
    named = await client.call_tool("download_audio", {"request_id": job["request_id"], "filename": "storm"})
    assert not named.is_error, text_of(named)
    assert named.structured_content is not None
    assert named.structured_content["file"]["path"] == str(settings.output_dir / "storm.wav")
    assert (settings.output_dir / "storm.wav").read_bytes() == Path(job["file"]["path"]).read_bytes()


async def test_download_audio_inlines_small_audio_and_explains_large_audio(client: Client) -> None:
    """include_audio adds an audio block when it fits in a message, and says why not when it does not."""
    small = (await generate(client, duration=2)).structured_content
    large = (await generate(client, duration=8)).structured_content
    assert small is not None and large is not None
    inline = await client.call_tool("download_audio", {"request_id": small["request_id"], "include_audio": True})
    audio = [block for block in inline.content if block.type == "audio"]
    assert len(audio) == 1
    assert base64.b64decode(audio[0].data)[:4] == b"RIFF"
    too_big = await client.call_tool("download_audio", {"request_id": large["request_id"], "include_audio": True})
    assert not [block for block in too_big.content if block.type == "audio"]
    assert "too large to inline" in text_of(too_big)


async def test_audio_resource_returns_the_wav_bytes(client: Client) -> None:
    """audio://{request_id} serves the file as an audio/wav blob."""
    job = (await generate(client)).structured_content
    assert job is not None
    resource = await client.read_resource(f"audio://{job['request_id']}")
    content = resource.contents[0]
    assert content.mime_type == "audio/wav"
    data = base64.b64decode(getattr(content, "blob", ""))
    assert data == Path(job["file"]["path"]).read_bytes()


async def test_audio_resource_for_an_unknown_job_is_a_not_found_error(client: Client) -> None:
    """Reading a job that does not exist is a protocol error naming the problem, not a crash."""
    with pytest.raises(MCPError, match="Unknown request_id"):
        await client.read_resource("audio://mmaudio-v2-text-to-audio_00000000-0000-0000-0000-000000000000")


async def test_recent_jobs_resource_lists_jobs(client: Client) -> None:
    """mmaudio://jobs lists recent jobs with their status and file."""
    job = (await generate(client)).structured_content
    assert job is not None
    listing = await client.read_resource("mmaudio://jobs")
    entries = json.loads(getattr(listing.contents[0], "text", ""))
    assert entries[0]["request_id"] == job["request_id"]
    assert entries[0]["status"] == "COMPLETED"
    assert entries[0]["file"] == job["file"]["path"]


# --- configuration, restart ---------------------------------------------------------------------------------------


async def test_without_an_api_key_tools_are_listed_and_calls_explain_how_to_set_it(
    settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """A server with no key starts and lists its tools; a call says which variable to set."""
    keyless = settings.model_copy(update={"api_key": None})
    async with Client(build_server(keyless, http_transport=transport, policy=POLICY)) as client:
        assert len((await client.list_tools()).tools) == 3
        result = await generate(client)
    assert result.is_error
    assert "PIXAZO_API_KEY" in text_of(result)


async def test_a_job_submitted_before_a_restart_is_completed_after_it(
    settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """The job row survives the server: a new server on the same state folder finishes the job."""
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as first:
        handle = (await generate(first, wait_seconds=0)).structured_content
    assert handle is not None
    async with Client(build_server(settings, http_transport=transport, policy=POLICY)) as second:
        done = await second.call_tool("check_status", {"request_id": handle["request_id"], "wait_seconds": 10})
    assert not done.is_error, text_of(done)
    assert done.structured_content is not None
    assert done.structured_content["status"] == "COMPLETED"
    assert Path(done.structured_content["file"]["path"]).is_file()


async def test_concurrent_waiters_on_one_job_share_one_poller(client: Client, sandbox: Sandbox) -> None:
    """Several check_status calls waiting on the same job do not multiply the status polls."""
    import anyio

    handle = (await generate(client, wait_seconds=0)).structured_content
    assert handle is not None
    rid = handle["request_id"]
    results: list[CallToolResult] = []

    async def wait() -> None:
        results.append(await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 10}))

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(wait)
    assert len(results) == 20
    assert all(r.structured_content and r.structured_content["status"] == "COMPLETED" for r in results)
    single = sandbox.stats().polls[rid]
    assert single <= 12, single  # one poller's schedule (a fresh install probes early), not 20 pollers
    assert sandbox.stats().media_fetches[rid] == 1


async def test_prompts_help_write_requests_mmaudio_handles_well(client: Client) -> None:
    """The sound_effect and ambience prompts exist, take their arguments and carry the model's limits."""
    listed = {prompt.name: prompt for prompt in (await client.list_prompts()).prompts}
    assert set(listed) == {"sound_effect", "ambience"}
    assert [argument.name for argument in listed["sound_effect"].arguments or []] == ["subject", "context", "duration"]
    got = await client.get_prompt("sound_effect", {"subject": "a door slams", "duration": "3"})
    text = getattr(got.messages[0].content, "text", "")
    assert "a door slams" in text
    assert "duration=3" in text
    assert "negative_prompt" in text
    ambience = await client.get_prompt("ambience", {"place": "a rainy forest at night"})
    assert "music, speech, voices" in getattr(ambience.messages[0].content, "text", "")


async def test_status_changes_reach_the_client_log_on_hosts_that_show_it(
    settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """A 2025-11-25 host (most of today's) gets a log message when the job moves from QUEUED on."""
    messages: list[str] = []

    async def on_log(params: Any) -> None:
        messages.append(str(params.data))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        return None

    server = build_server(settings, http_transport=transport, policy=POLICY)
    async with Client(server, mode="legacy", logging_callback=on_log) as legacy:
        result = await legacy.call_tool(
            "generate_audio", {"prompt": "rain", "duration": 4}, progress_callback=on_progress
        )
    assert not result.is_error
    assert "Job status: COMPLETED" in messages


# --- argument errors read as sentences ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "sentence"),
    [
        ("generate_audio", {"prompt": "rain", "duration": 99}, "duration must be between 2 and 30 seconds (got 99)."),
        ("generate_audio", {"prompt": "rain", "num_steps": 5}, "num_steps must be between 10 and 100 (got 5)."),
        ("generate_audio", {"prompt": "rain", "duration": "eight"}, "duration must be a whole number (got 'eight')."),
        ("generate_audio", {}, "prompt is required."),
        ("check_status", {"request_id": "../x"}, "request_id must be a request_id returned by generate_audio"),
        (
            "download_audio",
            {"request_id": "abc", "format": "aac", "fade_ms": -1},
            "format must be one of 'wav', 'flac', 'ogg' or 'mp3' (got 'aac'). "
            "fade_ms must be between 0 and 5000 ms (got -1).",
        ),
    ],
)
async def test_argument_errors_are_one_sentence_each(
    client: Client, tool: str, arguments: dict[str, Any], sentence: str
) -> None:
    """The SDK validates before the tool runs; its validator dump is replaced by sentences naming the argument,
    the allowed range or values and what was given."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    assert sentence in text_of(result)
    assert "pydantic" not in text_of(result)
    assert "validation error" not in text_of(result)


def test_explain_validation_error_is_shared_with_the_models() -> None:
    """GenerationParams and the tool schema share one declaration, and the CLI can explain its errors the same way."""
    from pydantic import ValidationError

    from mmaudio_mcp.models import GenerationParams, explain_validation_error

    with pytest.raises(ValidationError) as caught:
        GenerationParams(prompt="rain", duration=99, cfg_strength=11)
    assert explain_validation_error(caught.value) == (
        "duration must be between 2 and 30 seconds (got 99). cfg_strength must be between 1 and 10 (got 11)."
    )


# --- every linked resource fits in one message and is what its link says -----------------------------------------


async def read_links(client: Client, result: CallToolResult) -> dict[str, tuple[Any, bytes]]:
    """Read every resource the result links to; return link and bytes by URI, checking the message size."""
    out: dict[str, tuple[Any, bytes]] = {}
    for link in (block for block in result.content if block.type == "resource_link"):
        read = await client.read_resource(str(link.uri))
        [content] = read.contents
        message = json.dumps(read.model_dump(mode="json", by_alias=True, exclude_none=True))
        assert len(message) < MAX_MESSAGE_BYTES, (str(link.uri), len(message))
        assert content.mime_type == link.mime_type
        out[str(link.uri)] = (link, base64.b64decode(content.blob))  # pyright: ignore[reportAttributeAccessIssue]
    return out


async def test_a_30_s_clip_links_a_preview_that_fits_and_says_exactly_what_it_is(
    client: Client, settings: Settings
) -> None:
    """The longest clip's WAV (5.3 MB) is not linked; its Ogg preview is, with the size and type a read returns.
    The preview is kept in the state folder: the user's output folder holds only the WAV."""
    result = await generate(client, duration=30)
    assert not result.is_error, text_of(result)
    job = result.structured_content
    assert job is not None
    assert job["file"]["bytes"] > 5_000_000
    read = await read_links(client, result)
    assert list(read) == [f"audio://{job['request_id']}/preview.ogg"]
    link, data = read[f"audio://{job['request_id']}/preview.ogg"]
    assert (link.mime_type, link.size, data[:4]) == ("audio/ogg", len(data), b"OggS")
    assert len(data) < 300_000  # the README: about 0.2 MB for 30 s
    assert link.name.endswith("-preview.ogg")
    assert "too large for one MCP message" in text_of(result)
    assert [path.suffix for path in files_under(settings.output_dir)] == [".wav"]


async def test_each_variant_has_its_own_uri_and_its_link_tells_the_truth(client: Client) -> None:
    """download_audio(format=ogg, normalize, loop) links the OGG it made (not the WAV), at a URI of its own."""
    job = (await generate(client, duration=2)).structured_content
    assert job is not None
    request_id = job["request_id"]
    converted = await client.call_tool(
        "download_audio", {"request_id": request_id, "format": "ogg", "normalize": True, "loop": True}
    )
    flac = await client.call_tool("download_audio", {"request_id": request_id, "format": "flac"})
    assert not converted.is_error, text_of(converted)
    ogg_read, flac_read = await read_links(client, converted), await read_links(client, flac)
    ogg_uri = f"audio://{request_id}/ogg-n16-loop.ogg"
    assert set(ogg_read) == {ogg_uri, f"audio://{request_id}/preview.ogg"}
    link, data = ogg_read[ogg_uri]
    assert (link.mime_type, link.size, link.name) == ("audio/ogg", len(data), Path(link.name).name)
    assert link.name.endswith("-ogg-n16-loop.ogg")
    assert data == Path(converted.structured_content["file"]["path"]).read_bytes()  # pyright: ignore[reportOptionalSubscript]
    flac_link, flac_data = flac_read[f"audio://{request_id}/flac.flac"]
    assert (flac_link.mime_type, flac_link.size, flac_data[:4]) == ("audio/flac", len(flac_data), b"fLaC")
    with pytest.raises(MCPError) as missing:
        await client.read_resource(f"audio://{request_id}/mp3-mono.mp3")
    assert missing.value.error.code in (-32002, -32602)
    assert "download_audio" in missing.value.error.message


async def test_the_delivered_wav_is_linked_when_it_fits(client: Client) -> None:
    """A 2 s clip's WAV fits in a message: it is linked as audio/wav with its exact size, beside the preview."""
    result = await generate(client, duration=2)
    job = result.structured_content
    assert job is not None
    read = await read_links(client, result)
    link, data = read[f"audio://{job['request_id']}"]
    assert (link.mime_type, link.size) == ("audio/wav", len(data))
    assert data == Path(job["file"]["path"]).read_bytes()


async def test_prompt_errors_are_invalid_params_with_a_sentence(client: Client) -> None:
    """Unknown prompt, missing or bad argument: -32602 (the SDK alone answers code 0), saying what is wrong."""
    cases = [
        ("nope", {}, "Unknown prompt 'nope'"),
        ("ambience", {}, "needs the argument(s) place"),
        ("ambience", {"place": "a harbour", "duration": "99"}, "duration must be between 2 and 30 seconds"),
    ]
    for name, arguments, words in cases:
        with pytest.raises(MCPError) as caught:
            await client.get_prompt(name, arguments)
        assert caught.value.error.code == -32602, (name, caught.value.error)
        assert words in caught.value.error.message
    listed = (await client.list_prompts()).prompts
    assert all(argument.description for prompt in listed for argument in prompt.arguments or [])
