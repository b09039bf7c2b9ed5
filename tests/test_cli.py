"""The command line as a person uses it: generate from a terminal, version, and refusing bad options."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mmaudio_mcp.audio import read_wav_info
from mmaudio_mcp.cli import _parser, main  # pyright: ignore[reportPrivateUsage]
from tests.processes import run_cli

if TYPE_CHECKING:
    from mmaudio_mcp.settings import Settings


def test_generate_with_the_sandbox_prints_the_path_of_a_real_wav(tmp_path: Path) -> None:
    """`mmaudio-mcp generate ... --sandbox` needs no key, prints only the file path on stdout, and the WAV is real."""
    done = run_cli(
        tmp_path, "generate", "rain on a tin roof", "--duration", "3", "--sandbox", "--sandbox-speed", "0.05"
    )
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.is_file()
    assert path.is_relative_to(tmp_path / "out")
    info = read_wav_info(path)
    assert (info.sample_rate, info.channels, info.sample_format, info.duration_seconds) == (44100, 1, "float32", 3.0)


def test_generate_refuses_out_of_range_options_with_exit_code_1(tmp_path: Path) -> None:
    """A bad duration is explained on stderr and nothing is submitted."""
    done = run_cli(tmp_path, "generate", "rain", "--duration", "31", "--sandbox")
    assert done.returncode == 1
    assert "duration" in done.stderr
    assert done.stdout == ""


def test_generate_without_a_key_says_how_to_set_one(tmp_path: Path) -> None:
    """Without PIXAZO_API_KEY (and no --sandbox) the error names the variable and the sandbox alternative."""
    done = run_cli(tmp_path, "generate", "rain")
    assert done.returncode == 1
    assert "PIXAZO_API_KEY" in done.stderr
    assert "--sandbox" in done.stderr


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version; `serve --help` documents the transport and the sandbox switch."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert "mmaudio-mcp 0." in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    usage = capsys.readouterr().out
    assert "--transport" in usage
    assert "--sandbox" in usage


def test_serve_help_names_every_transport_the_settings_know(capsys: pytest.CaptureFixture[str]) -> None:
    """The transport names are declared once (settings.Transport); `serve --help` names each of them and
    `--transport` takes each of them."""
    from mmaudio_mcp.settings import Transport

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    for transport in Transport:
        assert transport.value in usage
        assert _parser().parse_args(["serve", "--transport", transport.value]).transport == transport


def test_normalize_alone_aims_at_the_default_target_that_its_help_names(capsys: pytest.CaptureFixture[str]) -> None:
    """`--normalize` without a number normalizes to processing's DEFAULT_TARGET_LUFS, the number `--help` shows
    (the CLI spells the number in its help without importing the audio stack)."""
    from mmaudio_mcp.processing_options import DEFAULT_TARGET_LUFS
    from mmaudio_mcp.terminal import processing_options

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert f"loudness target (default {DEFAULT_TARGET_LUFS:g})" in " ".join(capsys.readouterr().out.split())
    args = _parser().parse_args(["generate", "rain", "--normalize"])
    options = processing_options(args)
    assert options.normalize
    assert options.target_lufs == DEFAULT_TARGET_LUFS
    assert not processing_options(_parser().parse_args(["generate", "rain"])).normalize


def test_the_sandbox_command_serves_the_fake_gateway_on_the_given_port(tmp_path: Path) -> None:
    """`mmaudio-mcp sandbox --port N` answers the documented submit path with the sandbox key."""
    import socket
    import time

    import httpx2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    command = [sys.executable, "-m", "mmaudio_mcp", "sandbox", "--port", str(port), "--speed", "0"]
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/mmaudio-v2-text-to-audio/v1/mmaudio-v2-text-to-audio-request"
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = httpx2.post(url, json={"prompt": "rain"}, headers={"Ocp-Apim-Subscription-Key": "sandbox-key"})
                break
            except httpx2.ConnectError:
                assert time.monotonic() < deadline, "the sandbox did not start"
                time.sleep(0.1)
        assert reply.status_code == 202
        assert reply.json()["request_id"].startswith("mmaudio-v2-text-to-audio_")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert b"sandbox-key" in stderr


def test_status_and_jobs_report_a_finished_job_from_the_store(tmp_path: Path) -> None:
    """`generate --json` then `status` prints the same file; `jobs --json` lists it without any network call."""
    made = run_cli(tmp_path, "generate", "a bell", "--duration", "2", "--sandbox", "--sandbox-speed", "0.02", "--json")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    status = run_cli(tmp_path, "status", job["request_id"], "--sandbox")
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == job["file"]["path"]
    listed = run_cli(tmp_path, "jobs", "--sandbox", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["request_id"] for row in rows] == [job["request_id"]]
    assert "webhook_token" not in rows[0]


def test_errors_are_one_line_unless_debug_is_given(tmp_path: Path) -> None:
    """A user error is one actionable line with exit code 1; --debug adds the traceback."""
    plain = run_cli(tmp_path, "status", "../../etc/passwd")
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()]
    assert "is not a Pixazo request_id" in plain.stderr
    debug = run_cli(tmp_path, "status", "../../etc/passwd", "--debug")
    assert "Traceback" in debug.stderr


async def test_doctor_checks_the_set_up_and_prints_a_host_config(tmp_path: Path) -> None:
    """With a reachable gateway and a key every check passes; without a key doctor fails and says which variable."""
    import anyio

    from mmaudio_mcp.sandbox import SANDBOX_API_KEY, create_sandbox
    from mmaudio_mcp.transport import serve_on_loopback

    async with serve_on_loopback(create_sandbox().app) as gateway:
        extra = {"PIXAZO_GATEWAY_URL": gateway}
        good = await anyio.to_thread.run_sync(
            lambda: run_cli(tmp_path, "doctor", "--json", env={**extra, "PIXAZO_API_KEY": SANDBOX_API_KEY})
        )
        keyless = await anyio.to_thread.run_sync(lambda: run_cli(tmp_path, "doctor", "--json", env=extra))
    report = json.loads(good.stdout)
    assert good.returncode == 0, report
    assert all(check["ok"] for check in report["checks"])
    assert SANDBOX_API_KEY not in good.stdout
    server = report["host_config"]["mcpServers"]["mmaudio"]
    assert set(server["env"]) == {"PIXAZO_API_KEY", "MMAUDIO_OUTPUT_DIR"}
    failed = json.loads(keyless.stdout)
    assert keyless.returncode == 1
    assert [check["name"] for check in failed["checks"] if not check["ok"]] == ["API key"]


async def test_doctor_words_a_refused_key_as_the_pixazo_client_does(tmp_path: Path) -> None:
    """doctor asks the gateway through the server's own Pixazo client: a wrong key fails the gateway check with the
    client's sentence (what happened, which variable to fix), and the key itself is never printed."""
    import anyio

    from mmaudio_mcp.sandbox import create_sandbox
    from mmaudio_mcp.transport import serve_on_loopback

    wrong = "not-the-sandbox-key-8c1e"
    async with serve_on_loopback(create_sandbox().app) as gateway:
        env = {"PIXAZO_GATEWAY_URL": gateway, "PIXAZO_API_KEY": wrong}
        done = await anyio.to_thread.run_sync(lambda: run_cli(tmp_path, "doctor", "--json", env=env))
    assert done.returncode == 1
    [check] = [check for check in json.loads(done.stdout)["checks"] if check["name"] == "gateway"]
    assert not check["ok"]
    assert "Pixazo rejected the API key (401)" in check["detail"]
    assert "PIXAZO_API_KEY" in check["detail"]
    assert wrong not in done.stdout + done.stderr


def test_doctor_names_an_unreachable_gateway_without_retry_noise(tmp_path: Path) -> None:
    """A gateway nobody answers at fails the gateway check with the client's sentence (what to check), and the
    client's retries leave no log lines behind."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        gateway = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = run_cli(tmp_path, "doctor", "--json", env={"PIXAZO_GATEWAY_URL": gateway, "PIXAZO_API_KEY": "a-key"})
    assert done.returncode == 1
    [check] = [check for check in json.loads(done.stdout)["checks"] if check["name"] == "gateway"]
    assert not check["ok"]
    assert "Could not reach Pixazo" in check["detail"] and "PIXAZO_GATEWAY_URL" in check["detail"]
    assert done.stderr == "", done.stderr


def test_sse_without_sessions_is_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    """`serve --transport sse --stateless` is refused by the exposure check before the sandbox gateway starts, so
    the refusal is the only line the user sees."""
    done = run_cli(tmp_path, "serve", "--sandbox", "--transport", "sse", "--stateless")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert "cannot run stateless" in done.stderr


def test_serving_to_the_network_without_a_token_warns_once(tmp_path: Path) -> None:
    """With --allow-unauthenticated on 0.0.0.0 the no-token warning is logged once, not by both the CLI and the
    transport. The server runs in a network namespace of its own (no interface but a down loopback), so nothing
    outside can reach it; it is stopped once uvicorn says it runs."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], check=False).returncode != 0:
        pytest.skip("needs unshare -n (root, util-linux) to keep the 0.0.0.0 listener unreachable")
    command = ["unshare", "-n", sys.executable, "-m", "mmaudio_mcp", "serve", "--transport", "streamable-http"]
    command += ["--host", "0.0.0.0", "--port", "8000", "--allow-unauthenticated", "--log-level", "info"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "MMAUDIO_STATE_DIR": str(tmp_path / "s")}
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen = b""
    try:
        while b"Uvicorn running on" not in seen:  # raw reads: a buffered readline could hide lines from select
            assert select.select([process.stderr], [], [], 30)[0], f"uvicorn did not start within 30 s: {seen!r}"
            chunk = os.read(process.stderr.fileno(), 65536)
            assert chunk, f"the server exited: {seen!r}"
            seen += chunk
        process.terminate()
        seen += process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    warnings = [line for line in seen.decode().splitlines() if "with no bearer token" in line]
    assert len(warnings) == 1, seen.decode()


def test_generate_saves_a_processed_file_into_the_project(tmp_path: Path) -> None:
    """`generate ... --format ogg --normalize --loop --out assets/sfx/` writes a readable looping ogg in the project."""
    import av

    project = tmp_path / "game"
    project.mkdir()
    args = ("generate", "rain on a tin roof", "--duration", "3", "--sandbox", "--sandbox-speed", "0.02")
    done = run_cli(tmp_path, *args, "--format", "ogg", "--normalize", "--loop", "--out", "assets/sfx/", cwd=project)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == project / "assets" / "sfx"
    assert path.suffix == ".ogg"
    assert path.stat().st_mode & 0o777 == 0o644
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "vorbis"
    escape = run_cli(tmp_path, *args, "--out", "../elsewhere", cwd=project)
    assert escape.returncode == 1
    assert "outside" in escape.stderr
    assert not (tmp_path / "elsewhere").exists()
    listed = json.loads(run_cli(tmp_path, "jobs", "--sandbox", "--json").stdout)
    assert len(listed) == 1, "a refused --out must be caught before a job is paid for"


SANDBOX = ("--sandbox", "--sandbox-speed", "0.02")


def submitted(tmp_path: Path) -> int:
    """How many jobs the sandbox store holds: each one was paid for."""
    return len(json.loads(run_cli(tmp_path, "jobs", "--sandbox", "--json").stdout))


@pytest.mark.parametrize(
    ("saving", "says"),
    [
        (("--name", "a/b"), "--name"),
        (("--name", "door.mp3", "--format", "ogg"), "--name"),
        (("--out", "../elsewhere"), "outside the current directory"),
        (("--out", "blocked/sfx"), "cannot be written"),
        (("--name", "taken"), "--overwrite"),
        (("--format", "mp3", "--sample-rate", "96000"), "mp3"),
    ],
)
def test_generate_checks_where_and_how_it_saves_before_paying(
    tmp_path: Path, saving: tuple[str, ...], says: str
) -> None:
    """A bad name, a folder outside the project or not writable, an existing file without --overwrite and an
    impossible format option are refused with exit 1 before a job is submitted (no job in the store)."""
    project = tmp_path / "game"
    project.mkdir()
    (project / "taken.wav").write_bytes(b"RIFF")
    (project / "blocked").write_text("a file, not a folder")
    done = run_cli(tmp_path, "generate", "a bell", "--duration", "2", *SANDBOX, "--out", ".", *saving, cwd=project)
    assert done.returncode == 1, done.stderr
    assert says in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error")]) == 1, done.stderr
    assert submitted(tmp_path) == 0
    assert (project / "taken.wav").read_bytes() == b"RIFF"


def test_a_save_that_fails_after_payment_prints_the_request_id_and_the_wav(tmp_path: Path) -> None:
    """If the copy cannot be made once the job is paid for (here: the name was taken while the job ran), the error
    gives the request_id and the delivered WAV's path, and `status <id>` with the saving options finishes the job."""
    project = tmp_path / "game"
    project.mkdir()
    command = [sys.executable, "-m", "mmaudio_mcp", "generate", "a bell", "--duration", "2", "--sandbox"]
    command += ["--sandbox-speed", "1", "--out", "sfx", "--name", "bell"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home")}
    env |= {"MMAUDIO_OUTPUT_DIR": str(tmp_path / "out"), "MMAUDIO_STATE_DIR": str(tmp_path / "state")}
    with subprocess.Popen(
        command, env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as p:
        while submitted(tmp_path) == 0:  # the job is paid for: now take its name
            assert p.poll() is None, p.communicate()
        (project / "sfx").mkdir()
        (project / "sfx" / "bell.wav").write_bytes(b"somebody else's file")
        _out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    [job] = json.loads(run_cli(tmp_path, "jobs", "--sandbox", "--json").stdout)
    assert job["request_id"] in err
    assert job["file"]["path"] in err and Path(job["file"]["path"]).is_file()
    assert "--overwrite" in err and "overwrite=true" not in err
    again = run_cli(tmp_path, "status", job["request_id"], "--sandbox", "--out", "sfx", "--name", "bell2", cwd=project)
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()) == project / "sfx" / "bell2.wav"
    assert submitted(tmp_path) == 1


@pytest.mark.parametrize(
    ("args", "code", "sentence"),
    [
        (("generate", "x", "--duration", "abc"), 2, "--duration must be a whole number (got 'abc')"),
        (("generate", "x", "--format", "aac"), 2, "--format must be one of wav, flac, ogg, mp3 (got 'aac')"),
        (("jobs", "--limit", "-3"), 2, "--limit must be a whole number between 1 and 1000 (got '-3')"),
        (("generate", "x", "--duration", "99", "--sandbox"), 1, "--duration must be between 2 and 30 seconds (got 99)"),
        (("generate", "x", "--normalize", "-50", "--sandbox"), 1, "--normalize must be between -40 and -5 LUFS"),
    ],
)
def test_argument_errors_are_one_sentence_naming_the_flag_the_range_and_the_value(
    tmp_path: Path, args: tuple[str, ...], code: int, sentence: str
) -> None:
    """A bad argument gets one line naming the flag, what it accepts and what was given (no usage block)."""
    done = run_cli(tmp_path, *args)
    assert done.returncode == code
    assert sentence in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_unfinished_job_says_the_command_to_run_and_status_finds_it_by_prefix_after_exit(tmp_path: Path) -> None:
    """Exit 3 words the next step as a command (not a tool call); a new process, with the sandbox's jobs kept in
    the state folder, finishes the job from a unique prefix of its request_id."""
    made = run_cli(tmp_path, "generate", "a bell", "--duration", "2", "--sandbox", "--sandbox-speed", "0.5",
                   "--wait-seconds", "0")  # fmt: skip
    assert made.returncode == 3, made.stderr
    request_id = made.stdout.strip()
    assert f"mmaudio-mcp status {request_id} --wait-seconds 60 --sandbox" in made.stderr
    assert "check_status(" not in made.stderr
    prefix = request_id.partition("_")[2][:8]
    done = run_cli(tmp_path, "status", prefix, "--sandbox", "--wait-seconds", "30")
    assert done.returncode == 0, done.stderr
    assert read_wav_info(Path(done.stdout.strip())).duration_seconds > 1
    assert submitted(tmp_path) == 1


def test_jobs_shows_whole_request_ids_and_stops_quietly_when_the_reader_leaves(tmp_path: Path) -> None:
    """The table never cuts a request_id (people copy it into `status`); `jobs --json | head` ends without a
    BrokenPipeError."""
    made = run_cli(tmp_path, "generate", "a bell", "--duration", "2", *SANDBOX)
    assert made.returncode == 0, made.stderr
    [job] = json.loads(run_cli(tmp_path, "jobs", "--sandbox", "--json").stdout)
    assert job["request_id"] in run_cli(tmp_path, "jobs", "--sandbox").stdout
    command = [sys.executable, "-m", "mmaudio_mcp", "jobs", "--sandbox", "--json"]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "MMAUDIO_STATE_DIR": str(tmp_path / "state"),
    }
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # like `head` after its first lines
        err = process.stderr.read().decode()
    assert process.returncode == 0, err
    assert "BrokenPipe" not in err and "Traceback" not in err


def test_doctor_with_the_sandbox_checks_the_fake_gateway(tmp_path: Path) -> None:
    """`doctor --sandbox` runs its checks against the built-in gateway (no key needed), so every check passes."""
    done = run_cli(tmp_path, "doctor", "--sandbox", "--json")
    assert done.returncode == 0, done.stdout
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    assert checks["API key"]["ok"] and checks["gateway"]["ok"]


def test_a_bare_command_in_a_terminal_explains_itself_instead_of_waiting(tmp_path: Path) -> None:
    """`mmaudio-mcp` typed in a terminal (stdin a tty) says what it is and how to try it, and exits."""
    import pty

    main_fd, child_fd = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mmaudio_mcp"], stdin=child_fd, capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        )  # fmt: skip
    finally:
        os.close(main_fd)
        os.close(child_fd)
    assert done.returncode == 0
    assert "mmaudio-mcp generate" in done.stderr and "--sandbox" in done.stderr
    assert done.stdout == ""


def test_serve_over_http_says_where_it_listens_and_a_busy_port_is_one_line(tmp_path: Path) -> None:
    """`serve --transport streamable-http` prints its URL on stderr; a port in use is refused in one line, exit 1."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(tmp_path, "serve", "--sandbox", "--transport", "streamable-http", "--port", str(port))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "--port" in errors[0], done.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox", "--transport", "streamable-http"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "MMAUDIO_STATE_DIR": str(tmp_path / "s")}
    with subprocess.Popen([*command, "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        wanted = f"serving MCP (streamable-http) on http://127.0.0.1:{port}/mcp"
        lines: list[str] = []
        while not any(wanted in line for line in lines):
            assert select.select([process.stderr], [], [], 30)[0], f"no such line within 30 s: {lines}"
            lines.append(process.stderr.readline())
            assert lines[-1], f"the server exited: {lines}"
        process.terminate()
        process.wait(timeout=30)


def test_a_loop_says_how_much_shorter_than_the_clip_it_came_out(tmp_path: Path) -> None:
    """A 4 s clip made to loop repeats every ~3 s (the crossfade eats up to a quarter): the JSON has the exact
    loop length and a note, and the terminal prints the note on stderr."""
    done = run_cli(tmp_path, "generate", "rain", "--duration", "4", *SANDBOX, "--format", "ogg", "--loop", "--json")
    assert done.returncode == 0, done.stderr
    file = json.loads(done.stdout)["file"]
    assert 2.9 < file["loop_seconds"] < 4.0
    assert f"repeats every {file['loop_seconds']:.3f} s" in file["note"]
    assert "note: The loop repeats every" in done.stderr


async def test_status_takes_a_unique_prefix_and_refuses_an_ambiguous_one(settings: Settings, transport: object) -> None:
    """A prefix of one stored request_id (with or without the model's `..._` part) names that job; a prefix several
    share is refused with the candidates; anything else is passed on unchanged (and checked as an id later)."""
    from mmaudio_mcp.errors import InvalidArgumentError
    from mmaudio_mcp.jobs import open_job_service
    from mmaudio_mcp.models import GenerationParams
    from mmaudio_mcp.terminal import full_request_id
    from tests.conftest import POLICY

    async with open_job_service(settings, http_transport=transport, policy=POLICY) as jobs:  # pyright: ignore[reportArgumentType]
        first = await jobs.generate(GenerationParams(prompt="a bell"), wait_seconds=0)
        second = await jobs.generate(GenerationParams(prompt="a gong"), wait_seconds=0)
        assert await full_request_id(jobs, first.request_id.partition("_")[2][:8]) == first.request_id
        assert await full_request_id(jobs, second.request_id[:33]) == second.request_id
        with pytest.raises(InvalidArgumentError, match="matches 2 jobs"):
            await full_request_id(jobs, "mmaudio-v2")
        assert await full_request_id(jobs, "nothing-like-it") == "nothing-like-it"


def test_serve_typed_at_a_terminal_says_it_waits_for_a_host_and_ctrl_d_stops_it(tmp_path: Path) -> None:
    """`mmaudio-mcp serve` with a terminal on stdin says why nothing happens and how to stop; Ctrl+D ends it."""
    import pty

    main_fd, child_fd = pty.openpty()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "MMAUDIO_STATE_DIR": str(tmp_path / "s")}
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox"]
    try:
        with subprocess.Popen(command, stdin=child_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as p:
            assert p.stderr is not None
            first = p.stderr.readline().decode()
            os.write(main_fd, b"\x04")  # Ctrl+D
            _out, err = p.communicate(timeout=30)
    finally:
        os.close(main_fd)
        os.close(child_fd)
    assert "waiting for a host" in first and "Ctrl+D" in first
    assert p.returncode == 0, err.decode()


def test_ctrl_c_at_a_terminal_stops_a_stdio_server_at_once_after_serving_a_message(tmp_path: Path) -> None:
    """`mmaudio-mcp serve` on a real terminal (a pty that is the process's controlling terminal) answers a message
    typed there, and Ctrl+C ends it with exit code 130 without waiting for another line (the SDK's stdin thread used
    to hold the exit until Enter)."""
    import fcntl
    import pty
    import termios

    def own_terminal() -> None:  # as a shell does for the job it starts: a session whose terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    main_fd, child_fd = pty.openpty()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "MMAUDIO_STATE_DIR": str(tmp_path / "s")}
    command = [sys.executable, "-m", "mmaudio_mcp", "serve", "--sandbox"]
    process = subprocess.Popen(
        command, stdin=child_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=own_terminal
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        assert "waiting for a host" in process.stderr.readline().decode()
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        os.write(main_fd, json.dumps(ping).encode() + b"\n")
        assert json.loads(process.stdout.readline()) == {"jsonrpc": "2.0", "id": 1, "result": {}}
        os.write(main_fd, b"\x03")  # Ctrl+C: the terminal sends SIGINT to its foreground process group
        assert process.wait(timeout=20) == 130, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
        os.close(main_fd)
        os.close(child_fd)
