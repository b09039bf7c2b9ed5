"""`mmaudio-mcp sync`: declared sounds are made once; a re-run, a changed loudness or a deleted file pays nothing,
an interrupted run resumes its jobs, and only a changed generation pays again (counted at the sandbox gateway)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from mmaudio_mcp.errors import InvalidArgumentError
from mmaudio_mcp.jobs import open_job_service
from mmaudio_mcp.sync import adopt_from_store, load_project, plan, run
from tests.conftest import POLICY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import httpx2

    from mmaudio_mcp.jobs import JobService
    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings
    from mmaudio_mcp.sync import Outcome

SOUNDS = """
[defaults]
out = "assets/sfx"
format = "ogg"
loudness = -16

[sounds.door_creak]
prompt = "heavy wooden door creaks open slowly"
duration = 3

[sounds.rain]
prompt = "steady rain on leaves"
duration = 4
loop = true
out = "assets/ambience"

[sounds.click]
prompt = "a short ui click"
duration = 2
format = "wav"
"""


@pytest.fixture
async def jobs(settings: Settings, transport: httpx2.ASGITransport) -> AsyncIterator[JobService]:
    async with open_job_service(settings, http_transport=transport, policy=POLICY) as service:
        yield service


async def sync(project_file: Path, jobs: JobService, **kwargs: float) -> list[Outcome]:
    project = load_project(project_file)
    plans = plan(project)
    await adopt_from_store(project, plans, jobs)
    return await run(project, plans, jobs, **kwargs)  # pyright: ignore[reportArgumentType]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "game"
    folder.mkdir()
    (folder / "sounds.toml").write_text(SOUNDS, encoding="utf-8")
    return folder / "sounds.toml"


async def test_a_second_sync_pays_nothing_and_changes_nothing(
    project: Path, jobs: JobService, sandbox: Sandbox
) -> None:
    """The first sync submits one job per sound and writes each file and the lock; the second submits none."""
    first = await sync(project, jobs)
    assert [o.error for o in first] == [None, None, None]
    assert sandbox.stats().submits == 3
    root = project.parent
    made = {p.relative_to(root).as_posix() for p in root.rglob("*.*") if p.parent != root}
    assert made == {"assets/sfx/door_creak.ogg", "assets/ambience/rain.ogg", "assets/sfx/click.wav"}
    lock = json.loads((root / "sounds.lock.json").read_text())["sounds"]
    assert {entry["request_id"] for entry in lock.values()} == {o.request_id for o in first}
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.*")}
    again = await sync(project, jobs)
    assert sandbox.stats().submits == 3, "a re-run must pay for nothing"
    assert [o.plan.action for o in again] == ["up to date"] * 3
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.*")} == stamps


async def test_new_loudness_or_a_deleted_file_is_remade_from_the_paid_job(
    project: Path, jobs: JobService, sandbox: Sandbox
) -> None:
    """Only the generation (prompt, duration, steps, cfg) costs money: other changes reuse the job."""
    await sync(project, jobs)
    project.write_text(SOUNDS.replace("loudness = -16", "loudness = -20"), encoding="utf-8")
    (project.parent / "assets" / "sfx" / "click.wav").unlink()
    outcomes = await sync(project, jobs)
    assert [o.plan.action for o in outcomes] == ["remade"] * 3
    assert (project.parent / "assets" / "sfx" / "click.wav").is_file()
    assert sandbox.stats().submits == 3
    project.write_text(SOUNDS.replace("duration = 2", "duration = 5"), encoding="utf-8")
    outcomes = await sync(project, jobs)
    assert [o.paid for o in outcomes] == [False, False, True]
    assert sandbox.stats().submits == 4


async def test_an_interrupted_sync_resumes_the_same_jobs(project: Path, jobs: JobService, sandbox: Sandbox) -> None:
    """Jobs still running when a sync stops (here: it does not wait) are recorded in the lock at submit and
    finished by the next sync; with the lock lost, the store still leads it to them."""
    first = await sync(project, jobs, wait_seconds=0)
    assert all(o.error and "run sync again" in o.error for o in first)
    assert sandbox.stats().submits == 3
    (project.parent / "sounds.lock.json").unlink()
    second = await sync(project, jobs)
    assert [o.error for o in second] == [None, None, None]
    assert [o.plan.action for o in second] == ["resumed"] * 3
    assert {o.request_id for o in second} == {o.request_id for o in first}
    assert sandbox.stats().submits == 3


@pytest.mark.parametrize("parallel", [1, 3])
async def test_at_most_parallel_jobs_run_at_once(
    project: Path, jobs: JobService, sandbox: Sandbox, parallel: int
) -> None:
    """`--parallel N` bounds the jobs in flight: with 1 each job is submitted after the previous one completed; with 3
    the three sounds overlap (so the bound, not chance, kept them apart)."""
    await sync(project, jobs, parallel=parallel)
    timings = sorted(sandbox.stats().jobs.values(), key=lambda timing: timing.submitted_at)
    assert len(timings) == 3
    overlapping = any(later.submitted_at < earlier.completed_at for earlier, later in itertools.pairwise(timings))
    assert overlapping is (parallel > 1)


@pytest.mark.parametrize(
    ("declaration", "says"),
    [
        ('[sounds.x]\nprompt = "a"\nduration = 99\n', "duration must be between 2 and 30 seconds (got 99)"),
        ('[sounds."../x"]\nprompt = "a"\n', "the sound name"),
        ('[sounds.x]\nprompt = "a"\nout = "../../elsewhere"\n', "outside"),
        ('[sounds.x]\nprompt = "a"\nvolume = 3\n', "volume is not an argument here"),
    ],
)
def test_a_bad_declaration_is_refused_before_anything_is_paid(tmp_path: Path, declaration: str, says: str) -> None:
    """Every declaration is checked (bounds, names, folders, unknown keys) when the file is read and planned."""
    file = tmp_path / "sounds.toml"
    file.write_text(declaration, encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match=r"\S") as refused:
        plan(load_project(file))
    assert says in refused.value.message


def test_the_command_dry_runs_then_syncs_then_pays_nothing(tmp_path: Path) -> None:
    """`mmaudio-mcp sync --dry-run` says what it would pay for; `sync` makes the files; a second `sync` pays 0."""
    project = tmp_path / "game"
    project.mkdir()
    (project / "sounds.toml").write_text(SOUNDS, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home")}
    env |= {"MMAUDIO_OUTPUT_DIR": str(tmp_path / "out"), "MMAUDIO_STATE_DIR": str(tmp_path / "state")}

    def sync_command(*args: str) -> dict[str, object]:
        command = [sys.executable, "-m", "mmaudio_mcp", "sync", "--sandbox", "--sandbox-speed", "0.02", "--json"]
        done = subprocess.run([*command, *args], env=env, cwd=project, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert sync_command("--dry-run")["to_pay_for"] == 3
    assert not (project / "assets").exists()
    assert sync_command()["paid"] == 3
    assert (project / "assets" / "ambience" / "rain.ogg").is_file()
    assert sync_command()["paid"] == 0
