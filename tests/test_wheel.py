"""A wheel built from a clean checkout ships every package file, installs into an empty virtualenv, and serves MCP
over stdio from there (the sandbox included), so a file missing from git or from the wheel cannot ship.

Building needs the build backend and installing needs the dependencies from the package index (pip's cache makes
repeat runs quick), hence the long timeouts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.processes import server_env

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"generate_audio", "check_status", "download_audio"}
BUILD_TIMEOUT = 280


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, show what it printed."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}  # nothing from this checkout
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean checkout of HEAD: only what is committed, nothing ignored or left lying around."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of the project")
    target = tmp_path_factory.mktemp("checkout") / "mmaudio-mcp"
    run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(target)])
    return target


@pytest.fixture(scope="module")
def wheel(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `python -m build --wheel` makes from the clean checkout."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(checkout)])
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, empty virtualenv with nothing but the wheel (and its dependencies) installed."""
    target = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", str(target)])
    python = target / ("Scripts" if os.name == "nt" else "bin") / "python"
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)])
    return target


@pytest.mark.timeout(300)
def test_the_wheel_ships_every_committed_package_file_and_the_console_script(checkout: Path, wheel: Path) -> None:
    """Every file git tracks under mmaudio_mcp/ is in the wheel, with the `mmaudio-mcp` script and the right version."""
    project = tomllib.loads((checkout / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tracked = run(["git", "-C", str(checkout), "ls-files", "mmaudio_mcp"]).stdout.split()
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
        scripts = archive.read(entry_points).decode()
    assert tracked and "mmaudio_mcp/__init__.py" in tracked
    assert sorted(set(tracked) - names) == [], "committed package files missing from the wheel"
    assert f"Name: {project['name']}" in headers
    assert f"Version: {project['version']}" in headers
    assert "mmaudio-mcp = mmaudio_mcp.cli:main" in scripts


@pytest.mark.timeout(300)
async def test_the_wheel_installs_into_an_empty_virtualenv_and_serves_over_stdio(venv: Path, tmp_path: Path) -> None:
    """`<venv>/bin/mmaudio-mcp serve --sandbox`, installed from the wheel alone, lists 3 tools and writes a WAV."""
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    located = run([str(bindir / "python"), "-c", "import mmaudio_mcp; print(mmaudio_mcp.__file__)"], cwd=tmp_path)
    assert Path(located.stdout.strip()).is_relative_to(venv), "the package must come from the virtualenv"
    command = str(bindir / "mmaudio-mcp")
    params = StdioServerParameters(
        command=command, args=["serve", "--sandbox", "--sandbox-speed", "0.05"], env=server_env(tmp_path), cwd=tmp_path
    )
    async with Client(params) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
        result = await client.call_tool("generate_audio", {"prompt": "a bell rings twice", "duration": 2})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    path = Path(result.structured_content["file"]["path"])
    assert path.is_relative_to(tmp_path / "out")
    assert path.read_bytes()[:4] == b"RIFF"


@pytest.mark.timeout(300)
def test_pipx_runs_the_server_straight_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """`pipx run --spec <wheel> mmaudio-mcp`, as the README documents, starts the real command."""
    if shutil.which("pipx") is None and not (Path(sys.executable).parent / "pipx").exists():
        pytest.fail("pipx is part of the test extra")
    pipx = shutil.which("pipx") or str(Path(sys.executable).parent / "pipx")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env |= {"PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    done = subprocess.run(
        [pipx, "run", "--spec", str(wheel), "mmaudio-mcp", "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mmaudio-mcp {version}"
