"""A host-like client built on the TypeScript SDK, with its real timeout rules, against our real server.

Timings are scaled down (the sandbox runs at a few percent of real time), keeping their proportions: a request
timeout of T with progress every 2 s, and a default wait shorter than T.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from mmaudio_mcp.settings import Settings
from tests.node_tools import NODE_DIR, http_server, install_node_packages, require_npm, server_env
from tests.processes import run_to_end

PROBE = str(NODE_DIR / "progress-probe.mjs")
LONG_JOB = {"prompt": "thunderstorm over a city", "duration": 30, "num_steps": 100}  # ~4.6 s at speed 0.02


@pytest.fixture(scope="module", autouse=True)
def node_packages() -> None:
    require_npm()
    install_node_packages(NODE_DIR)


def probe(
    target: list[str], env: dict[str, str], *, timeout_ms: int, reset: bool, args: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run the probe; return its JSON events."""
    probe_env = env | {
        "TOOL_ARGS": json.dumps(args),
        "TIMEOUT_MS": str(timeout_ms),
        "RESET_ON_PROGRESS": "1" if reset else "0",
    }
    done = run_to_end(["node", PROBE, *target], probe_env, timeout=120)
    assert done.stdout, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def stdio_target(*extra: str) -> list[str]:
    return ["stdio", sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--sandbox-speed", "0.02", *extra]


def outcome(events: list[dict[str, Any]]) -> dict[str, Any]:
    return events[-1]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_typescript_host_receives_progress_and_the_finished_file(transport: str, tmp_path: Path) -> None:
    """Over stdio and streamable HTTP the TS client gets progress events and then the completed job."""
    env = server_env(tmp_path) | {"PATH": os.environ.get("PATH", "")}
    args = {"prompt": "rain on a tin roof", "duration": 8}
    if transport == "stdio":
        events = probe(stdio_target(), env, timeout_ms=60_000, reset=False, args=args)
    else:
        with http_server(tmp_path, "--sandbox-speed", "0.02") as url:
            events = probe(["http", url], env, timeout_ms=60_000, reset=False, args=args)
    progress = [event for event in events if event["event"] == "progress"]
    assert progress, events
    assert [event["progress"] for event in progress] == sorted(event["progress"] for event in progress)
    result = outcome(events)
    assert result["event"] == "result", result
    assert result["structuredContent"]["status"] == "COMPLETED"


def test_with_the_hosts_default_timeout_a_long_job_ends_in_a_usable_handle(tmp_path: Path) -> None:
    """No timeout reset on progress (as many hosts): the default wait ends the call before the host gives up,
    with a request_id to resume. Scaled: wait 2 s inside a 3.5 s request timeout, for a ~4.6 s job."""
    env = server_env(tmp_path, MMAUDIO_WAIT_SECONDS="2")
    events = probe(stdio_target(), env, timeout_ms=3_500, reset=False, args=LONG_JOB)
    result = outcome(events)
    assert result["event"] == "result", result
    job = result["structuredContent"]
    assert job["status"] in {"QUEUED", "PROCESSING"}
    assert "check_status" in job["next_step"]


def test_the_real_default_wait_fits_inside_a_60_second_host_timeout() -> None:
    """The shipped default wait (plus download time) leaves room inside the common 60 s host timeout."""
    default_wait = Settings.model_fields["wait_seconds"].default
    assert default_wait + 10 <= 60


def test_with_timeout_reset_on_progress_a_long_wait_completes_in_one_call(tmp_path: Path) -> None:
    """With resetTimeoutOnProgress a job much longer than the request timeout completes in one call, because
    progress arrives every 2 s; without the reset the same call times out (so the test can fail)."""
    args = LONG_JOB | {"wait_seconds": 60}
    with_reset = probe(stdio_target(), server_env(tmp_path / "a"), timeout_ms=3_000, reset=True, args=args)
    without = probe(stdio_target(), server_env(tmp_path / "b"), timeout_ms=3_000, reset=False, args=args)
    assert outcome(with_reset)["event"] == "result", with_reset
    assert outcome(with_reset)["structuredContent"]["status"] == "COMPLETED"
    assert outcome(without)["event"] == "error", without


def test_the_typescript_example_agent_generates_and_prints_a_file(tmp_path: Path) -> None:
    """examples/agent.mjs works as documented: against the sandbox it prints the path of a WAV."""
    examples = NODE_DIR.parent.parent / "examples"
    install_node_packages(examples)
    env = server_env(tmp_path) | {"MMAUDIO_COMMAND": f"{sys.executable} -m mmaudio_mcp"}
    done = run_to_end(["node", str(examples / "agent.mjs"), "a bell rings"], env, timeout=120)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.is_file()
    assert path.read_bytes()[:4] == b"RIFF"
    assert "elapsed" in done.stderr, "progress lines should be printed while waiting"
