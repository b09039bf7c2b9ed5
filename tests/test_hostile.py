"""Hostile input and upstream faults, over HTTP and stdio: each ends in a clear error, the server stays alive,
nothing is written outside its folders and no job row is lost.

Three tables: bad tool calls (run over a token-protected streamable-HTTP server and over a real stdio process,
both spoken to in raw JSON-RPC so that NaN and Infinity reach the server as the literal tokens), protocol abuse
over HTTP, and every sandbox fault against a sandbox on a real loopback socket (slow, huge and hanging answers only
show there) with short limits.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.audio import describe_file, read_wav_info
from mmaudio_mcp.jobs import Limits
from mmaudio_mcp.sandbox import SANDBOX_API_KEY, Fault, FaultKind, SandboxConfig, create_sandbox
from mmaudio_mcp.server import build_server
from mmaudio_mcp.settings import Settings
from mmaudio_mcp.transport import Exposure, Transport, http_app, serve_on_loopback
from tests.conftest import POLICY
from tests.processes import PROTOCOL_VERSION, server_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from _pytest.mark.structures import ParameterSet
    from anyio.abc import Process
    from mcp.types import CallToolResult

    from mmaudio_mcp.sandbox import Sandbox

TOKEN = "hostile-token-5d0e17"
SPEED = 0.02
UNKNOWN_ID = "mmaudio-v2-text-to-audio_00000000-0000-4000-8000-000000000000"
DONE = "<request_id of a finished job>"
OUTSIDE = "<a folder outside the output folder>"
SAFE_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*-[a-z0-9]{8}\.wav")
TOOLS = {"generate_audio", "check_status", "download_audio"}
CLIENT_INFO = {"name": "hostile", "version": "1"}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
FAST = {"duration": 2, "num_steps": 10}
"""A job the sandbox finishes in a fraction of a second."""


# --- speaking raw JSON-RPC --------------------------------------------------------------------------------------------


def refusal(request_id: object) -> dict[str, Any]:
    """What a client without roots (or sampling, or elicitation) answers a server's request."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}


def initialize_params() -> dict[str, Any]:
    return {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}


async def sse_messages(reply: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE answer. Lines end at LF (or CR LF) only: str.splitlines would also split
    inside a message at U+0085 or U+2028, which JSON leaves unescaped."""
    buffer, data = b"", list[str]()
    async for chunk in reply.aiter_bytes():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in (raw.rstrip(b"\r").decode() for raw in lines):
            if line.startswith("data:"):
                data.append(line.removeprefix("data:").removeprefix(" "))
            elif not line:
                if "".join(data).strip():
                    yield json.loads("\n".join(data))
                data = []


class HttpRpc:
    """A 2025-11-25 streamable-HTTP session in raw JSON-RPC (json.dumps writes NaN and Infinity as such), with the
    standalone GET stream open, as full clients keep it, to answer what the server asks outside a request."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = MCP_HEADERS | {"authorization": f"Bearer {TOKEN}"}
        self.server_requests: list[str] = []
        self._next = 0

    async def open(self) -> None:
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()}
        reply = await self.http.post(self.url, json=body, headers=self.headers)
        assert reply.status_code == 200, reply.text
        self.headers |= {"mcp-session-id": reply.headers["mcp-session-id"], "mcp-protocol-version": PROTOCOL_VERSION}
        ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post(self.url, json=ready, headers=self.headers)).status_code == 202

    async def listen(self) -> None:
        """Answer the server's requests on the standalone GET stream until cancelled (or the stream ends)."""
        headers = {k: v for k, v in self.headers.items() if k != "content-type"} | {"accept": "text/event-stream"}
        with contextlib.suppress(httpx2.HTTPError):
            async with (
                self.http.stream("GET", self.url, headers=headers, timeout=httpx2.Timeout(30, read=None)) as reply,
                contextlib.aclosing(sse_messages(reply)) as messages,
            ):
                async for message in messages:
                    await self._answer(message)

    async def request(self, method: str, params: Any) -> dict[str, Any]:
        """Send one request; answer any request the server makes meanwhile; return the response."""
        self._next += 1
        request_id = self._next
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        async with self.http.stream("POST", self.url, content=body, headers=self.headers) as reply:
            if "text/event-stream" not in reply.headers.get("content-type", ""):
                return json.loads(await reply.aread())  # the transport refused it before any handler ran
            async with contextlib.aclosing(sse_messages(reply)) as messages:
                async for message in messages:
                    if not await self._answer(message) and message.get("id") == request_id:
                        return message
        raise AssertionError(f"the SSE stream for {method} ended without a response")

    async def _answer(self, message: dict[str, Any]) -> bool:
        """Refuse a request from the server (this client declared no capabilities); tell whether it was one."""
        if "method" not in message:
            return False
        if "id" in message:
            self.server_requests.append(message["method"])
            await self.http.post(self.url, json=refusal(message["id"]), headers=self.headers)
        return True


class StdioRpc:
    """A 2025-11-25 stdio session in raw, newline-delimited JSON-RPC."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.server_requests: list[str] = []
        self._buffer = b""
        self._next = 0

    async def open(self) -> None:
        await self.request("initialize", initialize_params())
        await self.write({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def write(self, message: object) -> None:
        await self.send_line((json.dumps(message) + "\n").encode())

    async def send_line(self, line: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line)

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            self._buffer += await self.process.stdout.receive()
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def request(self, method: str, params: Any) -> dict[str, Any]:
        """Send one request; answer any request the server makes meanwhile; return the response."""
        self._next += 1
        request_id = self._next
        await self.write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            message = await self.read()
            if "method" not in message and message.get("id") == request_id:
                return message
            if "method" in message and "id" in message:
                self.server_requests.append(message["method"])
                await self.write(refusal(message["id"]))


@dataclass(frozen=True)
class Outcome:
    failed: bool
    text: str
    structured: dict[str, Any] | None


def outcome_of(reply: dict[str, Any]) -> Outcome:
    """A JSON-RPC error, or a tool result (isError or not), as one shape."""
    if "error" in reply:
        return Outcome(True, str(reply["error"].get("message", "")), None)
    result = reply["result"]
    text = " ".join(block.get("text", "") for block in result.get("content", []))
    return Outcome(bool(result.get("isError")), text, result.get("structuredContent"))


@dataclass
class Target:
    """A running server, how to talk to it, and the folders it may write to."""

    rpc: HttpRpc | StdioRpc
    tree: Path
    output: Path
    state: Path
    done: str = ""
    url: str = ""

    @property
    def outside(self) -> Path:
        return self.tree / "outside"

    async def call(self, tool: str, arguments: Any) -> Outcome:
        with anyio.fail_after(30):
            return outcome_of(await self.rpc.request("tools/call", {"name": tool, "arguments": arguments}))

    async def tools(self) -> set[str]:
        with anyio.fail_after(10):
            reply = await self.rpc.request("tools/list", {})
        return {tool["name"] for tool in reply["result"]["tools"]}

    async def jobs(self) -> list[dict[str, Any]]:
        with anyio.fail_after(10):
            reply = await self.rpc.request("resources/read", {"uri": "mmaudio://jobs"})
        return json.loads(reply["result"]["contents"][0]["text"])

    def strays(self) -> list[Path]:
        """Files anywhere in the temp tree but outside the output and state folders."""
        allowed = (self.tree / "out", self.tree / "state")
        return [p for p in self.tree.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]

    def resolve(self, value: Any) -> Any:
        """Fill in the placeholders of a table row."""
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        if value == DONE:
            return self.done
        if isinstance(value, str) and value.startswith(OUTSIDE):
            return str(self.outside) + value.removeprefix(OUTSIDE)
        return value


async def assert_output_clean(output: Path) -> None:
    """Nothing hidden or partial in the output folder, and every file in it is complete audio (any container)."""
    for path in output.rglob("*"):
        if path.is_file():
            assert not path.name.startswith("."), f"hidden or partial file left: {path}"
            assert path.suffix in (".wav", ".flac", ".ogg", ".mp3"), f"not audio: {path}"
            await describe_file(path)  # decodes it whole: raises InvalidAudioError for a truncated or fake file


async def prepare(target: Target) -> Target:
    """Make one finished job for the rows that need an existing request_id."""
    made = await target.call("generate_audio", {"prompt": "a bell rings", **FAST})
    assert made.structured is not None, made.text
    assert made.structured["status"] == "COMPLETED", made.text
    target.done = made.structured["request_id"]
    return target


# --- the servers --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so that one HTTP server and one stdio process serve every row of the table."""
    return "asyncio"


@pytest.fixture(scope="module")
async def http_target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    """A token-protected streamable-HTTP server on loopback, with the sandbox in memory, run from a working
    directory inside the temp tree (so that a relative write would be caught)."""
    tree = tmp_path_factory.mktemp("hostile-http")
    (tree / "cwd").mkdir()
    settings = Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        api_key=SANDBOX_API_KEY,
        gateway_url="http://127.0.0.1:8787",
        output_dir=tree / "out",
        state_dir=tree / "state",
        wait_seconds=20,
        transport="streamable-http",
    )
    sandbox = create_sandbox(SandboxConfig(speed=SPEED))
    server = build_server(settings, http_transport=httpx2.ASGITransport(app=sandbox.app), policy=POLICY)
    app = http_app(server, Transport.STREAMABLE_HTTP, Exposure(token=TOKEN))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tree / "cwd")
        async with (
            serve_on_loopback(app) as url,
            httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60)) as http,
        ):
            rpc = HttpRpc(http, f"{url}/mcp")
            await rpc.open()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(rpc.listen)
                yield await prepare(Target(rpc, tree, settings.output_dir, settings.state_dir, url=url))
                tasks.cancel_scope.cancel()


@pytest.fixture(scope="module")
async def stdio_target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    """`python -m mmaudio_mcp serve --sandbox --sandbox-speed 0.05` as a host launches it, from a working directory
    inside the temp tree; its stderr goes to a log beside the tree."""
    root = tmp_path_factory.mktemp("hostile-stdio")
    tree = root / "tree"
    (tree / "cwd").mkdir(parents=True)
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--sandbox-speed", "0.05"]
    with (root / "stderr.log").open("wb") as stderr:
        async with await anyio.open_process(command, env=server_env(tree), cwd=tree / "cwd", stderr=stderr) as process:
            rpc = StdioRpc(process)
            with anyio.fail_after(30):
                await rpc.open()
            yield await prepare(Target(rpc, tree, tree / "out" / "sandbox", tree / "state"))
            assert process.stdin is not None
            await process.stdin.aclose()
            with anyio.fail_after(10):
                await process.wait()


def connect(url: str, **headers: str | bytes) -> Client:
    """The SDK client (2026-07-28 protocol) with the token (and any other headers)."""
    headers = {"Authorization": f"Bearer {TOKEN}", **headers}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(f"{url}/mcp", http_client=http))


# --- table 1: bad tool calls ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A tool call the server must refuse with an error holding `words`, or (accepted) take safely."""

    tool: str
    arguments: Any
    words: tuple[str, ...] = ()
    accepted: bool = False


def bad(
    case: str, tool: str, arguments: Any, *words: str, accepted: bool = False, xfail: str | None = None
) -> ParameterSet:
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Bad(tool, arguments, words, accepted), id=f"{tool}-{case}", marks=marks)


def gen(case: str, arguments: dict[str, Any], *words: str, **options: Any) -> ParameterSet:
    return bad(case, "generate_audio", arguments, *words, **options)


def rain(**overrides: Any) -> dict[str, Any]:
    return {"prompt": "rain", **FAST} | overrides


NAN, INF = float("nan"), float("inf")
KIB_100 = 100 * 1024

BAD_PROMPTS = [
    gen("prompt-missing", FAST, "prompt", "is required"),
    gen("prompt-null", rain(prompt=None), "prompt", "must be a string"),
    gen("prompt-number", rain(prompt=42), "prompt", "must be a string"),
    gen("prompt-list", rain(prompt=["rain"]), "prompt", "must be a string"),
    gen("prompt-object", rain(prompt={"text": "rain"}), "prompt", "must be a string"),
    gen("prompt-empty", rain(prompt=""), "prompt", "must not be empty"),
    gen("prompt-blank", rain(prompt=" \n\t\r "), "prompt", "must say something"),
    gen("prompt-100kb", rain(prompt="rain " * (KIB_100 // 5)), "prompt", "at most 2000 characters"),
    gen("prompt-100kb-of-emoji", rain(prompt="\U0001f514" * (KIB_100 // 4)), "prompt", "at most 2000 characters"),
    gen("prompt-2001-characters", rain(prompt="r" * 2001), "prompt", "at most 2000 characters"),
    gen("prompt-control-characters", rain(prompt="rain\x00 on a \x1b[31mtin\x1b[0m roof\x07\x7f"), accepted=True),
    gen("prompt-rtl-override", rain(prompt="\u202eniar\u202c on a \u2066roof\u2069"), accepted=True),
    gen("prompt-c1-controls", rain(prompt="rain \x9b31m on \x85 a roof"), accepted=True),
    gen("prompt-only-invisible", rain(prompt="\x00\x1b\u200b\u202e"), "prompt"),
    gen("negative-prompt-number", rain(negative_prompt=5), "negative_prompt", "must be a string"),
    gen("negative-prompt-2001-characters", rain(negative_prompt="m" * 2001), "negative_prompt", "at most 2000"),
]

BAD_NUMBERS = [
    gen("duration-words", rain(duration="eight"), "duration", "whole number"),
    gen("duration-fractional", rain(duration=8.5), "duration", "whole number"),
    gen("duration-list", rain(duration=[8]), "duration", "whole number"),
    gen("duration-null", rain(duration=None), "duration", "whole number"),
    gen("duration-too-short", rain(duration=1), "duration", "must be between"),
    gen("duration-too-long", rain(duration=31), "duration", "must be between"),
    gen("duration-negative", rain(duration=-8), "duration", "must be between"),
    gen("duration-boolean", rain(duration=True), "duration", "must be between"),
    gen("duration-10e40", rain(duration=10**40), "duration", "must be between"),
    gen("duration-nan", rain(duration=NAN), "duration", "finite number"),
    gen("duration-infinite", rain(duration=INF), "duration", "finite number"),
    gen("num-steps-words", rain(num_steps="many"), "num_steps", "whole number"),
    gen("num-steps-too-low", rain(num_steps=9), "num_steps", "must be between"),
    gen("num-steps-too-high", rain(num_steps=101), "num_steps", "must be between"),
    gen("num-steps-fractional", rain(num_steps=25.5), "num_steps", "whole number"),
    gen("num-steps-nan", rain(num_steps=NAN), "num_steps", "finite number"),
    gen("cfg-strength-words", rain(cfg_strength="strong"), "cfg_strength", "must be a number"),
    gen("cfg-strength-list", rain(cfg_strength=[4.5]), "cfg_strength", "must be a number"),
    gen("cfg-strength-too-low", rain(cfg_strength=0.5), "cfg_strength", "must be between"),
    gen("cfg-strength-too-high", rain(cfg_strength=10.5), "cfg_strength", "must be between"),
    gen("cfg-strength-nan", rain(cfg_strength=NAN), "cfg_strength", "finite number"),
    gen("cfg-strength-infinite", rain(cfg_strength=INF), "cfg_strength", "finite number"),
    gen("cfg-strength-minus-infinite", rain(cfg_strength=-INF), "cfg_strength", "finite number"),
    gen("mask-away-clip-words", rain(mask_away_clip="perhaps"), "mask_away_clip", "true or false"),
    gen("mask-away-clip-number", rain(mask_away_clip=2), "mask_away_clip", "true or false"),
    gen("mask-away-clip-object", rain(mask_away_clip={}), "mask_away_clip", "true or false"),
    gen("wait-seconds-words", rain(wait_seconds="soon"), "wait_seconds", "must be a number"),
    gen("wait-seconds-negative", rain(wait_seconds=-1), "wait_seconds", "must be between"),
    gen("wait-seconds-too-long", rain(wait_seconds=301), "wait_seconds", "must be between"),
    gen("wait-seconds-nan", rain(wait_seconds=NAN), "wait_seconds"),
    gen("wait-seconds-infinite", rain(wait_seconds=INF), "wait_seconds", "finite number"),
    gen("wait-seconds-minus-infinite", rain(wait_seconds=-INF), "wait_seconds", "finite number"),
]

BAD_FOLDERS = [
    ("number", 123, ("folder", "must be a string")),
    ("parent", "../x", ("outside the output folder",)),
    ("nested-parent", "sub/../../x", ("outside the output folder",)),
    ("absolute-outside", OUTSIDE, ("outside the output folder",)),
    ("root", "/", ("outside the output folder",)),
    ("home", "~", ("outside the output folder",)),
    ("nul", "a\x00b", ("not a usable path",)),
    ("over-long", "f" * 1025, ("folder", "at most 1024")),
]

BAD_CALL_SHAPES = [
    bad("unknown-tool", "nope", {}, "Unknown tool"),
    bad("path-like-tool-name", "../generate_audio", {}, "Unknown tool"),
    gen("arguments-a-string", "rain", "Invalid request parameters"),
    gen("arguments-a-list", ["rain"], "Invalid request parameters"),
    gen("arguments-null", None, "prompt", "is required"),
]

REQUEST_IDS = [
    ("missing", None, ("request_id", "is required")),
    ("null", {"request_id": None}, ("request_id", "must be a string")),
    ("number", {"request_id": 123}, ("request_id", "must be a string")),
    ("empty", {"request_id": ""}, ("request_id", "returned by generate_audio")),
    ("path-traversal", {"request_id": "../../etc/passwd"}, ("request_id", "returned by generate_audio")),
    ("absolute-path", {"request_id": "/etc/passwd"}, ("request_id", "returned by generate_audio")),
    ("windows-path", {"request_id": "..\\..\\boot.ini"}, ("request_id", "returned by generate_audio")),
    ("url-encoded-traversal", {"request_id": "a%2F..%2F..%2Fetc"}, ("request_id", "returned by generate_audio")),
    ("dot-dot-inside", {"request_id": "mmaudio-v2-text-to-audio_.."}, ("not a Pixazo request_id",)),
    ("url", {"request_id": "http://evil.example/x"}, ("request_id", "returned by generate_audio")),
    ("oversized", {"request_id": "m" * 5000}, ("request_id", "at most 128 characters")),
    ("129-characters", {"request_id": "m" * 129}, ("request_id", "at most 128 characters")),
    ("trailing-newline", {"request_id": f"{UNKNOWN_ID}\n"}, ("request_id", "returned by generate_audio")),
    ("nul", {"request_id": "mmaudio\x00"}, ("request_id", "returned by generate_audio")),
    ("unknown", {"request_id": UNKNOWN_ID}, ("Unknown request_id",)),
    ("unknown-128-characters", {"request_id": "m" * 128}, ("Unknown request_id",)),
]

BAD_CHECKS = [
    bad("wait-seconds-nan", "check_status", {"request_id": DONE, "wait_seconds": NAN}, "wait_seconds"),
    bad("wait-seconds-negative", "check_status", {"request_id": DONE, "wait_seconds": -1}, "wait_seconds"),
    bad("wait-seconds-too-long", "check_status", {"request_id": DONE, "wait_seconds": 301}, "wait_seconds"),
    bad("wait-seconds-words", "check_status", {"request_id": DONE, "wait_seconds": "later"}, "wait_seconds"),
]

BAD_FILENAMES = [
    ("parent", "../escape.wav", "path separator"),
    ("absolute", f"{OUTSIDE}/abs.wav", "path separator"),
    ("sub-folder", "sub/dir.wav", "path separator"),
    ("windows-parent", "..\\win.wav", "path separator"),
    ("dot-dot", "a..wav", "'..'"),
    ("hidden", ".hidden.wav", "starts with a dot"),
    ("con", "CON", "reserved Windows device name"),
    ("nul", "NUL", "reserved Windows device name"),
    ("nul-wav", "nul.wav", "reserved Windows device name"),
    ("com1-wav", "com1.wav", "reserved Windows device name"),
    ("aux", "aux", "reserved Windows device name"),
    ("lpt9-with-space", "LPT9 .wav", "reserved Windows device name"),
    ("over-long", "x" * 300, "at most 120 characters"),
    ("over-long-once-suffixed", "x" * 117, "characters long"),
    ("empty", "", "is empty"),
    ("nul-byte", "a\x00b.wav", "control character"),
    ("newline", "a\nb.wav", "control character"),
    ("escape", "a\x1b[2Jb.wav", "control character"),
    ("trailing-dot", "name.", "ends with a dot"),
    ("trailing-space", "name ", "ends with a dot or a space"),
    ("colon", "a:b.wav", "Windows forbids"),
    ("pipe", "a|b.wav", "Windows forbids"),
    ("wildcard", "a*b", "Windows forbids"),
    ("wrong-suffix", "song.mp3", "ends in '.mp3'"),
    ("number", 123, "must be a string"),
    ("list", ["a.wav"], "must be a string"),
]

BAD_OPTIONS = [
    ("overwrite-words", {"overwrite": "perhaps"}, ("overwrite", "true or false")),
    ("format-unknown", {"format": "wav5"}, ("format", "'wav', 'flac', 'ogg' or 'mp3'")),
    ("format-upper-case", {"format": "WAV"}, ("format", "'wav', 'flac', 'ogg' or 'mp3'")),
    ("format-number", {"format": 3}, ("format",)),
    ("sample-rate-too-low", {"sample_rate": 7999}, ("sample_rate", "must be between")),
    ("sample-rate-too-high", {"sample_rate": 192001}, ("sample_rate", "must be between")),
    ("sample-rate-words", {"sample_rate": "fast"}, ("sample_rate", "whole number")),
    ("sample-rate-fractional", {"sample_rate": 44100.5}, ("sample_rate", "whole number")),
    ("sample-rate-negative", {"sample_rate": -44100}, ("sample_rate", "must be between")),
    ("sample-rate-nan", {"sample_rate": NAN}, ("sample_rate",)),
    ("channels-zero", {"channels": 0}, ("channels",)),
    ("channels-three", {"channels": 3}, ("channels",)),
    ("channels-words", {"channels": "stereo"}, ("channels",)),
    ("normalize-words", {"normalize": "perhaps"}, ("normalize", "true or false")),
    ("target-lufs-nan", {"target_lufs": NAN}, ("target_lufs",)),
    ("target-lufs-infinite", {"target_lufs": INF}, ("target_lufs",)),
    ("target-lufs-too-low", {"target_lufs": -41}, ("target_lufs", "must be between")),
    ("target-lufs-zero", {"target_lufs": 0}, ("target_lufs", "must be between")),
    ("target-lufs-words", {"target_lufs": "loud"}, ("target_lufs", "must be a number")),
    ("trim-silence-number", {"trim_silence": 2}, ("trim_silence", "true or false")),
    ("fade-ms-negative", {"fade_ms": -1}, ("fade_ms", "must be between")),
    ("fade-ms-too-long", {"fade_ms": 5001}, ("fade_ms", "must be between")),
    ("fade-ms-fractional", {"fade_ms": 1.5}, ("fade_ms", "whole number")),
    ("loop-words", {"loop": "perhaps"}, ("loop", "true or false")),
    ("include-audio-words", {"include_audio": "perhaps"}, ("include_audio", "true or false")),
    ("mp3-at-96-khz", {"format": "mp3", "sample_rate": 96000}, ("Invalid processing options", "96000 Hz")),
    ("mp3-at-192-khz", {"format": "mp3", "sample_rate": 192000}, ("Invalid processing options", "192000 Hz")),
    ("wav-name-for-ogg", {"format": "ogg", "filename": "take.wav"}, ("ends in '.wav'", "OGG")),
]

BAD_CALLS: list[ParameterSet] = [
    *BAD_PROMPTS,
    *BAD_NUMBERS,
    *(gen(f"folder-{case}", rain(folder=folder), *words) for case, folder, words in BAD_FOLDERS),
    *BAD_CALL_SHAPES,
    *(
        bad(f"request-id-{case}", tool, arguments if arguments is not None else {}, *words)
        for tool in ("check_status", "download_audio")
        for case, arguments, words in REQUEST_IDS
    ),
    *BAD_CHECKS,
    *(
        bad(f"filename-{case}", "download_audio", {"request_id": DONE, "filename": name}, "filename", words)
        for case, name, words in BAD_FILENAMES
    ),
    bad("filename-c1-control", "download_audio", {"request_id": DONE, "filename": "a\x9bb.wav"}),
    bad(
        "filename-rtl-override",
        "download_audio",
        {"request_id": DONE, "filename": "evil\u202egnp.wav"},
    ),
    *(
        bad(f"folder-{case}", "download_audio", {"request_id": DONE, "folder": folder}, *words)
        for case, folder, words in BAD_FOLDERS
    ),
    *(bad(case, "download_audio", {"request_id": DONE, **options}, *words) for case, options, words in BAD_OPTIONS),
]


async def check_bad_call(target: Target, case: Bad) -> None:
    before = await target.jobs()
    result = await target.call(case.tool, target.resolve(case.arguments))
    if case.accepted:
        assert not result.failed, result.text
        assert result.structured is not None
        path = Path(result.structured["file"]["path"])
        assert path.parent == target.output
        assert SAFE_NAME.fullmatch(path.name), f"unsafe file name {path.name!r}"
        assert len(await target.jobs()) == min(len(before) + 1, 20)
    else:
        assert result.failed, f"accepted: {result.text[:300]}"
        for word in case.words:
            assert word in result.text, f"{word!r} not in {result.text[:500]!r}"
        assert result.text.strip() not in ("", f"Error executing tool {case.tool}"), "the reason was hidden"
        assert "Traceback" not in result.text
        assert len(result.text) < 4000, "the error echoes the whole input back"
        assert await target.jobs() == before, "a refused call changed the job store"
    assert await target.tools() == TOOLS
    assert target.strays() == []
    assert not target.outside.exists()
    await assert_output_clean(target.output)


@pytest.mark.parametrize("case", BAD_CALLS)
async def test_a_bad_tool_call_over_http_is_refused_clearly_and_harms_nothing(http_target: Target, case: Bad) -> None:
    """Over streamable HTTP: a clear error naming the problem (or safe acceptance), the server still answers,
    no file outside its folders, no job row added or changed by a refused call."""
    await check_bad_call(http_target, case)


@pytest.mark.parametrize("case", BAD_CALLS)
async def test_a_bad_tool_call_over_stdio_is_refused_clearly_and_harms_nothing(stdio_target: Target, case: Bad) -> None:
    """The same table against a real `serve --sandbox` process over stdio."""
    await check_bad_call(stdio_target, case)


BAD_READS = [
    pytest.param("audio://../../etc/passwd", "Unknown resource", id="audio-path-traversal"),
    pytest.param("audio://%2e%2e%2fetc%2fpasswd", "Unknown resource", id="audio-encoded-traversal"),
    pytest.param("audio://a\x00b", "Unknown resource", id="audio-nul"),
    pytest.param(f"audio://{UNKNOWN_ID}", "Unknown request_id", id="audio-unknown-job"),
    pytest.param("mmaudio://jobs/../../etc/passwd", "Unknown resource", id="jobs-path-traversal"),
    pytest.param("file:///etc/passwd", "Unknown resource", id="file-url"),
    pytest.param("mmaudio://nope", "Unknown resource", id="unknown-uri"),
]


@pytest.mark.parametrize(("uri", "words"), BAD_READS)
@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_bad_resource_read_is_a_json_rpc_error(
    http_target: Target, stdio_target: Target, transport: str, uri: str, words: str
) -> None:
    """A resource URI that is path-like, foreign or unknown is a JSON-RPC error; nothing is read or written."""
    target = http_target if transport == "http" else stdio_target
    with anyio.fail_after(10):
        reply = await target.rpc.request("resources/read", {"uri": uri})
    assert "error" in reply, reply
    assert words in reply["error"]["message"]
    assert "root:" not in json.dumps(reply)
    assert await target.tools() == TOOLS
    assert target.strays() == []


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_client_without_roots_is_never_asked_for_them(
    http_target: Target, stdio_target: Target, transport: str
) -> None:
    """A client that declared no roots capability gets no roots/list request when it passes folder=."""
    target = http_target if transport == "http" else stdio_target
    target.rpc.server_requests.clear()
    result = await target.call("download_audio", {"request_id": target.done, "folder": "sfx"})
    assert not result.failed, result.text
    assert target.rpc.server_requests == []


STDIO_GARBAGE = [
    pytest.param(b"{not json\n", id="malformed-json"),
    pytest.param(b"\xff\xfe\xfd\n", id="not-utf8"),
    pytest.param(b'"\\ud800"\n', id="lone-surrogate"),
    pytest.param(b"null\n", id="json-null"),
    pytest.param(b"\n", id="empty-line"),
    pytest.param(b'[{"jsonrpc": "2.0", "id": 9001, "method": "tools/list"}]\n', id="batch"),
    pytest.param(b'{"jsonrpc": "1.0", "id": 9002, "method": "tools/list"}\n', id="wrong-jsonrpc-version"),
    pytest.param(b'{"jsonrpc": "2.0", "id": NaN, "method": "tools/list"}\n', id="nan-id"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000 + b"\n", id="deep-nesting"),
    pytest.param(b'{"jsonrpc": "2.0", "method": "notifications/' + b"x" * (8 << 20) + b'"}\n', id="8-mib-line"),
]


@pytest.mark.parametrize("line", STDIO_GARBAGE)
async def test_a_garbage_line_on_stdin_does_not_stop_the_server(stdio_target: Target, line: bytes) -> None:
    """Lines that are not a JSON-RPC message are dropped (the SDK answers nothing) and the next request works."""
    assert isinstance(stdio_target.rpc, StdioRpc)
    await stdio_target.rpc.send_line(line)
    assert await stdio_target.tools() == TOOLS
    assert stdio_target.rpc.process.returncode is None


# --- table 2: protocol abuse over HTTP ------------------------------------------------------------------------------


def rpc_body(method: str, params: object = None, **extra: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 4242, "method": method, "params": params or {}} | extra).encode()


@dataclass(frozen=True)
class Abuse:
    """A raw HTTP request and the refusal it must get: a status and, when the answer is JSON-RPC, an error code."""

    body: bytes | None
    status: int
    code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    drop: Sequence[str] = ()
    method: str = "POST"
    path: str = "/mcp"


TOOLS_LIST = rpc_body("tools/list")
HUGE = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"x": "' + b"a" * (4 << 20) + b'"}}'
ABUSES = [
    pytest.param(Abuse(TOOLS_LIST, 401, drop=("authorization",)), id="missing-token"),
    pytest.param(Abuse(TOOLS_LIST, 401, headers={"authorization": "Bearer wrong"}), id="wrong-token"),
    pytest.param(Abuse(TOOLS_LIST, 401, headers={"authorization": TOKEN}), id="token-without-scheme"),
    pytest.param(Abuse(TOOLS_LIST, 401, headers={"authorization": "Basic aG9zdGlsZTp4"}), id="basic-auth"),
    pytest.param(Abuse(TOOLS_LIST, 401, drop=("authorization",), path=f"/mcp?access_token={TOKEN}"), id="query-token"),
    pytest.param(Abuse(HUGE, 401, drop=("authorization",)), id="oversized-body-without-token"),
    pytest.param(Abuse(TOOLS_LIST, 421, headers={"host": "evil.example"}), id="wrong-host"),
    pytest.param(Abuse(TOOLS_LIST, 403, headers={"origin": "http://evil.example"}), id="wrong-origin"),
    pytest.param(Abuse(TOOLS_LIST, 403, headers={"origin": "null"}), id="null-origin"),
    pytest.param(Abuse(HUGE, 413), id="oversized-body"),
    pytest.param(Abuse(b'{"jsonrpc": "2.0", "id": 1, "method": ', 400, -32700), id="malformed-json"),
    pytest.param(Abuse(b"\xff\xfe\x00garbage", 400, -32700), id="not-utf8"),
    pytest.param(Abuse(b'{"jsonrpc": "2.0", "id": 1, "method": "\\ud800"}', 400, -32700), id="lone-surrogate"),
    pytest.param(Abuse(b"[" * 100_000 + b"]" * 100_000, 400, -32700), id="deep-nesting"),
    pytest.param(Abuse(b"", 400, -32700), id="empty-body"),
    pytest.param(Abuse(b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}', 400, -32602), id="wrong-jsonrpc"),
    pytest.param(Abuse(b'{"jsonrpc": "2.0", "id": 1}', 400, -32602), id="missing-method"),
    pytest.param(Abuse(b'{"jsonrpc": "2.0", "id": 1, "method": 7}', 400, -32602), id="method-not-a-string"),
    pytest.param(Abuse(rpc_body("tools/call", "x"), 400, -32602), id="params-not-an-object"),
    pytest.param(Abuse(b"[" + TOOLS_LIST + b"," + TOOLS_LIST + b"]", 400, -32602), id="batch"),
    pytest.param(Abuse(b"[]", 400, -32602), id="empty-batch"),
    pytest.param(Abuse(b"42", 400, -32602), id="json-scalar"),
    pytest.param(Abuse(rpc_body("nope/nope"), 200, -32601), id="unknown-method"),
    pytest.param(Abuse(rpc_body("tools/call", {"arguments": {}}), 200, -32602), id="tool-call-without-name"),
    pytest.param(Abuse(TOOLS_LIST, 400, headers={"content-type": "text/plain"}), id="wrong-content-type"),
    pytest.param(Abuse(TOOLS_LIST, 404, -32600, headers={"mcp-session-id": "f" * 32}), id="unknown-session"),
    pytest.param(Abuse(TOOLS_LIST, 400, -32600, drop=("mcp-session-id",)), id="missing-session"),
    pytest.param(Abuse(TOOLS_LIST, 400, -32602, headers={"mcp-protocol-version": "1999-01-01"}), id="bad-version"),
    pytest.param(Abuse(TOOLS_LIST, 405, -32600, method="PUT"), id="put"),
]


def json_rpc_error_code(reply: httpx2.Response) -> int | None:
    """The error code of a JSON or SSE answer, if it carries a JSON-RPC error."""
    text = reply.text
    if "text/event-stream" in reply.headers.get("content-type", ""):
        text = "".join(line[5:] for line in text.splitlines() if line.startswith("data:"))
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message.get("error", {}).get("code") if isinstance(message, dict) else None


async def assert_alive(target: Target) -> None:
    """The probe answers, and a real tool call works through the SDK client."""
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{target.url}/healthz")).json() == {"status": "ok"}
    with anyio.fail_after(20):
        async with connect(target.url) as client:
            result = await client.call_tool("check_status", {"request_id": target.done})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert result.structured_content["status"] == "COMPLETED"


@pytest.mark.parametrize("abuse", ABUSES)
async def test_protocol_abuse_over_http_is_refused_and_the_server_lives_on(http_target: Target, abuse: Abuse) -> None:
    """Each abuse gets the HTTP refusal (and JSON-RPC error code) observed from the SDK, never a 5xx or a hang; the
    token is never echoed; /healthz and a real tool call work afterwards."""
    assert isinstance(http_target.rpc, HttpRpc)
    headers = {k: v for k, v in http_target.rpc.headers.items() if k not in abuse.drop} | dict(abuse.headers)
    with anyio.fail_after(20):
        async with httpx2.AsyncClient(timeout=20) as http:
            reply = await http.request(
                abuse.method, f"{http_target.url}{abuse.path}", content=abuse.body, headers=headers
            )
    assert reply.status_code == abuse.status, reply.text[:300]
    if abuse.code is not None:
        assert json_rpc_error_code(reply) == abuse.code, reply.text[:300]
    assert TOKEN not in reply.text
    await assert_alive(http_target)
    assert http_target.strays() == []


async def test_a_client_key_header_that_is_not_ascii_is_refused_clearly(http_target: Target) -> None:
    """A client's own Pixazo key that cannot be an HTTP header value is refused with an error naming the header,
    and no job row claims a submit that never happened."""
    with anyio.fail_after(20):
        async with connect(http_target.url, **{"X-Pixazo-Api-Key": "cl\xe9".encode("latin-1")}) as client:
            result = await client.call_tool("generate_audio", rain())
    assert result.is_error
    assert "X-Pixazo-Api-Key" in " ".join(getattr(block, "text", "") for block in result.content)
    database = sqlite3.connect(f"{(http_target.state / 'jobs.sqlite3').as_uri()}?mode=ro", uri=True)
    with contextlib.closing(database):
        ghosts = database.execute("SELECT local_id FROM jobs WHERE status = 'SUBMITTING'").fetchall()
    assert ghosts == []
    await assert_alive(http_target)


FLOOD = 500


async def flood(count: int, send: Any) -> int:
    """Send `count` requests 25 at a time; return how many were answered as expected."""
    answered = 0
    limiter = anyio.CapacityLimiter(25)

    async def one() -> None:
        nonlocal answered
        async with limiter:
            ok = bool(await send())
        answered += ok

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tasks:
            for _ in range(count):
                tasks.start_soon(one)
    return answered


async def test_a_flood_of_500_tool_lists_from_one_sdk_client_is_all_answered(
    http_target: Target, record_property: Any
) -> None:
    """500 tools/list calls over one SDK client session (2026-07-28) are all answered; the server lives on."""
    started = time.perf_counter()
    async with connect(http_target.url) as client:

        async def send() -> bool:
            return {tool.name for tool in (await client.list_tools()).tools} == TOOLS

        answered = await flood(FLOOD, send)
    record_property("seconds", round(time.perf_counter() - started, 2))
    assert answered == FLOOD
    await assert_alive(http_target)


async def test_a_flood_of_500_raw_tool_calls_on_one_session_is_all_answered(
    http_target: Target, record_property: Any
) -> None:
    """500 raw tools/call requests on one 2025-11-25 session, alternating a good call and a refused one."""
    calls = [("check_status", {"request_id": http_target.done}), ("check_status", {"request_id": "../x"})]
    sent = 0

    async def send() -> bool:
        nonlocal sent
        tool, arguments = calls[sent % 2]
        sent += 1
        result = await http_target.call(tool, arguments)
        return result.failed == (arguments["request_id"] == "../x")

    started = time.perf_counter()
    answered = await flood(FLOOD, send)
    record_property("seconds", round(time.perf_counter() - started, 2))
    assert answered == FLOOD
    await assert_alive(http_target)


async def test_a_flood_of_500_unauthenticated_posts_is_all_refused(http_target: Target, record_property: Any) -> None:
    """500 posts without the token each get 401 (none reaches MCP, none is a 5xx); the server lives on."""
    headers = dict(MCP_HEADERS)
    async with httpx2.AsyncClient(timeout=20) as http:

        async def send() -> bool:
            reply = await http.post(f"{http_target.url}/mcp", content=TOOLS_LIST, headers=headers)
            return reply.status_code == 401

        started = time.perf_counter()
        answered = await flood(FLOOD, send)
    record_property("seconds", round(time.perf_counter() - started, 2))
    assert answered == FLOOD
    await assert_alive(http_target)


# --- table 3: upstream faults ---------------------------------------------------------------------------------------

LIMITS = Limits(http_timeout=1.0, download_seconds=2.0, max_media_bytes=1 << 20)
"""One request to Pixazo or the CDN may take 1 s, a whole download 2 s, audio 1 MiB (a 2 s job is 345 KiB)."""


@dataclass
class Upstream:
    client: Client
    sandbox: Sandbox
    output: Path
    state: Path
    tree: Path

    def strays(self) -> list[Path]:
        allowed = (self.output, self.state)
        return [p for p in self.tree.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]

    async def listing(self, uri: str = "mmaudio://jobs") -> list[dict[str, Any]]:
        contents = (await self.client.read_resource(uri)).contents
        return json.loads(getattr(contents[0], "text", "[]"))

    async def generate(self, prompt: str, **extra: Any) -> CallToolResult:
        with anyio.fail_after(40):
            return await self.client.call_tool("generate_audio", {"prompt": prompt, **FAST, **extra})


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    """The sandbox on a real loopback socket (1 KiB every 50 ms when dripping, 8 MiB when huge) and a server
    pointed at it with short limits, reached in memory."""
    sandbox = create_sandbox(SandboxConfig(speed=SPEED, drip_seconds=0.05, huge_media_bytes=8 << 20))
    async with serve_on_loopback(sandbox.app) as gateway:
        settings = Settings(
            _env_file=None,  # pyright: ignore[reportCallIssue]
            api_key=SANDBOX_API_KEY,
            gateway_url=gateway,
            output_dir=tmp_path / "out",
            state_dir=tmp_path / "state",
            wait_seconds=20,
        )
        async with Client(build_server(settings, policy=POLICY, limits=LIMITS)) as client:
            yield Upstream(client, sandbox, settings.output_dir, settings.state_dir, tmp_path)


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


@dataclass(frozen=True)
class Upset:
    """A fault injected `times` times before a generate call, and how the call and its job row must end."""

    kind: FaultKind
    times: int
    row: str
    words: tuple[str, ...] = ()
    media: bool = False

    @property
    def transient(self) -> bool:
        return not self.words


def upset(kind: FaultKind, times: int, row: str, *words: str, media: bool = False) -> ParameterSet:
    return pytest.param(Upset(kind, times, row, words, media), id=kind.value)


MEDIA_RETRY = "download_audio"
FAULTS = [
    upset(FaultKind.UNAUTHORIZED, 1, "REJECTED", "401", "PIXAZO_API_KEY"),
    upset(FaultKind.FORBIDDEN, 1, "REJECTED", "403", "subscription"),
    upset(FaultKind.BAD_REQUEST, 1, "REJECTED", "400", "Check the parameters"),
    upset(FaultKind.INSUFFICIENT_BALANCE, 1, "REJECTED", "402", "top up"),
    upset(FaultKind.RATE_LIMITED, 1, "COMPLETED"),
    upset(FaultKind.SUBMIT_500, 1, "SUBMITTING", "500", "not resent"),
    upset(FaultKind.POLL_500, 3, "COMPLETED"),
    upset(FaultKind.JOB_FAILED, 1, "FAILED", "FAILED", "failed"),
    upset(FaultKind.JOB_ERROR, 1, "ERROR", "ERROR", "not charged"),
    upset(FaultKind.TRUNCATED_WAV, 2, "COMPLETED", "truncated", MEDIA_RETRY, media=True),
    upset(FaultKind.NOT_WAV, 2, "COMPLETED", "HTML/XML page, not audio", MEDIA_RETRY, media=True),
    upset(FaultKind.MEDIA_404, 2, "COMPLETED", "404", MEDIA_RETRY, media=True),
    upset(FaultKind.SLOW_MEDIA, 2, "COMPLETED", "longer than 2 s", MEDIA_RETRY, media=True),
    upset(FaultKind.HUGE_MEDIA, 2, "COMPLETED", "8,388,608 bytes", "cap", MEDIA_RETRY, media=True),
    upset(FaultKind.MEDIA_REDIRECT_FILE, 2, "COMPLETED", "file://", "Refusing", MEDIA_RETRY, media=True),
    upset(FaultKind.MEDIA_REDIRECT_OTHER_HOST, 2, "COMPLETED", "Refusing", MEDIA_RETRY, media=True),
    upset(FaultKind.POLL_HANG, 1, "COMPLETED"),
    upset(FaultKind.SUBMIT_HANG, 1, "SUBMITTING", "may be billed", "not resent", "dashboard"),
    upset(FaultKind.SUBMIT_NO_ID, 1, "SUBMITTING", "may be billed", "not resent", "unfinished"),
    upset(FaultKind.SUBMIT_ODD_ID, 1, "SUBMITTING", "may be billed", "refuses", "unfinished"),
    upset(FaultKind.SUBMIT_LONG_ID, 1, "SUBMITTING", "may be billed", "10,000 characters", "unfinished"),
    upset(FaultKind.POLL_DRIP, 1, "COMPLETED"),
    upset(FaultKind.POLL_HUGE, 1, "QUEUED", "over 1024 KiB", "check_status"),
    upset(FaultKind.POLL_UNKNOWN_STATUS, 1, "QUEUED", "'DONE'", "check_status"),
    upset(FaultKind.MEDIA_RF64, 1, "COMPLETED"),
    upset(FaultKind.MEDIA_FLAC, 1, "COMPLETED"),
    upset(FaultKind.MEDIA_OGG, 1, "COMPLETED"),
    upset(FaultKind.MEDIA_OPUS, 1, "COMPLETED"),
    upset(FaultKind.MEDIA_MP3, 1, "COMPLETED"),
    upset(FaultKind.TRUNCATED_FLAC, 2, "COMPLETED", "FLAC", MEDIA_RETRY, media=True),
]


def test_the_fault_table_covers_every_fault_kind() -> None:
    """Every FaultKind the sandbox can inject has a row."""
    assert {case.values[0].kind for case in FAULTS} == set(FaultKind)


@pytest.mark.parametrize("case", FAULTS)
async def test_an_upstream_fault_ends_clearly_and_loses_no_job(upstream: Upstream, case: Upset) -> None:
    """Each fault ends the call with an error saying what happened and what to do (or, if transient, in success);
    the job row is listed; nothing partial passes for audio; the server serves the next call."""
    upstream.sandbox.add_fault(Fault(case.kind, times=case.times))
    prompt = f"hostile upstream {case.kind.value}"
    result = await upstream.generate(prompt)
    text = text_of(result)
    if case.transient:
        assert not result.is_error, text
        assert result.structured_content is not None
        assert result.structured_content["status"] == "COMPLETED"
    else:
        assert result.is_error, text
        for word in case.words:
            assert word in text, f"{word!r} not in {text!r}"
        assert SANDBOX_API_KEY not in text
    await assert_output_clean(upstream.output)
    assert upstream.strays() == []
    rows = [row for row in await upstream.listing() if row["prompt"] == prompt]
    assert [row["status"] for row in rows] == [case.row], rows
    if case.row == "SUBMITTING":
        assert "billed" in rows[0]["note"]
    if case.media:
        assert rows[0]["file"] is None
        retry = await upstream.client.call_tool("download_audio", {"request_id": rows[0]["request_id"]})
        assert not retry.is_error, text_of(retry)
        assert retry.structured_content is not None
        read_wav_info(Path(retry.structured_content["file"]["path"]))
    upstream.sandbox.clear_faults()
    after = await upstream.generate("a bell rings after the fault")
    assert not after.is_error, text_of(after)
    await assert_output_clean(upstream.output)


async def test_a_hanging_submit_is_listed_as_possibly_billed_and_not_resent(upstream: Upstream) -> None:
    """SUBMIT_HANG: the gateway made the job, the answer never came: one submit, an error saying it may be billed,
    and the listing keeps the row with that warning."""
    upstream.sandbox.add_fault(Fault(FaultKind.SUBMIT_HANG, times=1))
    started = time.perf_counter()
    result = await upstream.generate("a submit that hangs")
    assert result.is_error
    assert "may be billed" in text_of(result)
    assert time.perf_counter() - started < 10, "the hanging submit was not cut off by the HTTP timeout"
    stats = upstream.sandbox.stats()
    assert stats.submits == 1, "a submit that may have reached Pixazo was sent again"
    assert len(stats.jobs) == 1, "the gateway holds the (billed) job"
    (row,) = [row for row in await upstream.listing() if row["prompt"] == "a submit that hangs"]
    assert row["status"] == "SUBMITTING"
    assert row["request_id"] is None
    assert "may have been submitted and billed" in row["note"]
    unfinished = await upstream.listing("mmaudio://jobs/unfinished")
    assert [job["prompt"] for job in unfinished] == ["a submit that hangs"]


async def test_a_hanging_status_endpoint_never_holds_a_call_past_its_wait(upstream: Upstream) -> None:
    """POLL_HANG for good: generate returns when its wait is over, with the request_id and what to call next; once
    the status endpoint answers again, check_status completes the same job (no second submit)."""
    upstream.sandbox.add_fault(Fault(FaultKind.POLL_HANG))
    started = time.perf_counter()
    result = await upstream.generate("a poll that hangs", wait_seconds=2)
    assert time.perf_counter() - started < 6
    assert not result.is_error, text_of(result)
    job = result.structured_content
    assert job is not None
    assert job["status"] in ("QUEUED", "PROCESSING")
    assert "check_status" in job["next_step"]
    unfinished = await upstream.listing("mmaudio://jobs/unfinished")
    assert [row["request_id"] for row in unfinished] == [job["request_id"]]
    upstream.sandbox.clear_faults()
    with anyio.fail_after(30):
        done = await upstream.client.call_tool("check_status", {"request_id": job["request_id"], "wait_seconds": 15})
    assert done.structured_content is not None, text_of(done)
    assert done.structured_content["status"] == "COMPLETED"
    assert upstream.sandbox.stats().submits == 1


STATUS_FAULTS = [
    # A hang ends at the per-request read timeout or, when retries outlast it, at the whole status call's deadline.
    pytest.param(
        FaultKind.POLL_HANG,
        (("Could not reach Pixazo (ReadTimeout)", "did not finish answering the status request within"),),
        id="poll_hang",
    ),
    pytest.param(FaultKind.POLL_500, ("HTTP 50", "try again"), id="poll_500"),
    pytest.param(FaultKind.RATE_LIMITED, ("429", "try again"), id="rate_limited"),
    pytest.param(FaultKind.UNAUTHORIZED, ("401", "PIXAZO_API_KEY"), id="unauthorized"),
    pytest.param(FaultKind.FORBIDDEN, ("403",), id="forbidden"),
]


@pytest.mark.parametrize(("kind", "words"), STATUS_FAULTS)
async def test_a_failing_status_endpoint_makes_check_status_a_clear_error_and_keeps_the_job(
    upstream: Upstream, kind: FaultKind, words: tuple[str | tuple[str, ...], ...]
) -> None:
    """With the status endpoint failing for good after the submit, check_status ends (bounded) in an error saying
    why; the job stays listed as unfinished and completes once the endpoint recovers."""
    made = await upstream.generate("a job whose status fails", wait_seconds=0)
    assert made.structured_content is not None, text_of(made)
    request_id = made.structured_content["request_id"]
    upstream.sandbox.add_fault(Fault(kind))
    with anyio.fail_after(20):
        result = await upstream.client.call_tool("check_status", {"request_id": request_id})
    assert result.is_error, text_of(result)
    for word in words:
        alternatives = (word,) if isinstance(word, str) else word
        assert any(alternative in text_of(result) for alternative in alternatives), text_of(result)
    assert SANDBOX_API_KEY not in text_of(result)
    assert request_id in [row["request_id"] for row in await upstream.listing("mmaudio://jobs/unfinished")]
    upstream.sandbox.clear_faults()
    with anyio.fail_after(30):
        done = await upstream.client.call_tool("check_status", {"request_id": request_id, "wait_seconds": 15})
    assert done.structured_content is not None, text_of(done)
    assert done.structured_content["status"] == "COMPLETED"
    assert upstream.sandbox.stats().submits == 1
    await assert_output_clean(upstream.output)
    assert upstream.strays() == []
