"""deploy/: the compose file and nginx config that README "Running replicas" points to agree with the code and the
README, and with the nginx configuration the replica tests run."""

from __future__ import annotations

import re
from pathlib import Path

from mmaudio_mcp.settings import Settings
from tests.services import NGINX_CONF

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _settings_variables() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [])
        names |= {choice for choice in choices if isinstance(choice, str) and choice.isupper()}
    return names


def test_every_variable_the_compose_file_sets_is_read_and_documented() -> None:
    """Each MMAUDIO_ variable in compose.yaml is one the settings read and is in README's replicas table; the AWS
    ones are in the table too."""
    compose = (DEPLOY / "compose.yaml").read_text()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running replicas", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"^\s+((?:MMAUDIO|AWS|PIXAZO)_[A-Z_]+):", compose, re.MULTILINE))
    assert {"MMAUDIO_DATABASE_URL", "MMAUDIO_STORAGE_URL", "MMAUDIO_HTTP_TOKEN"} <= used
    for name in used:
        if name.startswith("MMAUDIO_"):
            assert name in _settings_variables(), f"{name} is set in compose.yaml but never read"
        if name not in ("PIXAZO_API_KEY", "MMAUDIO_TRANSPORT", "MMAUDIO_HOST", "MMAUDIO_PORT", "MMAUDIO_STATE_DIR"):
            assert name in section, f"{name} is not in README's replicas table"


def test_the_deployed_nginx_config_proxies_like_the_tested_one() -> None:
    """deploy/nginx.conf's proxy directives are the ones the replica tests run through (Host passed through,
    HTTP/1.1 keep-alive, a read timeout above the SSE pings, retry on a dead replica)."""
    deployed = (DEPLOY / "nginx.conf").read_text()
    directives = [
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $http_host;",
        "proxy_read_timeout 120s;",
        "proxy_next_upstream error timeout;",
    ]
    for directive in directives:
        assert directive in deployed, directive
        assert directive in NGINX_CONF, directive
    assert re.findall(r"server (replica\d):8000;", deployed) == ["replica1", "replica2"]
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "replica1:" in compose and "replica2:" in compose
