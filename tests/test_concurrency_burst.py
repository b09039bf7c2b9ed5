"""A burst of completions leaves the event loop free to answer: audio work queues in low-priority threads of its own,
and the heap built at start-up is out of the garbage collector's reach (benchmarks/concurrency.py --burst measures
the effect; these tests pin the mechanisms)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx2
import pytest
from mcp import Client

from mmaudio_mcp.audio import AUDIO_WORK_NICENESS, AUDIO_WORK_THREADS, run_audio_work
from mmaudio_mcp.files import GC_YOUNG_THRESHOLD, Limits
from mmaudio_mcp.server import build_server
from tests.conftest import POLICY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is a Linux feature")
async def test_audio_work_runs_in_threads_at_a_lower_cpu_priority_than_the_event_loop() -> None:
    """The loop's thread keeps its priority; the audio threads run AUDIO_WORK_NICENESS lower (nice is capped at 19)."""
    loop_niceness = _niceness()
    assert await run_audio_work(_niceness) == min(loop_niceness + AUDIO_WORK_NICENESS, 19)
    assert _niceness() == loop_niceness
    # and a plain worker thread (where stdio and SQLite calls run) keeps the loop's priority
    assert await anyio.to_thread.run_sync(_niceness) == loop_niceness


async def test_audio_work_runs_at_most_audio_work_threads_pieces_at_once() -> None:
    """Six pieces fired together: two run side by side (a barrier of two would time out otherwise), never three."""
    together = threading.Barrier(AUDIO_WORK_THREADS, timeout=10)
    lock = threading.Lock()
    running = most = 0

    def piece() -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        together.wait()
        with lock:
            running -= 1
        return threading.current_thread().name

    names: list[str] = []

    async def one() -> None:
        names.append(await run_audio_work(piece))

    async with anyio.create_task_group() as tasks:
        for _ in range(3 * AUDIO_WORK_THREADS):
            tasks.start_soon(one)
    assert most == AUDIO_WORK_THREADS
    assert len(names) == 3 * AUDIO_WORK_THREADS
    assert all(name.startswith("mmaudio-audio") for name in names)  # threads of their own, never the shared pool


async def test_a_cancelled_caller_still_waits_for_its_audio_work_to_finish() -> None:
    """As with anyio.to_thread.run_sync: work already started (a file half-written) is not abandoned."""
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.2)
        finished.set()

    with anyio.move_on_after(0.01):
        await run_audio_work(work)
    assert finished.is_set()


async def test_an_error_in_audio_work_reaches_the_caller() -> None:
    def fails() -> None:
        raise ValueError("not audio")

    with pytest.raises(ValueError, match="not audio"):
        await run_audio_work(fails)


WARM_UP = textwrap.dedent(
    """
    import gc, sys
    import anyio, httpx2
    from mcp import Client
    from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox
    from mmaudio_mcp.server import build_server
    from mmaudio_mcp.settings import Settings

    async def main(folder):
        sandbox = create_sandbox(SandboxConfig(speed=0.01))
        settings = Settings(_env_file=None, api_key=SANDBOX_API_KEY, gateway_url="http://127.0.0.1:8787",
                            output_dir=folder + "/out", state_dir=folder + "/state")
        server = build_server(settings, http_transport=httpx2.ASGITransport(app=sandbox.app))
        async with Client(server) as client:
            before = ("pyloudnorm" in sys.modules, gc.get_freeze_count())
            await client.call_tool("generate_audio", {"prompt": "a bell", "duration": 2, "wait_seconds": 0})
            with anyio.fail_after(60):
                while gc.get_freeze_count() == 0:
                    await anyio.sleep(0.05)
            print(before, "pyloudnorm" in sys.modules, gc.get_freeze_count() > 0, gc.get_threshold()[0])

    anyio.run(main, sys.argv[1])
    """
)


def test_the_first_submit_imports_the_preview_libraries_and_freezes_the_long_lived_heap(tmp_path: Path) -> None:
    """In a fresh process: nothing heavy at start-up; after the first submit, pyloudnorm (scipy, for the preview's
    loudness, ~1 s of import holding the GIL) is imported in the background, then the heap is frozen and young objects
    are collected less often, so neither the import nor full collections walking every module land on the first
    burst of completions."""
    done = subprocess.run(
        [sys.executable, "-c", WARM_UP, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(False,", "0)", "True", "True", str(GC_YOUNG_THRESHOLD)]


class SlowMedia(httpx2.AsyncBaseTransport):
    """The sandbox, except that each media body starts 0.5 s late (a distant CDN); counts the streams open at once."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = self.most = self.fetched = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.startswith("/cdn/"):
            return response
        self.open += 1
        self.most = max(self.most, self.open)
        self.fetched += 1
        return httpx2.Response(response.status_code, headers=response.headers, stream=_Late(self, response))


class _Late(httpx2.AsyncByteStream):
    def __init__(self, counter: SlowMedia, response: httpx2.Response) -> None:
        self.counter = counter
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await anyio.sleep(0.5)
        async for chunk in self.response.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        self.counter.open -= 1
        await self.response.aclose()


async def test_a_burst_of_completions_streams_at_most_downloads_at_once_media_files_together(
    settings: Settings, sandbox: Sandbox
) -> None:
    """Six jobs completing together: every file arrives, but no more than Limits.downloads_at_once (here 2) stream
    at once, so a burst does not put every job's chunks on the event loop in the same moment."""
    media = SlowMedia(httpx2.ASGITransport(app=sandbox.app))
    server = build_server(settings, http_transport=media, policy=POLICY, limits=Limits(downloads_at_once=2))
    results: list[dict[str, object]] = []
    async with Client(server) as client:

        async def one() -> None:
            reply = await client.call_tool("generate_audio", {"prompt": "a bell", "duration": 2, "wait_seconds": 30})
            results.append(reply.structured_content or {})

        async with anyio.create_task_group() as tasks:
            for _ in range(6):
                tasks.start_soon(one)
    assert [result.get("status") for result in results] == ["COMPLETED"] * 6
    assert all(result.get("file") for result in results)
    assert media.fetched == 6
    assert media.most == 2
