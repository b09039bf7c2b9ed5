"""Interoperability with MCP clients this project did not write, over every transport.

Clients: the TypeScript SDK client (tests/node/interop.mjs; the base of Claude Desktop, VS Code and Cursor) and
FastMCP's Python client in both its modes ("auto" negotiates 2026-07-28 where it can, "legacy" does the initialize
handshake), installed into a virtualenv of its own (its pins are not ours). Transports: stdio, SSE and streamable
HTTP, the HTTP ones with the bearer token. Each client runs the same scenario: list the tools, generate a 30 s clip
with progress, read every resource its result and a conversion's result link to, render both prompts, cancel a
call under way and see the server answer the next one.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import venv
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.node_tools import NODE_DIR, install_node_packages, require_npm
from tests.processes import free_port, server_env, wait_healthy

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

FASTMCP = "fastmcp==4.1.6"
SCENARIO = Path(__file__).parent / "interop" / "fastmcp_scenario.py"
TOKEN = "interop-token-5f1d"
SPEED = "0.02"
"""Sandbox jobs at 2% of real time: the 30 s clip takes about 1.2 s."""
CLIENTS = ("typescript", "fastmcp-auto", "fastmcp-legacy")
TRANSPORTS = ("stdio", "sse", "streamable-http")


@pytest.fixture(scope="session")
def fastmcp_python() -> Path:
    """A virtualenv with FastMCP, made once per machine (kept in the temp folder, keyed by the pinned version)."""
    home = Path(tempfile.gettempdir()) / f"mmaudio-interop-{FASTMCP.replace('==', '-')}"
    python = home / "bin" / "python"
    if not (home / "ready").exists():
        venv.create(home, with_pip=True, clear=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", FASTMCP]
        subprocess.run(pip, check=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
        (home / "ready").touch()
    return python


@pytest.fixture(scope="session")
def node_packages() -> None:
    require_npm()
    install_node_packages(NODE_DIR)


@contextmanager
def served(transport: str, home: Path) -> Iterator[list[str]]:
    """The target a client connects to: for stdio the command it starts, else the URL of a running server."""
    serve = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--sandbox-speed", SPEED]
    if transport == "stdio":
        yield ["stdio", *serve]
        return
    port = free_port()
    command = [*serve, "--transport", transport, "--port", str(port)]
    env = server_env(home, MMAUDIO_HTTP_TOKEN=TOKEN)
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}")
        path = "sse" if transport == "sse" else "mcp"
        yield ["http" if transport == "streamable-http" else "sse", f"http://127.0.0.1:{port}/{path}"]
    finally:
        process.terminate()
        process.wait(timeout=15)


def run_client(client: str, target: list[str], home: Path, fastmcp_python: Path) -> dict[str, Any]:
    """Run one client's scenario; return its report."""
    env = server_env(home, MCP_TOKEN=TOKEN) | {"PATH": os.environ.get("PATH", "")}
    if client == "typescript":
        command = ["node", str(NODE_DIR / "interop.mjs"), *target]
    else:
        command = [str(fastmcp_python), str(SCENARIO), client.removeprefix("fastmcp-"), *target]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"{client} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("client", CLIENTS)
def test_a_client_we_did_not_write_does_everything(
    client: str, transport: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fastmcp_python = Path()
    if client == "typescript":
        request.getfixturevalue("node_packages")
    else:
        fastmcp_python = request.getfixturevalue("fastmcp_python")
    with served(transport, tmp_path) as target:
        report = run_client(client, target, tmp_path, fastmcp_python)

    assert report["tools"] == ["check_status", "download_audio", "generate_audio"]
    job = report["job"]
    assert (job["status"], job["file"]["duration_seconds"]) == ("COMPLETED", 30.0)
    progress = report["progress"]
    assert progress, "no progress reached the client"
    assert all(later > earlier for earlier, later in itertools.pairwise(progress)), progress  # the spec: MUST increase
    uris = [read["uri"] for read in report["reads"]]
    preview, variant = f"audio://{job['request_id']}/preview.ogg", f"audio://{job['request_id']}/ogg-n16-loop.ogg"
    assert uris == [preview, variant, preview], uris  # the 30 s WAV is too large to link; the OGG variant is not
    for read in report["reads"]:  # every link readable in one message, and exactly what it said
        assert (read["mime"], read["bytes"]) == (read["link_mime"], read["link_size"]), read
    assert report["prompts"] == {"sound_effect": 1, "ambience": 1}
    assert report["cancelled"] is True
    assert report["after_cancel"]["status"] == "COMPLETED"
    print(f"{client} x {transport}: protocol {report['protocol_version']}, {len(progress)} progress, ok")
