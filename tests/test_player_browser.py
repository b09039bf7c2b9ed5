"""The player view in headless Chromium, hosted by the official MCP Apps AppBridge and the TypeScript client,
against our real server over streamable HTTP (with the sandbox gateway).

The host page (http://127.0.0.1:P) and the sandbox proxy (http://localhost:P) are different origins, and the proxy
is served with the spec's default CSP as a header, so the view runs under what a conforming host allows.
Needs /usr/bin/chromium, npm and the `playwright` Python package (no browser download): skipped locally when one
is missing, a failure in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from starlette.responses import FileResponse, Response

from mmaudio_mcp.player import CHUNK_CAP
from mmaudio_mcp.server import build_server
from mmaudio_mcp.transport import Transport, http_app, serve_on_loopback
from tests.conftest import POLICY

if TYPE_CHECKING:
    from starlette.requests import Request

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = "/usr/bin/chromium"
DEFAULT_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' data:; connect-src 'none'; object-src 'none'"
)

pytestmark = pytest.mark.timeout(240)


def _require(what: str, present: bool) -> None:
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {what} for the player's browser test")
    pytest.skip(f"{what} not installed")


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test host's script: npm packages pinned in tests/browser/package.json, bundled with esbuild."""
    _require("chromium", Path(CHROMIUM).is_file())
    _require("npm", bool(shutil.which("npm") and shutil.which("node")))
    try:
        import playwright  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        _require("the playwright Python package", False)
    run = {"cwd": BROWSER_DIR, "check": True, "capture_output": True, "timeout": 300, "stdin": subprocess.DEVNULL}
    if not (BROWSER_DIR / "node_modules" / "@modelcontextprotocol" / "ext-apps").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"], **run)
    bundle = tmp_path_factory.mktemp("host") / "host.js"
    esbuild = ["npx", "--no-install", "esbuild", "host.js", "--bundle", "--format=esm", "--platform=browser"]
    subprocess.run([*esbuild, f"--outfile={bundle}"], **run)
    return bundle


def _add_host_routes(server: Any, bundle: Path) -> None:
    @server.custom_route("/host.html", methods=["GET"])
    async def host_page(_: Request) -> Response:
        return FileResponse(BROWSER_DIR / "host.html")

    @server.custom_route("/host.js", methods=["GET"])
    async def host_script(_: Request) -> Response:
        return FileResponse(bundle, media_type="text/javascript")

    @server.custom_route("/sandbox.html", methods=["GET"])
    async def sandbox_proxy(_: Request) -> Response:
        return FileResponse(BROWSER_DIR / "sandbox.html", headers={"Content-Security-Policy": DEFAULT_CSP})


async def _view_state(view: Any) -> dict[str, Any]:
    return await view.locator("#audio").evaluate(
        "a => ({paused: a.paused, t: a.currentTime, d: a.duration, err: a.error && a.error.code,"
        " id: document.body.dataset.requestId, path: document.getElementById('path').textContent})"
    )


async def _wait_for(view: Any, check: str, within: float = 20.0) -> dict[str, Any]:
    """Poll the view's state until the Python expression `check` (over `s`) holds."""
    deadline = time.monotonic() + within
    while True:
        state = await _view_state(view)
        if eval(check, {}, {"s": state}):
            return state
        assert time.monotonic() < deadline, f"timed out waiting for {check}: {state}"
        await _sleep(0.1)


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


INKED = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""


async def test_the_player_plays_pauses_makes_a_new_take_and_plays_chunked_audio(
    host_bundle: Path, settings: Settings, sandbox: Sandbox
) -> None:
    from playwright.async_api import async_playwright

    started = time.monotonic()
    refresh = bool(os.environ.get("MMAUDIO_UPDATE_SCREENSHOT"))  # refresh the README's picture, on purpose only
    if refresh:  # with the path a user sees: the CLI's sandbox folder in the default output folder
        settings = settings.model_copy(update={"output_dir": Path.home() / "Music" / "mmaudio-mcp" / "sandbox"})
    existing = set(settings.output_dir.glob("*")) if settings.output_dir.is_dir() else set()
    server = build_server(settings, http_transport=httpx2.ASGITransport(app=sandbox.app), policy=POLICY)
    _add_host_routes(server, host_bundle)
    console: list[str] = []
    shots = Path(tempfile.mkdtemp(prefix="player-shots-"))
    async with serve_on_loopback(http_app(server, Transport.STREAMABLE_HTTP)) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--mute-audio"])
        try:
            page = await browser.new_page(viewport={"width": 720, "height": 340})
            page.on("console", lambda message: console.append(message.text))
            args = json.dumps({"prompt": "a soft piano melody", "duration": 4})
            await page.goto(f"{base}/host.html?args={args}")
            view = page.frame_locator("#app").frame_locator("iframe")

            # The duration shows, the waveform is drawn from the result's peaks, and the audio loads.
            await view.locator("#time").filter(has_text="/ 0:04.0").wait_for(timeout=20_000)
            first = await _wait_for(view, "s['d'] == 4 and s['paused']")
            assert await view.locator("#wave").evaluate(INKED) > 1000
            assert first["path"].endswith(".wav")
            assert await view.locator("#var").inner_text() == "New take (paid)"

            # A real click plays (user activation inside the frame), the second one pauses.
            await view.locator("#play").click()
            playing = await _wait_for(view, "not s['paused'] and s['t'] > 0.3")
            await page.locator("#app").screenshot(path=shots / "player.png")  # the view as the host frames it
            await view.locator("#play").click()
            paused = await _wait_for(view, "s['paused']")
            await _sleep(0.3)
            assert (await _view_state(view))["t"] == paused["t"] >= playing["t"]
            assert await view.locator("#play").get_attribute("aria-label") == "Play"

            # "New take (paid)" runs generate_audio again (a new job), waits through check_status, and loads it.
            await view.locator("#var").click()
            second = await _wait_for(view, f"s['id'] != {first['id']!r} and s['d'] == 4 and s['path'].endswith('.wav')")
            assert second["path"] != first["path"]
            calls = await page.evaluate("window.host.calls")
            assert calls.count("generate_audio") == 1 and "check_status" in calls  # the host's own call is not counted

            # A file above the chunk cap (30 s, 5.3 MB) arrives in chunks and plays.
            args = json.dumps({"prompt": "wind through a canyon", "duration": 30})
            await page.goto(f"{base}/host.html?args={args}")
            view = page.frame_locator("#app").frame_locator("iframe")
            await _wait_for(view, "s['d'] == 30", within=30)
            reads = await page.evaluate("window.host.reads")
            chunks = [uri for uri in reads if "/chunks/" in uri]
            assert len(chunks) == -(-30 * 44100 * 4 // CHUNK_CAP), reads
            await view.locator("#play").click()
            await _wait_for(view, "not s['paused'] and s['t'] > 0.3")
            await page.screenshot(path=shots / "player-30s.png")
            sizes = await page.evaluate("window.host.sizes")
            assert sizes and sizes[-1]["height"] > 100

            # No CSP violation happened; and the policy really applies (a blob: source is refused and reported).
            assert not [text for text in console if "Content Security Policy" in text], console
            assert await page.evaluate("window.host.errors") == []
            await view.locator("#audio").evaluate(
                "a => { new Audio(URL.createObjectURL(new Blob([new Uint8Array(8)], {type: 'audio/wav'}))).play()"
                ".catch(() => {}); }"
            )
            await _sleep(0.5)
            assert [text for text in console if "Content Security Policy" in text and "blob:" in text], console
        finally:
            await browser.close()
    if refresh:
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(shots / "player.png", docs / "player.png")
        for made in set(settings.output_dir.glob("*")) - existing:  # only what this test wrote
            made.unlink()
    print(f"browser test: {time.monotonic() - started:.1f} s; screenshots in {shots}")
