"""Run the ecosystem's Node tools (the official conformance suite, the TypeScript SDK) against our real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.processes import free_port, server_env, wait_healthy

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


def require_npm() -> None:
    """Skip where Node is missing on a developer machine; in CI a missing Node is a failure, not a skip."""
    if shutil.which("npm") and shutil.which("node"):
        return
    if os.environ.get("CI"):
        pytest.fail("CI needs Node.js and npm for the ecosystem checks")
    pytest.skip("Node.js/npm not installed")


def install_node_packages(folder: Path) -> None:
    """`npm install` once per folder (its package.json pins the SDK version)."""
    if (folder / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        return
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder)],
        check=True,
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@contextmanager
def http_server(home: Path, *args: str, **env: str) -> Iterator[str]:
    """`mmaudio-mcp serve --sandbox --transport streamable-http` in a subprocess; yield its MCP URL."""
    port = free_port()
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--transport", "streamable-http"]
    command += ["--port", str(port), *args]
    process = subprocess.Popen(command, env=server_env(home, **env), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=15)
