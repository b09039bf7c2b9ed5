"""Every message the real server writes in a scripted stdio session, checked against the published schema.json of
the protocol version that session negotiated (2024-11-05 to 2026-07-28, vendored under tests/data/mcp-schema)."""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import jsonschema
import pytest

from mmaudio_mcp.results import MAX_MESSAGE_BYTES
from tests.processes import RawSession, server_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SCHEMAS = Path(__file__).parent / "data" / "mcp-schema"
VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
MODERN = "2026-07-28"
"""The stateless era: no initialize, each request carries the version and capabilities in its `_meta`."""

RESULTS = {
    "initialize": "InitializeResult",
    "server/discover": "DiscoverResult",
    "ping": "EmptyResult",
    "logging/setLevel": "EmptyResult",
    "tools/list": "ListToolsResult",
    "tools/call": "CallToolResult",
    "resources/list": "ListResourcesResult",
    "resources/templates/list": "ListResourceTemplatesResult",
    "resources/read": "ReadResourceResult",
    "prompts/list": "ListPromptsResult",
    "prompts/get": "GetPromptResult",
}
NOTIFICATIONS = {
    "notifications/progress": "ProgressNotification",
    "notifications/message": "LoggingMessageNotification",
}


@cache
def schema_of(version: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{version}.json").read_text())


def check(version: str, definition: str, instance: Any) -> list[str]:
    """Validate `instance` against one definition of the version's schema; return the errors, one line each."""
    schema = schema_of(version)
    key = "$defs" if "$defs" in schema else "definitions"
    if definition not in schema[key]:
        return [f"{definition} does not exist in {version}"]
    root = {"$schema": schema["$schema"], "$ref": f"#/{key}/{definition}", key: schema[key]}
    validator = jsonschema.validators.validator_for(root)(root)
    return [
        f"{definition} at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in validator.iter_errors(instance)
    ]


def envelope(version: str, message: dict[str, Any]) -> str:
    if "error" in message:
        return "JSONRPCError" if version < "2025-11-25" else "JSONRPCErrorResponse"
    if "result" in message:
        return "JSONRPCResponse" if version < "2025-11-25" else "JSONRPCResultResponse"
    return "JSONRPCNotification"


class CheckedSession:
    """A raw stdio session that checks each server message against the negotiated version's schema."""

    def __init__(self, raw: RawSession, version: str) -> None:
        self.raw = raw
        self.version = version
        self.problems: list[str] = []
        self.seen: list[dict[str, Any]] = []

    def _meta(self) -> dict[str, Any]:
        return {
            "io.modelcontextprotocol/protocolVersion": self.version,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "schema-check", "version": "1"},
        }

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = dict(params or {})
        if self.version == MODERN:
            params["_meta"] = self._meta() | params.get("_meta", {})
        sent = {"jsonrpc": "2.0", "id": self.raw._next_id + 1, "method": method, "params": params}  # pyright: ignore[reportPrivateUsage]
        self.problems += [f"(our request) {p}" for p in check(self.version, "ClientRequest", sent)]
        request_id = await self.raw.send(method, params)
        response, notes = await self.raw.until_response(request_id)
        for message in [*notes, response]:
            self._check(message, method if message is response else None)
        return response

    async def notify(self, method: str) -> None:
        await self.raw.send(method, notify=True)

    def _check(self, message: dict[str, Any], method: str | None) -> None:
        self.seen.append(message)
        where = f"{method or message.get('method')}: "
        self.problems += [where + p for p in check(self.version, envelope(self.version, message), message)]
        if "result" in message and method in RESULTS:
            self.problems += [where + p for p in check(self.version, RESULTS[method], message["result"])]
        elif "method" in message:
            definition = NOTIFICATIONS.get(message["method"], "ServerNotification")
            self.problems += [where + p for p in check(self.version, definition, message)]


@pytest.fixture
async def stdio_server(tmp_path: Path) -> AsyncIterator[RawSession]:
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--sandbox-speed", "0.02"]
    async with await anyio.open_process(command, env=server_env(tmp_path)) as process:
        try:
            yield RawSession(process)
        finally:
            process.terminate()


async def scripted_session(session: CheckedSession) -> dict[str, dict[str, Any]]:
    """The script: handshake or discover, every list, both prompts (and their errors), the three tools (with a
    conversion and an argument error), every linked resource, and logging where the version has it."""
    v = session.version
    out: dict[str, dict[str, Any]] = {}
    if v == MODERN:
        out["discover"] = await session.request("server/discover")
    else:
        capabilities: dict[str, Any] = {}
        info = {"name": "schema-check", "version": "1"}
        out["initialize"] = await session.request(
            "initialize", {"protocolVersion": v, "capabilities": capabilities, "clientInfo": info}
        )
        await session.notify("notifications/initialized")
        out["ping"] = await session.request("ping")
        out["set_level"] = await session.request("logging/setLevel", {"level": "info"})
    for method in ("tools/list", "resources/list", "resources/templates/list", "prompts/list"):
        out[method] = await session.request(method)
    out["prompt"] = await session.request("prompts/get", {"name": "sound_effect", "arguments": {"subject": "a door"}})
    out["prompt2"] = await session.request("prompts/get", {"name": "ambience", "arguments": {"place": "a harbour"}})
    out["prompt_unknown"] = await session.request("prompts/get", {"name": "nope"})
    out["prompt_missing"] = await session.request("prompts/get", {"name": "ambience", "arguments": {}})
    log_meta = {"io.modelcontextprotocol/logLevel": "info"} if v == MODERN else {}
    out["generate"] = await session.request(
        "tools/call",
        {
            "name": "generate_audio",
            "arguments": {"prompt": "rain on a tin roof", "duration": 4},
            "_meta": {"progressToken": "p1", **log_meta},
        },
    )
    request_id = out["generate"]["result"]["structuredContent"]["request_id"]
    out["check"] = await session.request(
        "tools/call", {"name": "check_status", "arguments": {"request_id": request_id}}
    )
    out["convert"] = await session.request(
        "tools/call",
        {
            "name": "download_audio",
            "arguments": {"request_id": request_id, "format": "ogg", "loop": True, "include_audio": True},
        },
    )
    out["bad_arguments"] = await session.request(
        "tools/call", {"name": "generate_audio", "arguments": {"prompt": "rain", "duration": 99}}
    )
    uris = {
        block["uri"]
        for key in ("generate", "check", "convert")
        for block in out[key]["result"]["content"]
        if block["type"] == "resource_link"
    }
    for uri in sorted(uris):
        out[f"read {uri}"] = await session.request("resources/read", {"uri": uri})
    out["read_unknown"] = await session.request("resources/read", {"uri": "audio://nope"})
    out["read_no_template"] = await session.request("resources/read", {"uri": "nothing://here"})
    return out


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_message_matches_the_negotiated_versions_schema(stdio_server: RawSession, version: str) -> None:
    session = CheckedSession(stdio_server, version)
    with anyio.fail_after(60):
        out = await scripted_session(session)
    if version != MODERN:
        assert out["initialize"]["result"]["protocolVersion"] == version
    assert not session.problems, "\n".join(session.problems)
    assert out["bad_arguments"]["result"]["isError"] is True
    assert "duration must be between 2 and 30 seconds (got 99)." in out["bad_arguments"]["result"]["content"][0]["text"]
    # Prompt errors are Invalid params in every version (the SDK alone answers 0, or -32603 on 2026-07-28).
    assert out["prompt_unknown"]["error"]["code"] == -32602
    assert out["prompt_missing"]["error"]["code"] == -32602
    assert "place" in out["prompt_missing"]["error"]["message"]
    listed = out["prompts/list"]["result"]["prompts"]
    assert all(argument.get("description") for prompt in listed for argument in prompt["arguments"])
    # A resource that is not there: -32002 up to 2025-11-25, -32602 from 2026-07-28.
    for unknown in ("read_unknown", "read_no_template"):
        assert out[unknown]["error"]["code"] == (-32602 if version == MODERN else -32002), out[unknown]
    logs = [m for m in session.seen if m.get("method") == "notifications/message"]
    if version != MODERN:  # log messages only with the capability declared, and setLevel honoured
        assert "logging" in out["initialize"]["result"]["capabilities"]
        assert out["set_level"]["result"] == {}
        assert logs, "the status change was not logged at level info"
    has_links = version >= "2025-06-18"
    linked = [k for k in out if k.startswith("read ")]
    assert bool(linked) == has_links
    for key in linked:
        assert "result" in out[key], out[key]


async def test_log_messages_follow_the_level_the_client_set(stdio_server: RawSession) -> None:
    """logging/setLevel warning: the info-level status messages stop (before 2026-07-28)."""
    session = CheckedSession(stdio_server, "2025-11-25")
    info = {"name": "schema-check", "version": "1"}
    await session.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info})
    await session.notify("notifications/initialized")
    assert "result" in await session.request("logging/setLevel", {"level": "warning"})
    with anyio.fail_after(60):
        await session.request(
            "tools/call",
            {"name": "generate_audio", "arguments": {"prompt": "rain", "duration": 2}, "_meta": {"progressToken": 1}},
        )
    methods = [m.get("method") for m in session.seen]
    assert "notifications/progress" in methods
    assert "notifications/message" not in methods
    assert not session.problems, "\n".join(session.problems)


async def test_no_log_messages_on_2026_07_28_unless_the_request_opts_in(stdio_server: RawSession) -> None:
    session = CheckedSession(stdio_server, MODERN)
    with anyio.fail_after(60):
        await session.request(
            "tools/call",
            {"name": "generate_audio", "arguments": {"prompt": "rain", "duration": 2}, "_meta": {"progressToken": 1}},
        )
    assert "notifications/message" not in [m.get("method") for m in session.seen]
    assert not session.problems, "\n".join(session.problems)


async def test_no_message_of_a_30_s_job_exceeds_1_mib(stdio_server: RawSession) -> None:
    """The longest clip, end to end as a host and the player use it: progress, the result, every linked resource,
    every conversion's result and link, and the player's chunks. Prints the largest message."""
    session = CheckedSession(stdio_server, "2025-11-25")
    info = {"name": "size-check", "version": "1"}
    await session.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info})
    await session.notify("notifications/initialized")
    with anyio.fail_after(120):
        long = {"prompt": "storm at sea", "duration": 30, "num_steps": 100}
        generated = await session.request(
            "tools/call", {"name": "generate_audio", "arguments": long, "_meta": {"progressToken": 1}}
        )
        job = generated["result"]["structuredContent"]
        results = [generated]
        for fmt in ("wav", "flac", "ogg", "mp3"):
            arguments = {"request_id": job["request_id"], "format": fmt, "include_audio": True}
            results.append(await session.request("tools/call", {"name": "download_audio", "arguments": arguments}))
        for result in results:
            for block in result["result"]["content"]:
                if block["type"] == "resource_link":
                    assert "result" in await session.request("resources/read", {"uri": block["uri"]})
        chunks = -(-job["file"]["bytes"] // (512 * 1024))
        for index in range(chunks):
            uri = f"audio://{job['request_id']}/chunks/{index}"
            assert "result" in await session.request("resources/read", {"uri": uri})
    assert not session.problems, "\n".join(session.problems)
    largest = max(len(line.encode()) for line in stdio_server.stdout_lines)
    print(f"largest message of a 30 s job: {largest:,} bytes in {len(stdio_server.stdout_lines)} messages")
    assert largest < MAX_MESSAGE_BYTES
