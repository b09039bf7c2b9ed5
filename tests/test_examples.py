"""The client configs in examples/ work: they launch our real command with settings the server reads, their HTTP
entries reach /mcp with a bearer token, and examples/agent.py generates a file, all against the sandbox."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import AliasChoices

from mmaudio_mcp.server import build_server
from mmaudio_mcp.settings import Settings
from mmaudio_mcp.transport import Exposure, Transport, http_app, serve_on_loopback
from tests.conftest import POLICY
from tests.processes import server_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HOSTS = {
    "claude-desktop/claude_desktop_config.json": "claude-desktop",
    "claude-code/.mcp.json": "claude-code",
    "vscode/.vscode/mcp.json": "vscode",
    "cursor/.cursor/mcp.json": "cursor",
}
CONFIGS = sorted(HOSTS)
TOOLS = {"generate_audio", "check_status", "download_audio"}
KEY = "key-the-user-typed"
TOKEN = "token-the-user-typed"
INSTALLED = "/absolute/path/to/mmaudio-mcp/.venv/bin/mmaudio-mcp"
"""The placeholder for the installed command (a checkout's virtualenv): the package is not on PyPI yet."""
SCRIPT = Path(sys.executable).parent / ("mmaudio-mcp.exe" if os.name == "nt" else "mmaudio-mcp")
PLACEHOLDERS = {"your-pixazo-subscription-key": KEY, "your-mmaudio-http-token": TOKEN, INSTALLED: str(SCRIPT)}
"""Literal placeholders in a file (Claude Desktop has no variables), replaced as the user would replace them."""
HTTP_URL = "http://127.0.0.1:8000/mcp"


def setting_names() -> set[str]:
    """The environment variable names the settings declare (their upper-case validation aliases)."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names |= {choice for choice in choices if isinstance(choice, str) and choice.isupper()}
    return names


def load(config: str) -> dict[str, Any]:
    """Parse a config file as strict JSON (no comments, no trailing commas)."""
    return json.loads((EXAMPLES / config).read_text(encoding="utf-8"))


def servers(config: str) -> dict[str, dict[str, Any]]:
    data = load(config)
    return data["servers"] if HOSTS[config] == "vscode" else data["mcpServers"]


def is_bridge(entry: dict[str, Any]) -> bool:
    """A stdio entry that runs the mcp-remote bridge to an HTTP server (Claude Desktop's way to reach one)."""
    return Path(entry.get("command", "")).name == "npx" and "mcp-remote" in entry.get("args", [])


def stdio_entries(config: str) -> dict[str, dict[str, Any]]:
    return {name: e for name, e in servers(config).items() if "url" not in e and not is_bridge(e)}


def http_entries(config: str) -> dict[str, dict[str, Any]]:
    return {name: e for name, e in servers(config).items() if "url" in e or is_bridge(e)}


def our_arguments(entry: dict[str, Any]) -> list[str]:
    """The arguments given to `mmaudio-mcp` itself: the command is the installed script, by its absolute path.

    A bare `uvx mmaudio-mcp` / `pipx run mmaudio-mcp` would fetch the package from PyPI, where it is not published.
    """
    command, args = entry["command"], list(entry.get("args", []))
    assert command == INSTALLED, f"not the installed command's absolute path: {command} {args}"
    return args


def expander(config: str, tmp_path: Path, entry_env: dict[str, str]) -> Callable[[str], str]:
    """Expand a value the way this file's host does (only its own syntax), with the user's environment."""
    host = HOSTS[config]
    user_env = {"PIXAZO_API_KEY": KEY, "MMAUDIO_HTTP_TOKEN": TOKEN, "HOME": str(tmp_path / "home")}
    workspace = str(tmp_path / "workspace")

    def expand(value: str) -> str:
        if host == "claude-code":  # ${VAR} and ${VAR:-default}
            value = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: user_env.get(m[1], m[2] or m[0]), value)
        elif host in ("vscode", "cursor"):
            inputs = {"pixazo-api-key": KEY, "mmaudio-http-token": TOKEN} if host == "vscode" else {}
            value = re.sub(r"\$\{input:([\w-]+)\}", lambda m: inputs[m[1]], value)
            value = re.sub(r"\$\{env:(\w+)\}", lambda m: user_env[m[1]], value)
            value = value.replace("${workspaceFolder}", workspace).replace("${userHome}", user_env["HOME"])
        else:  # Claude Desktop expands nothing; the mcp-remote bridge expands ${VAR} from its own env
            value = re.sub(r"\$\{(\w+)\}", lambda m: entry_env.get(m[1], m[0]), value)
        assert "${" not in value, f"{config}: {value!r} uses a variable {host} does not expand"
        for placeholder, typed in PLACEHOLDERS.items():
            value = value.replace(placeholder, typed)
        return value

    return expand


@pytest.fixture
async def guarded(settings: Settings, transport: httpx2.ASGITransport) -> AsyncIterator[str]:
    """A streamable-HTTP server on a loopback port that requires `Authorization: Bearer TOKEN`."""
    server = build_server(
        settings.model_copy(update={"transport": "streamable-http"}), http_transport=transport, policy=POLICY
    )
    app = http_app(server, Transport.STREAMABLE_HTTP, Exposure(token=TOKEN))
    async with serve_on_loopback(app) as url:
        yield url


def test_there_is_one_strict_json_config_per_host_with_a_stdio_and_an_http_server() -> None:
    """Each host's file parses as strict JSON and holds `mmaudio` (stdio) and `mmaudio-http` (HTTP)."""
    folders = {Path(config).parts[0] for config in HOSTS}
    found = {str(p.relative_to(EXAMPLES)) for folder in folders for p in (EXAMPLES / folder).rglob("*.json")}
    assert found == set(HOSTS)
    for config in CONFIGS:
        assert set(stdio_entries(config)) == {"mmaudio"}, config
        assert set(http_entries(config)) == {"mmaudio-http"}, config


@pytest.mark.parametrize("config", CONFIGS)
def test_each_stdio_entry_launches_our_real_command_with_settings_the_server_reads(config: str) -> None:
    """The command is `mmaudio-mcp` (directly or `uvx mmaudio-mcp`), and every env name is a real setting."""
    known = setting_names()
    for name, entry in stdio_entries(config).items():
        assert entry.get("type", "stdio") == "stdio", name
        our_arguments(entry)
        env = entry.get("env", {})
        assert "PIXAZO_API_KEY" in env, f"{config}: hosts pass no shell variables; the key must be in env"
        assert set(env) <= known, f"{config}: the settings do not read {sorted(set(env) - known)}"
        assert all(isinstance(value, str) for value in env.values()), config


@pytest.mark.parametrize("config", CONFIGS)
def test_each_http_entry_targets_mcp_with_an_authorization_bearer_header(config: str, tmp_path: Path) -> None:
    """The HTTP entries point at 127.0.0.1:8000/mcp and send `Authorization: Bearer <token>` in the host's syntax."""
    for entry in http_entries(config).values():
        url, headers = http_target(config, entry, tmp_path)
        assert url == HTTP_URL
        assert headers == {"Authorization": f"Bearer {TOKEN}"}


def http_target(config: str, entry: dict[str, Any], tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Where an HTTP entry connects and the headers it sends, once the host (or the bridge) expanded them."""
    expand = expander(config, tmp_path, entry.get("env", {}))
    if not is_bridge(entry):
        assert entry.get("type", "http") == "http", config
        return expand(entry["url"]), {name: expand(value) for name, value in entry.get("headers", {}).items()}
    args = entry["args"]
    url = args[args.index("mcp-remote") + 1]
    raw = args[args.index("--header") + 1]
    assert " " not in raw, "Claude Desktop on Windows and Cursor split args at spaces: keep them in the env value"
    name, value = expand(raw).split(":", 1)
    return url, {name: value.strip()}


def test_vscode_prompts_for_the_key_as_a_password_and_writes_into_the_workspace() -> None:
    """VS Code: `type: stdio`, the key from a promptString password input, audio saved in the workspace."""
    config = load("vscode/.vscode/mcp.json")
    inputs = {item["id"]: item for item in config["inputs"]}
    assert all(item["type"] == "promptString" and item["password"] is True for item in inputs.values())
    entry = config["servers"]["mmaudio"]
    assert entry["type"] == "stdio"
    assert re.fullmatch(r"\$\{input:([\w-]+)\}", entry["env"]["PIXAZO_API_KEY"])[1] in inputs
    assert entry["env"]["MMAUDIO_OUTPUT_DIR"].startswith("${workspaceFolder}")
    used = re.findall(r"\$\{input:([\w-]+)\}", json.dumps(config["servers"]))
    assert set(used) == set(inputs), "every input is used, and every used input is declared"


@pytest.mark.parametrize("config", CONFIGS)
async def test_each_stdio_entry_starts_the_server_with_its_env_and_lists_the_tools(config: str, tmp_path: Path) -> None:
    """The entry's args and env, expanded as its host would, start the server (`--sandbox`) and tools/list answers."""
    [entry] = stdio_entries(config).values()
    expand = expander(config, tmp_path, {})
    env = server_env(tmp_path) | {name: expand(value) for name, value in entry.get("env", {}).items()}
    for folder in ("MMAUDIO_OUTPUT_DIR", "MMAUDIO_STATE_DIR"):  # keep folders outside tmp_path out of the test
        if not Path(env[folder]).is_relative_to(tmp_path):
            env[folder] = str(tmp_path / folder.lower())
    args = [*(expand(arg) for arg in our_arguments(entry)), "--sandbox"]
    command = expand(entry["command"])  # started as written, the placeholder filled in as the user would
    assert Path(command).is_file(), f"{config}: {command} is not the installed command"
    params = StdioServerParameters(command=command, args=args, env=env, cwd=tmp_path)
    async with Client(params) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS


@pytest.mark.parametrize("config", CONFIGS)
async def test_each_http_entry_connects_to_a_token_protected_server(config: str, guarded: str, tmp_path: Path) -> None:
    """With the URL's port moved to a test server, the entry's headers get through the bearer check to tools/list."""
    [entry] = http_entries(config).values()
    url, headers = http_target(config, entry, tmp_path)
    url = url.replace(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}", guarded)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS


def test_the_agent_example_generates_a_wav_and_prints_its_path(tmp_path: Path) -> None:
    """examples/agent.py runs offline on the sandbox, prints progress, and its last line is an existing WAV."""
    scripts = Path(sys.executable).parent  # where `mmaudio-mcp` was installed with this interpreter
    env = server_env(tmp_path, PATH=os.pathsep.join([str(scripts), os.environ.get("PATH", "")]))
    (tmp_path / "home").mkdir()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent.py"), "glass shattering on tiles"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    path = Path(lines[-1])
    assert path.is_file() and path.is_relative_to(tmp_path / "out"), done.stdout
    assert path.read_bytes()[:4] == b"RIFF"
    assert any(" s " in line for line in lines[1:-1]), f"no progress line printed:\n{done.stdout}"


def test_the_agent_example_is_short_and_passes_on_only_real_settings() -> None:
    """agent.py stays readable as documentation (at most 60 lines) and forwards only variables the server reads."""
    source = EXAMPLES / "agent.py"
    assert len(source.read_text(encoding="utf-8").splitlines()) <= 60
    spec = importlib.util.spec_from_file_location("mmaudio_agent_example", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.SETTINGS) <= setting_names()


PYPI_FORMS = re.compile(r'uvx mmaudio-mcp|pipx run mmaudio-mcp|"uvx", "args": \["mmaudio-mcp')
"""Commands that fetch the package from PyPI, where it is not published yet."""


def test_no_doc_or_config_relies_on_the_unpublished_pypi_package() -> None:
    """`uvx mmaudio-mcp` / `pipx run mmaudio-mcp` appear only in a sentence that says "once published"."""
    documents = [ROOT / "README.md", *EXAMPLES.rglob("*.md"), *EXAMPLES.rglob("*.json")]
    for document in documents:
        if "node_modules" in document.parts:
            continue
        text = document.read_text(encoding="utf-8")
        for match in PYPI_FORMS.finditer(text):
            before = text[max(0, match.start() - 80) : match.start()].lower()
            assert "once published" in before, f"{document.name}: {text[match.start() - 40 : match.end() + 20]!r}"


def test_the_agent_example_outside_the_virtualenv_says_how_to_run_it(tmp_path: Path) -> None:
    """With a Python that lacks the MCP SDK (here: site-packages switched off), agent.py stops with one line naming
    the missing package and the command to use, not a ModuleNotFoundError traceback."""
    done = subprocess.run(
        [sys.executable, "-S", str(EXAMPLES / "agent.py"), "a bell"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(".venv/bin/python examples/agent.py")
