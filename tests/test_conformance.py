"""The official MCP conformance suite against our server (streamable HTTP, and stdio through a bridge), with exact
expected-failure lists: a scenario that starts failing, or a listed one that starts passing, breaks the build."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from tests.node_tools import ROOT, free_port, http_server, require_npm, server_env

if TYPE_CHECKING:
    from pathlib import Path

SUITE = "@modelcontextprotocol/conformance@0.1.16"
BRIDGE = "supergateway@4.0.0"
BASELINE = ROOT / "tests" / "conformance-baseline.yml"
BASELINE_STDIO = ROOT / "tests" / "conformance-baseline-stdio.yml"


def run_suite(url: str, baseline: Path, results: Path) -> subprocess.CompletedProcess[str]:
    command = f"conformance server --url {url} -o {results} --expected-failures {baseline}"
    return subprocess.run(
        ["npx", "-y", "-p", "node@22", "-p", SUITE, "-c", command],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def failed_checks(results: Path) -> str:
    return "\n".join(
        f"{path.parent.name}: {check.get('id')} {check.get('errorMessage')}"
        for path in results.rglob("checks.json")
        for check in json.loads(path.read_text())
        if check.get("status") == "FAILURE"
    )


def wait_for_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, "the bridge did not start"
        time.sleep(0.2)


def test_the_conformance_suite_passes_except_for_the_listed_fixture_scenarios(tmp_path: Path) -> None:
    """Over streamable HTTP every scenario passes but those listed (with reasons) in the baseline."""
    require_npm()
    with http_server(tmp_path) as url:
        done = run_suite(url, BASELINE, tmp_path / "results")
    assert done.returncode == 0, done.stdout[-3000:] + "\n" + failed_checks(tmp_path / "results")
    assert "Baseline check passed" in done.stdout


def test_the_stdio_entry_point_passes_the_suite_through_a_bridge(tmp_path: Path) -> None:
    """`mmaudio-mcp` over stdio, bridged to HTTP by supergateway, passes the same scenarios; DNS-rebinding
    protection is the bridge's job there, so the stdio baseline adds that one scenario."""
    require_npm()
    port = free_port()
    stdio_command = f"{sys.executable} -m mmaudio_mcp serve --sandbox"
    bridge_args = ["--stdio", stdio_command, "--outputTransport", "streamableHttp", "--stateful", "--port", str(port)]
    bridge = subprocess.Popen(
        ["npx", "-y", BRIDGE, *bridge_args, "--logLevel", "none"],
        env=server_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the bridge starts one server per session: stop them all together
    )
    try:
        wait_for_port(port)
        done = run_suite(f"http://127.0.0.1:{port}/mcp", BASELINE_STDIO, tmp_path / "results")
    finally:
        os.killpg(bridge.pid, signal.SIGTERM)
        bridge.wait(timeout=30)
    assert done.returncode == 0, done.stdout[-3000:] + "\n" + failed_checks(tmp_path / "results")
