"""Helpers for tests that run `mmaudio-mcp` as a real process and speak raw JSON-RPC to it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
from anyio.streams.text import TextReceiveStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import Process

PROTOCOL_VERSION = "2025-11-25"


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that must know their URL before they start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The few variables a host passes, plus ours; nothing inherited by accident."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home")}
    env |= {"MMAUDIO_OUTPUT_DIR": str(tmp_path / "out"), "MMAUDIO_STATE_DIR": str(tmp_path / "state")}
    return env | extra


def run_to_end(
    argv: list[str], env: dict[str, str], *, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with no stdin until it exits (or `timeout` s), capturing its text output; never checks its code."""
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False, cwd=cwd
    )


def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m mmaudio_mcp *args` as a person would, in `server_env(tmp_path)` plus `env`."""
    return run_to_end([sys.executable, "-m", "mmaudio_mcp", *args], server_env(tmp_path) | (env or {}), cwd=cwd)


def wait_healthy(process: subprocess.Popen[Any], url: str, *, within: float = 30.0) -> None:
    """Block until `url`/healthz answers 200; fail with the server's stderr if it exits first, or after `within` s."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        assert process.poll() is None, process.stderr.read() if process.stderr else f"the server exited: {url}"
        assert time.monotonic() < deadline, f"the server did not answer {url}/healthz within {within} s"
        time.sleep(0.1)


async def until_healthy(process: Process, url: str, *, within: float = 30.0) -> None:
    """Wait until `url`/healthz answers 200; fail if the server exits first, or after `within` s."""
    async with httpx2.AsyncClient(timeout=2) as http:
        with anyio.fail_after(within):
            while process.returncode is None:
                with contextlib.suppress(httpx2.TransportError):
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        return
                await anyio.sleep(0.05)
    raise AssertionError(f"the server exited with {process.returncode} before it was healthy")


class RawSession:
    """Speak newline-delimited JSON-RPC to the process and keep every byte it writes."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.stdout_lines: list[str] = []
        self._buffer = ""
        self._next_id = 0

    async def send(self, method: str, params: dict[str, Any] | None = None, *, notify: bool = False) -> int:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            self._next_id += 1
            message["id"] = self._next_id
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(message) + "\n").encode())
        return self._next_id

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Yield each JSON-RPC message the server writes, keeping every stdout line."""
        assert self.process.stdout is not None
        async for chunk in TextReceiveStream(self.process.stdout):
            self._buffer += chunk
            while "\n" in self._buffer:
                line, self._buffer = self._buffer.split("\n", 1)
                self.stdout_lines.append(line)
                yield json.loads(line)
        raise AssertionError("the server closed stdout")

    async def until_response(self, request_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read messages until the response to request_id; return it and the notifications seen meanwhile."""
        notes: list[dict[str, Any]] = []
        async for message in self.messages():
            if message.get("id") == request_id:
                return message, notes
            notes.append(message)
        raise AssertionError("unreachable")

    async def until_progress(self) -> dict[str, Any]:
        """Read messages until the first progress notification."""
        async for message in self.messages():
            if message.get("method") == "notifications/progress":
                return message
        raise AssertionError("unreachable")

    async def handshake(self) -> None:
        """Initialize the session the way a 2025-11-25 host does."""
        client_info = {"name": "test", "version": "1"}
        init = await self.send(
            "initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": client_info}
        )
        await self.until_response(init)
        await self.send("notifications/initialized", notify=True)
