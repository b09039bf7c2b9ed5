"""The official MCP conformance suite against our streamable-HTTP server, with an exact expected-failures list."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

from tests.node_tools import ROOT, http_server, require_npm

if TYPE_CHECKING:
    from pathlib import Path

SUITE = "@modelcontextprotocol/conformance@0.1.16"
BASELINE = ROOT / "tests" / "conformance-baseline.yml"


def test_the_conformance_suite_passes_except_for_the_listed_fixture_scenarios(tmp_path: Path) -> None:
    """Every scenario passes but those listed (with reasons) in the baseline; a listed one that starts passing
    also fails, so the list stays exact."""
    require_npm()
    with http_server(tmp_path) as url:
        command = f"conformance server --url {url} -o {tmp_path / 'results'} --expected-failures {BASELINE}"
        done = subprocess.run(
            ["npx", "-y", "-p", "node@22", "-p", SUITE, "-c", command],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    failures = [
        f"{path.parent.name}: {check.get('id')} {check.get('errorMessage')}"
        for path in (tmp_path / "results").rglob("checks.json")
        for check in json.loads(path.read_text())
        if check.get("status") == "FAILURE"
    ]
    assert done.returncode == 0, done.stdout[-3000:] + "\n" + "\n".join(failures)
    assert "Baseline check passed" in done.stdout
