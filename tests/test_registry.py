"""server.json for the MCP Registry: valid against the vendored 2025-12-11 schema, and true to the package.

The schema misses most of what the registry rejects or what would mislead a host, so the rest is checked here:
versions (pyproject's, never a range), the PyPI identifier and its console script, the transports, the URL template
variables, the `mcp-name:` line in the README, and environment variables equal to what the settings read. Each
package is also launched the way its entry describes it, against the sandbox.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import anyio
import httpx2
from jsonschema import Draft7Validator, FormatChecker
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import AliasChoices, SecretStr

import mmaudio_mcp
from mmaudio_mcp.server import CLIENT_KEY_HEADER
from mmaudio_mcp.settings import Settings
from tests.processes import free_port, server_env, until_healthy

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_JSON = ROOT / "server.json"
SCHEMA_FILE = ROOT / "tests" / "data" / "server.schema.2025-12-11.json"
SCHEMA_SHA256 = "3fba09590c99f61735d234822279f4223fab9e300c0a81e81c91ab62a4114de0"
SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
SERVER_NAME = "io.github.mmaudio-mcp/mmaudio-mcp"
TOOLS = {"generate_audio", "check_status", "download_audio"}

HTTP_ONLY = {
    "MMAUDIO_TRANSPORT",
    "MMAUDIO_HOST",
    "MMAUDIO_PORT",
    "MMAUDIO_HTTP_TOKEN",
    "MMAUDIO_PUBLIC_URL",
    "MMAUDIO_ALLOWED_HOSTS",
    "MMAUDIO_STATELESS",
    "MMAUDIO_DATABASE_URL",
    "MMAUDIO_STORAGE_URL",
    "MMAUDIO_PRESIGN_SECONDS",
    "MMAUDIO_REQUEST_STATE_KEY",
}
"""Settings that mean something only to the HTTP transports (replicas among them): the stdio package leaves them
out."""
REQUIRED = {"stdio": {"PIXAZO_API_KEY"}, "streamable-http": set[str]()}
"""Settings without which no generation can succeed (the server still starts: test_stdio shows the error). Over
HTTP each client may bring its own key in a header instead, so the server's key is optional there."""

# The registry's own range detection (internal/validators/validators.go), ported.
_V = r"v?\d+(?:\.\d+){0,3}(?:-[0-9A-Za-z.-]+)?"
RANGE_PATTERNS = (
    re.compile(rf"^\s*(?:\^|~|>=|<=|>|<|=)\s*{_V}\s*$"),
    re.compile(rf"^\s*{_V}\s-\s*{_V}\s*$"),
    re.compile(rf"^\s*(?:{_V}\s*)(?:\|\|\s*{_V}\s*)+$"),
)
DOTTED_WILDCARD = re.compile(r"^\s*(?:v?\d+|x|X|\*)(?:\.(?:\d+|x|X|\*)){1,2}(?:-[0-9A-Za-z.-]+)?\s*$")
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.-]*[a-zA-Z0-9]/[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]$")
GITHUB_URL_RE = re.compile(r"^https?://(www\.)?github\.com/[\w.-]+/[\w.-]+/?$")


def server() -> dict[str, Any]:
    return json.loads(SERVER_JSON.read_text(encoding="utf-8"))


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def setting_fields() -> dict[str, str]:
    """Environment variable name -> Settings field, from the aliases the settings declare."""
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        env_names = [choice for choice in choices if isinstance(choice, str) and choice.isupper()]
        assert len(env_names) == 1, f"{field_name} should have one environment variable name, got {env_names}"
        names[env_names[0]] = field_name
    return names


def looks_like_a_range(version: str) -> bool:
    """The registry's check: comparator, hyphen and OR ranges, and x/X/* wildcards in a dotted version."""
    if any(pattern.match(version) for pattern in RANGE_PATTERNS):
        return True
    return bool(DOTTED_WILDCARD.match(version)) and any(c in version for c in "xX*")


def package(transport: str) -> dict[str, Any]:
    [found] = [p for p in server()["packages"] if p["transport"]["type"] == transport]
    return found


def template_variables(text: str) -> list[str]:
    return re.findall(r"\{([^}]+)\}", text)


def package_env(entry: dict[str, Any], tmp_path: Path, **chosen: str) -> dict[str, str]:
    """What a registry client would pass: fixed values, defaults, the user's choices, and our temp folders."""
    env = server_env(tmp_path)
    for variable in entry["environmentVariables"]:
        value = variable.get("value", variable.get("default"))
        if value is not None:
            env[variable["name"]] = value
    return env | chosen | {"MMAUDIO_OUTPUT_DIR": str(tmp_path / "out"), "MMAUDIO_STATE_DIR": str(tmp_path / "state")}


def test_the_vendored_schema_is_the_pinned_2025_12_11_registry_schema() -> None:
    """The offline schema file is byte-identical to the published 2025-12-11 one, and server.json names it."""
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$id"] == SCHEMA_URL
    assert server()["$schema"] == schema["$id"]


def test_server_json_is_valid_against_the_registry_schema_formats_included() -> None:
    """server.json has no schema errors, with `format: uri` really checked (not silently skipped)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    checker = FormatChecker()
    assert not checker.conforms("not a uri", "uri"), "install jsonschema[format-nongpl] so URI formats are checked"
    errors = sorted(Draft7Validator(schema, format_checker=checker).iter_errors(server()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_every_version_is_pyprojects_exact_version_never_a_range() -> None:
    """server.json and each package carry pyproject's version (also the code's), never `latest` or a range."""
    version = pyproject()["project"]["version"]
    assert mmaudio_mcp.__version__ == version
    versions = [server()["version"], *(p["version"] for p in server()["packages"])]
    assert versions == [version] * len(versions)
    for candidate in (version, "^0.1.0", "~0.1.0", ">=0.1.0", "0.x", "0.1.*", "0.1 - 0.2", "0.1 || 0.2"):
        assert looks_like_a_range(candidate) is (candidate != version), candidate
    assert version != "latest"


def test_packages_are_the_pypi_project_run_by_uvx_through_its_console_script() -> None:
    """Each package is the PyPI project by name; `uvx mmaudio-mcp` works because the script has that name."""
    project = pyproject()["project"]
    for entry in server()["packages"]:
        assert entry["registryType"] == "pypi"
        assert entry["registryBaseUrl"] == "https://pypi.org"
        assert entry["identifier"] == project["name"]
        assert " " not in entry["identifier"]
        assert entry["runtimeHint"] == "uvx"
        assert entry["identifier"] in project["scripts"]


def test_there_is_a_stdio_package_and_a_streamable_http_package_at_mcp() -> None:
    """One package runs over stdio (no URL); one serves streamable HTTP at /mcp with a URL the registry accepts."""
    assert {p["transport"]["type"] for p in server()["packages"]} == {"stdio", "streamable-http"}
    assert "url" not in package("stdio")["transport"]
    http = package("streamable-http")
    url = http["transport"]["url"]
    known = {v["name"] for v in http["environmentVariables"]}
    for argument in http.get("packageArguments", []) + http.get("runtimeArguments", []):
        known |= {argument.get("name"), argument.get("valueHint")} - {None}
    assert set(template_variables(url)) <= known, "URL template variables must name the package's inputs"
    concrete = urlsplit(re.sub(r"\{[^}]+\}", "8080", url))
    assert (concrete.scheme, concrete.hostname, concrete.path) == ("http", "127.0.0.1", "/mcp")
    assert {v["name"]: v.get("value") for v in http["environmentVariables"]}["MMAUDIO_TRANSPORT"] == "streamable-http"


def test_the_http_package_declares_the_headers_the_server_reads() -> None:
    """The HTTP package names its two secret headers: the bearer token and a client's own Pixazo key."""
    headers = {h["name"].lower(): h for h in package("streamable-http")["transport"]["headers"]}
    assert set(headers) == {"authorization", CLIENT_KEY_HEADER.lower()}
    assert all(h["isSecret"] is True and h.get("isRequired", False) is False for h in headers.values())
    bearer = headers["authorization"]
    assert bearer["value"].startswith("Bearer {")
    assert set(template_variables(bearer["value"])) == set(bearer["variables"])


def test_environment_variables_are_exactly_what_the_settings_read() -> None:
    """Names, isSecret, isRequired, defaults, formats and choices all agree with mmaudio_mcp.settings."""
    fields = setting_fields()
    assert set(fields) >= HTTP_ONLY.union(*REQUIRED.values())
    stdio = {v["name"] for v in package("stdio")["environmentVariables"]}
    http = {v["name"] for v in package("streamable-http")["environmentVariables"]}
    assert stdio == set(fields) - HTTP_ONLY
    assert http == set(fields)
    for entry in server()["packages"]:
        names = [v["name"] for v in entry["environmentVariables"]]
        assert len(names) == len(set(names)), f"duplicate variables in {entry['transport']['type']} package"
        required = REQUIRED[entry["transport"]["type"]]
        for variable in entry["environmentVariables"]:
            check_variable(variable, fields[variable["name"]], required)


def check_variable(variable: dict[str, Any], field_name: str, required: set[str]) -> None:
    name = variable["name"]
    field = Settings.model_fields[field_name]
    annotation = field.annotation
    assert variable.get("description"), name
    assert variable.get("isSecret", False) is (SecretStr in (annotation, *get_args(annotation))), name
    assert variable.get("isRequired", False) is (name in required), name
    if name in required:
        assert field.default is None and "default" not in variable, name
    formats = {Path: "filepath", int: "number", float: "number", bool: "boolean"}
    assert variable.get("format", "string") == formats.get(annotation, "string"), name
    if get_origin(annotation) is Literal:
        assert set(variable.get("choices", get_args(annotation))) <= set(get_args(annotation)), name
    if "value" in variable:  # fixed by the package, not the user: must be accepted as is
        assert getattr(Settings(**{name: variable["value"]}), field_name) == variable["value"], name
    elif field.default_factory is not None or field.default is None:
        assert "default" not in variable, f"{name}: the settings compute or leave it unset; don't claim a default"
    else:
        assert "default" in variable, f"{name}: say the default the settings use"
        assert getattr(Settings(**{name: variable["default"]}), field_name) == field.default, name


def test_the_settings_read_only_the_variables_server_json_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generic names a shell or a platform sets (PORT, HOST, API_KEY...) are not read as settings."""
    generic = {
        "api_key": "generic-key",
        "gateway_url": "https://elsewhere.example",
        "output_dir": "/elsewhere/out",
        "state_dir": "/elsewhere/state",
        "wait_seconds": "7",
        "http_token": "generic-token",
        "transport": "sse",
        "host": "0.0.0.0",
        "port": "1234",
        "allowed_hosts": "elsewhere.example",
        "public_url": "https://elsewhere.example",
        "allowed_dirs": "/elsewhere",
        "database_url": "postgresql://elsewhere.example/db",
        "storage_url": "s3://elsewhere/audio",
        "request_state_key": "generic-" * 8,
        "stateless": "1",
        "spend_cap": "1",
        "spend_window_minutes": "1",
        "lease_seconds": "1",
        "presign_seconds": "60",
    }
    assert set(generic) == set(Settings.model_fields), "add a sample for the new setting"
    for name in setting_fields():
        monkeypatch.delenv(name, raising=False)
    baseline = Settings().model_dump()
    for field_name, value in generic.items():
        monkeypatch.setenv(field_name.upper(), value)
    assert Settings().model_dump() == baseline


def test_the_readme_declares_the_server_name_for_pypi_ownership() -> None:
    """The README (the PyPI description) holds `mcp-name: <name>`, matched in full as the registry does."""
    name = server()["name"]
    assert name == SERVER_NAME
    readme = (ROOT / pyproject()["project"]["readme"]).read_text(encoding="utf-8")
    ends = [m.end() for m in re.finditer(re.escape(f"mcp-name: {name}"), readme)]
    assert any(end == len(readme) or not re.match(r"[A-Za-z0-9._/-]", readme[end]) for end in ends), (
        f"add `<!-- mcp-name: {name} -->` to README.md"
    )


def test_the_name_and_repository_pass_the_registrys_semantic_rules() -> None:
    """The name is namespace/name with alphanumeric ends, and io.github.OWNER matches the GitHub repository."""
    data = server()
    assert NAME_RE.match(data["name"])
    assert data["repository"]["source"] == "github"
    assert GITHUB_URL_RE.match(data["repository"]["url"])
    owner = data["name"].split("/")[0].removeprefix("io.github.")
    assert urlsplit(data["repository"]["url"]).path.strip("/").split("/")[0] == owner
    assert not data.get("remotes"), "remotes need a public https URL; add one only for a real deployment"


async def test_the_stdio_package_as_described_serves_the_three_tools(tmp_path: Path) -> None:
    """Launched with exactly its entry's environment (plus --sandbox), the stdio package answers tools/list."""
    env = package_env(package("stdio"), tmp_path, PIXAZO_API_KEY="key-from-the-user")
    command = StdioServerParameters(command=sys.executable, args=["-m", "mmaudio_mcp", "--sandbox"], env=env)
    async with Client(command) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS


async def test_the_http_package_as_described_serves_mcp_at_its_url_with_its_header(tmp_path: Path) -> None:
    """Launched with its entry's environment and a token, the HTTP package answers at its URL with its header."""
    entry = package("streamable-http")
    token = "token-from-the-user"
    port = str(free_port())
    env = package_env(entry, tmp_path, PIXAZO_API_KEY="key-from-the-user", MMAUDIO_HTTP_TOKEN=token, MMAUDIO_PORT=port)
    url = entry["transport"]["url"].replace("{MMAUDIO_PORT}", port)
    [bearer] = [h for h in entry["transport"]["headers"] if h["name"] == "Authorization"]
    headers = {"Authorization": bearer["value"].replace("{token}", token)}
    command = [sys.executable, "-m", "mmaudio_mcp", "--sandbox"]
    async with await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL, stderr=None) as process:
        try:
            await until_healthy(process, f"http://127.0.0.1:{port}")
            async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30)) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
                refused = await http.post(url, json={}, headers={"Authorization": "Bearer wrong"})
                assert refused.status_code == 401
        finally:
            process.terminate()
