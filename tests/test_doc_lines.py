"""Every shell line a user would copy from README.md and the examples' READMEs runs as written, so no doc line can
rot: in a temporary directory that stands for a checkout (its `.venv` is this test's virtualenv, `examples/` the
real one), against the sandbox gateway (`mmaudio-mcp sandbox`), with placeholders filled in as a user would.

What is not run as written, and why, is listed in NOT_RUN: each entry must still match a line, and a line that
matches no rule fails the test, so a new doc line cannot slip past.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest

from tests.processes import free_port, wait_healthy

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "examples/README.md", "examples/claude-code/README.md"]
SCRIPTS = Path(sys.executable).parent
KEY = "sandbox-key"
PLACEHOLDERS = {
    "/absolute/path/to/mmaudio-mcp/.venv/bin/mmaudio-mcp": str(SCRIPTS / "mmaudio-mcp"),
    "/absolute/path/to/.venv/bin/mmaudio-mcp": str(SCRIPTS / "mmaudio-mcp"),
    "your-pixazo-subscription-key": KEY,
    "your-key": KEY,
    "PIXAZO_API_KEY=...": f"PIXAZO_API_KEY={KEY}",
}
"""What a user replaces before running a line (the sandbox gateway's key stands for theirs)."""
INSTALL = re.compile(r"^python3 -m venv \.venv && \.venv/bin/pip install [^&]+(&& )?")
"""The install step: here `.venv` is already this test's virtualenv (installing is what .ci/run and test_wheel do)."""
NOT_RUN = {
    ".venv/bin/python -m pytest": "the test suite itself (CI runs this line)",
    "npm install": "npm and agent.mjs run in tests/test_host_ts.py",
    "node agent.mjs": "npm and agent.mjs run in tests/test_host_ts.py",
    "claude mcp add": "needs the Claude Code CLI: the server command after `--` is run with --version instead",
}


def fenced(document: str) -> list[list[str]]:
    """The commands of each sh block of a document (continuations joined, comments dropped)."""
    text = (ROOT / document).read_text(encoding="utf-8")
    groups: list[list[str]] = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        groups.append(
            [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()[:1] not in ("", "#")]
        )
    return groups


def inline(document: str) -> list[str]:
    """Commands given whole in the prose: code spans that start with `.venv/bin/` (after an optional key)."""
    text = (ROOT / document).read_text(encoding="utf-8")
    return [
        span for span in re.findall(r"`([^`\n]+)`", text) if re.match(r"(PIXAZO_API_KEY=\S+ )?\.venv/bin/\S+ ", span)
    ]


def shell_lines(document: str) -> list[str]:
    return [line for group in fenced(document) for line in group] + inline(document)


def filled(line: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    return INSTALL.sub("", line).strip() or "true"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mmaudio-mcp sandbox` on a free port: the gateway every documented line talks to."""
    port = free_port()
    home = tmp_path_factory.mktemp("gateway")
    command = [str(SCRIPTS / "mmaudio-mcp"), "sandbox", "--port", str(port), "--speed", "0.02"]
    with subprocess.Popen(
        command, env={"PATH": os.environ["PATH"], "HOME": str(home)}, stderr=subprocess.DEVNULL
    ) as process:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "the sandbox gateway did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory that stands for the user's checkout, and the game project the README's recipe uses."""
    folder = tmp_path / "mmaudio-mcp"
    folder.mkdir()
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (folder / "examples").symlink_to(ROOT / "examples")
    (folder / "my-game").mkdir()
    [toml] = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    (folder / "my-game" / "sounds.toml").write_text(toml, encoding="utf-8")
    return folder


def environment(tmp_path: Path, gateway: str) -> dict[str, str]:
    """A user's shell: a key (the sandbox's), our gateway, folders in the temp directory."""
    return {
        "PATH": os.pathsep.join([str(SCRIPTS), os.environ["PATH"]]),
        "HOME": str(tmp_path / "home"),
        "PIXAZO_API_KEY": KEY,
        "PIXAZO_GATEWAY_URL": gateway,
        "MMAUDIO_OUTPUT_DIR": str(tmp_path / "out"),
        "MMAUDIO_STATE_DIR": str(tmp_path / "state"),
    }


def blocks(document: str) -> list[list[str]]:
    """Lines grouped as a user runs them: one shell per sh block (a `cd` or `export` carries to the next line)."""
    return [[filled(line) for line in group] for group in fenced(document)] + [
        [filled(line)] for line in inline(document)
    ]


def not_run(line: str) -> str | None:
    return next((reason for start, reason in NOT_RUN.items() if start in line), None)


@pytest.mark.parametrize("document", DOCS)
def test_every_documented_shell_line_runs_as_written(
    document: str, checkout: Path, gateway: str, tmp_path: Path
) -> None:
    """Each block runs in one bash shell from the checkout: every command exits 0; a server it starts prints where
    it listens and answers /healthz; `claude mcp add` lines start the server command they register."""
    env = environment(tmp_path, gateway)
    ran = 0
    for group in blocks(document):
        runnable: list[str] = []
        for line in group:
            reason = not_run(line)
            if reason is None:
                runnable.append(line)
            elif line.startswith("claude mcp add") and " -- " in line:
                command = line.split(" -- ", 1)[1].split()
                done = subprocess.run([*command[:1], "--version"], env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, f"{document}: {line}\n{done.stderr}"
                ran += 1
        if not runnable:
            continue
        ran += len(runnable)
        if " serve " in runnable[-1]:
            assert_serves(document, runnable, env, checkout)
            continue
        script = "set -euo pipefail\n" + "\n".join(runnable)
        done = subprocess.run(
            ["bash", "-c", script], env=env, cwd=checkout, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, f"{document}:\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert ran > 0, f"{document}: no line ran"


def assert_serves(document: str, lines: list[str], env: dict[str, str], checkout: Path) -> None:
    """Start a documented `serve` line (on a free port), wait for its "serving MCP ... on URL" line, probe it, stop."""
    port = free_port()
    *setup, serve = lines
    script = "set -euo pipefail\n" + "\n".join([*setup, "exec env " + re.sub(r"--port \d+", f"--port {port}", serve)])
    with subprocess.Popen(["bash", "-c", script], env=env, cwd=checkout, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        seen: list[str] = []
        while not any("serving MCP" in line for line in seen):
            assert select.select([process.stderr], [], [], 60)[0], f"{document}: {serve}: no 'serving' line: {seen}"
            seen.append(process.stderr.readline())
            assert seen[-1], f"{document}: {serve} exited: {seen}"
        wait_healthy(process, f"http://127.0.0.1:{port}")
        process.terminate()
        process.wait(timeout=30)


def test_every_line_is_run_or_has_a_reason_and_every_reason_is_used() -> None:
    """The NOT_RUN list stays honest: each of its entries still matches some documented line."""
    lines = [line for document in DOCS for line in shell_lines(document)]
    assert shutil.which("bash")
    for start in NOT_RUN:
        assert any(start in line for line in lines), f"NOT_RUN lists {start!r}, which no doc line has any more"
