"""The in-host audio player (MCP Apps): tool links, the view resource, peaks, chunked audio, text fallbacks."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

from mmaudio_mcp.player import AUDIO_META_KEY, CHUNK_CAP, PEAK_COUNT, PEAKS_META_KEY, PLAYER_URI, player_html
from mmaudio_mcp.server import build_server
from tests.conftest import POLICY

if TYPE_CHECKING:
    import httpx2
    from mcp.types import CallToolResult

    from mmaudio_mcp.settings import Settings

HTML_LIMIT = 24 * 1024
"""The view stays small: a vanilla postMessage bridge, no SDK bundle."""


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_the_three_tools_link_to_the_player(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name in ("generate_audio", "check_status", "download_audio"):
        assert tools[name].meta == {"ui": {"resourceUri": PLAYER_URI}}, name


async def test_the_player_resource_is_an_mcp_app_with_the_default_csp(client: Client) -> None:
    listed = {str(resource.uri): resource for resource in (await client.list_resources()).resources}
    assert listed[PLAYER_URI].mime_type == APP_MIME_TYPE
    read = (await client.read_resource(PLAYER_URI)).contents[0]
    assert read.mime_type == APP_MIME_TYPE
    assert read.meta == {"ui": {"csp": {}, "prefersBorder": True}}
    assert getattr(read, "text", "") == player_html()


def test_the_html_is_self_contained_and_small() -> None:
    html = player_html()
    assert len(html.encode()) < HTML_LIMIT, len(html.encode())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"""@import|url\(\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "<script src" not in html and "blob:" not in html


async def test_a_finished_job_carries_peaks_and_audio_info_in_meta(client: Client) -> None:
    result = await client.call_tool("generate_audio", {"prompt": "rain on a tin roof", "duration": 4})
    assert not result.is_error, text_of(result)
    assert result.meta is not None
    peaks = result.meta[PEAKS_META_KEY]
    assert len(peaks) == PEAK_COUNT
    assert all(isinstance(peak, float) and 0.0 <= peak <= 1.0 for peak in peaks)
    assert max(peaks) > 0.01
    job = result.structured_content
    assert job is not None
    info = result.meta[AUDIO_META_KEY]
    assert info == {
        "uri": f"audio://{job['request_id']}",
        "bytes": job["file"]["bytes"],
        "duration_seconds": 4.0,
        "chunk_bytes": CHUNK_CAP,
    }
    again = await client.call_tool("check_status", {"request_id": job["request_id"]})
    assert again.meta is not None and again.meta[PEAKS_META_KEY] == peaks


async def test_a_processed_download_still_describes_the_delivered_wav_for_the_player(client: Client) -> None:
    job = (await client.call_tool("generate_audio", {"prompt": "door creak", "duration": 2})).structured_content
    assert job is not None
    result = await client.call_tool("download_audio", {"request_id": job["request_id"], "format": "flac"})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None and result.structured_content["file"]["format"] == "flac"
    assert result.meta is not None
    assert result.meta[AUDIO_META_KEY]["bytes"] == job["file"]["bytes"]
    assert len(result.meta[PEAKS_META_KEY]) == PEAK_COUNT


async def test_an_unfinished_job_has_no_player_meta_but_its_eta(client: Client) -> None:
    handle = await client.call_tool("generate_audio", {"prompt": "rain", "wait_seconds": 0})
    assert handle.structured_content is not None
    assert handle.structured_content["eta_seconds"] > 0
    assert not (handle.meta or {}).get(PEAKS_META_KEY)


async def test_chunks_of_a_large_file_reassemble_to_the_exact_file(client: Client) -> None:
    """A 30 s job (5.3 MB, above the cap) is read in numbered chunks, each at most the cap, none over 1 MiB."""
    result = await client.call_tool("generate_audio", {"prompt": "long drone", "duration": 30})
    job = result.structured_content
    assert job is not None and result.meta is not None
    info = result.meta[AUDIO_META_KEY]
    assert info["bytes"] > CHUNK_CAP
    parts: list[bytes] = []
    for index in range(-(-info["bytes"] // CHUNK_CAP)):
        content = (await client.read_resource(f"{info['uri']}/chunks/{index}")).contents[0]
        encoded = getattr(content, "blob", "")
        assert len(encoded) < 1024 * 1024
        parts.append(base64.b64decode(encoded))
    assert all(len(part) == CHUNK_CAP for part in parts[:-1])
    whole = b"".join(parts)
    on_disk = Path(job["file"]["path"]).read_bytes()
    assert hashlib.sha256(whole).hexdigest() == hashlib.sha256(on_disk).hexdigest() == job["file"]["sha256"]


@pytest.mark.parametrize("index", ["99", "x", "-1"])
async def test_a_chunk_out_of_range_is_an_error(client: Client, index: str) -> None:
    job = (await client.call_tool("generate_audio", {"prompt": "tick", "duration": 2})).structured_content
    assert job is not None
    with pytest.raises(Exception, match="chunk"):
        await client.read_resource(f"audio://{job['request_id']}/chunks/{index}")


@pytest.mark.parametrize("apps", [True, False], ids=["with-apps", "without-apps"])
async def test_the_text_result_is_complete_with_or_without_the_apps_extension(
    settings: Settings, transport: httpx2.ASGITransport, apps: bool
) -> None:
    extensions: list[Any] = [advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})] if apps else []
    server = build_server(settings, http_transport=transport, policy=POLICY)
    async with Client(server, extensions=extensions) as client:
        result = await client.call_tool("generate_audio", {"prompt": "rain on a tin roof", "duration": 2})
    job = result.structured_content
    assert job is not None
    text = text_of(result)
    assert job["file"]["path"] in text and "ready" in text
    links = [str(block.uri) for block in result.content if block.type == "resource_link"]
    assert links == [f"audio://{job['request_id']}", f"audio://{job['request_id']}/preview.ogg"]
    assert PEAKS_META_KEY not in text
