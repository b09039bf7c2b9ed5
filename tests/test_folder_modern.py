"""`folder` on a 2026-07-28 connection (no mid-call requests): roots through the SDK's multi-round-trip resolver
when the client declares them; else an absolute folder inside MMAUDIO_ALLOWED_DIRS; else the output folder; never
anywhere else (symlinks resolved first). Raw JSON-RPC to a real stdio server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.processes import RawSession, server_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MODERN = "2026-07-28"


class Modern:
    def __init__(self, raw: RawSession, capabilities: dict[str, Any]) -> None:
        self.raw = raw
        self.capabilities = capabilities

    async def call(self, name: str, arguments: dict[str, Any], **more: Any) -> dict[str, Any]:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": self.capabilities,
            "io.modelcontextprotocol/clientInfo": {"name": "folder-test", "version": "1"},
        }
        request_id = await self.raw.send("tools/call", {"name": name, "arguments": arguments, **more, "_meta": meta})
        answer, _ = await self.raw.until_response(request_id)
        return answer["result"]


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[RawSession]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/tmp", target_is_directory=True)
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--sandbox-speed", "0.02"]
    env = server_env(tmp_path, MMAUDIO_ALLOWED_DIRS=str(allowed))
    async with await anyio.open_process(command, env=env) as process:
        try:
            yield RawSession(process)
        finally:
            process.terminate()
            await process.wait()


async def test_roots_are_asked_through_an_input_request_and_the_file_lands_in_the_project(
    session: RawSession, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    client = Modern(session, {"roots": {}})
    arguments = {"prompt": "a coin pickup chime", "duration": 2, "folder": "assets/sfx"}
    asked = await client.call("generate_audio", arguments)
    assert asked["resultType"] == "input_required", asked
    [(key, request)] = asked["inputRequests"].items()
    assert request["method"] == "roots/list"
    answer = {key: {"roots": [{"uri": project.as_uri(), "name": "project"}]}}
    retry = {"inputResponses": answer} | ({"requestState": asked["requestState"]} if "requestState" in asked else {})
    done = await client.call("generate_audio", arguments, **retry)
    assert not done.get("isError"), done
    path = Path(done["structuredContent"]["file"]["path"])
    assert path.parent == project / "assets" / "sfx"
    assert path.is_file()


async def test_without_roots_an_absolute_folder_inside_the_allowed_dirs_is_used_and_others_are_refused(
    session: RawSession, tmp_path: Path
) -> None:
    client = Modern(session, {})
    made = await client.call("generate_audio", {"prompt": "a soft thud", "duration": 2})
    rid = made["structuredContent"]["request_id"]
    inside = tmp_path / "allowed" / "game" / "sfx"
    saved = await client.call("download_audio", {"request_id": rid, "folder": str(inside)})
    assert not saved.get("isError"), saved
    assert Path(saved["structuredContent"]["file"]["path"]).parent == inside
    relative = await client.call("download_audio", {"request_id": rid, "folder": "more"})
    kept = Path(relative["structuredContent"]["file"]["path"]).parent  # a relative folder: in the output folder
    assert kept.name == "more" and kept.is_relative_to(tmp_path / "out")
    for outside in ("/etc", str(tmp_path / "elsewhere"), str(tmp_path / "allowed" / "escape" / "x")):
        refused = await client.call("download_audio", {"request_id": rid, "folder": outside})
        assert refused.get("isError") is True, (outside, refused)
        assert "MMAUDIO_ALLOWED_DIRS" in refused["content"][0]["text"]
    assert not (tmp_path / "elsewhere").exists()
