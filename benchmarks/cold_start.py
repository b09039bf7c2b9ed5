"""Stdio cold start of mmaudio-mcp against a bare 3-tool server on the same SDK, measured side by side.

Each run spawns both servers, one after the other (the order alternates a-b, b-a, ... so neither always goes
first), speaks raw newline-delimited JSON-RPC (`initialize`, `notifications/initialized`, `tools/list`) and
times spawn -> the `tools/list` response line. RSS is read from /proc/<pid>/status right after that answer.
Every spawn gets a fresh temporary HOME, output and state folder, so each is a first start.

Run from the repo root: `.venv/bin/python benchmarks/cold_start.py [--runs 10]`.
Raw samples and the summary go to benchmarks/results/cold_start.json (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = ROOT / "benchmarks" / "results" / "cold_start.json"
PROTOCOL_VERSION: Final = "2025-11-25"
ANSWER_TIMEOUT: Final = 20.0  # seconds from spawn to the tools/list answer
EXIT_TIMEOUT: Final = 10.0  # seconds from closing stdin to exit, then kill
SERVERS: Final[dict[str, list[str]]] = {
    "mmaudio": [sys.executable, "-m", "mmaudio_mcp"],
    "bare": [sys.executable, "benchmarks/bare_server.py"],
}


@dataclass
class Sample:
    """One spawn of one server."""

    server: str
    run: int
    position: int  # 0 = spawned first in its run, 1 = second
    init_ms: float  # spawn -> initialize response
    cold_start_ms: float  # spawn -> tools/list response
    rss_mib: float
    tools: list[str]
    tools_list_bytes: int  # the `result` object, compact JSON, UTF-8
    exit_code: int | None
    killed: bool


class ServerError(RuntimeError):
    """The server died, spoke out of turn, or was too slow."""


class LineReader:
    """Read newline-delimited messages from a pipe without ever blocking past a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._buffer = b""

    def line(self, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ServerError("timed out waiting for a line on stdout")
            if not self._selector.select(left):
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise ServerError("stdout closed before the answer")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def response(self, request_id: int, deadline: float) -> dict[str, Any]:
        """Skip notifications (there should be none) until the response to request_id."""
        while True:
            message: dict[str, Any] = json.loads(self.line(deadline))
            if message.get("id") == request_id:
                if "error" in message:
                    raise ServerError(f"JSON-RPC error: {message['error']}")
                return message

    def close(self) -> None:
        self._selector.close()


def _send(stdin: IO[bytes], message: dict[str, Any]) -> None:
    stdin.write(json.dumps(message).encode() + b"\n")
    stdin.flush()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise ServerError(f"no VmRSS for pid {pid}")


def _stop(process: subprocess.Popen[bytes]) -> tuple[int | None, bool]:
    """Close stdin (the stdio way to say goodbye), wait, and kill if it lingers."""
    if process.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    try:
        return process.wait(timeout=EXIT_TIMEOUT), False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=EXIT_TIMEOUT)
        return None, True


def measure(server: str, run: int, position: int) -> Sample:
    """Spawn one server, handshake, list tools, and time it."""
    with tempfile.TemporaryDirectory(prefix="mmaudio-bench-") as temp:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": temp,
            "MMAUDIO_OUTPUT_DIR": f"{temp}/out",
            "MMAUDIO_STATE_DIR": f"{temp}/state",
        }
        with open(f"{temp}/stderr.log", "wb") as stderr:
            started = time.perf_counter()
            process = subprocess.Popen(
                SERVERS[server], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
            assert process.stdin is not None
            assert process.stdout is not None
            reader = LineReader(process.stdout)
            deadline = started + ANSWER_TIMEOUT
            try:
                _send(
                    process.stdin,
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": PROTOCOL_VERSION,
                            "capabilities": {},
                            "clientInfo": {"name": "cold-start-bench", "version": "0"},
                        },
                    },
                )
                reader.response(1, deadline)
                init_ms = (time.perf_counter() - started) * 1000
                _send(process.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
                _send(process.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
                listing = reader.response(2, deadline)
                cold_start_ms = (time.perf_counter() - started) * 1000
                rss = _rss_mib(process.pid)
            except (ServerError, OSError, ValueError) as exc:
                process.kill()
                process.wait(timeout=EXIT_TIMEOUT)
                log = Path(f"{temp}/stderr.log").read_text(errors="replace")[-2000:]
                raise ServerError(f"{server} run {run}: {exc}\n--- stderr tail ---\n{log}") from exc
            finally:
                reader.close()
            exit_code, killed = _stop(process)
            process.stdout.close()
    result = listing["result"]
    return Sample(
        server=server,
        run=run,
        position=position,
        init_ms=init_ms,
        cold_start_ms=cold_start_ms,
        rss_mib=rss,
        tools=[tool["name"] for tool in result["tools"]],
        tools_list_bytes=len(json.dumps(result, separators=(",", ":")).encode()),
        exit_code=exit_code,
        killed=killed,
    )


def _p90(values: list[float]) -> float:
    """90th percentile, linear interpolation between closest ranks (statistics.quantiles, inclusive)."""
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def summarize(samples: list[Sample]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for server in SERVERS:
        mine = [s for s in samples if s.server == server]
        times = [s.cold_start_ms for s in mine]
        summary[server] = {
            "runs": len(mine),
            "median_ms": statistics.median(times),
            "p90_ms": _p90(times),
            "min_ms": min(times),
            "median_init_ms": statistics.median(s.init_ms for s in mine),
            "median_rss_mib": statistics.median(s.rss_mib for s in mine),
            "tools_list_bytes": mine[-1].tools_list_bytes,
            "tools": mine[-1].tools,
            "clean_exits": sum(s.exit_code == 0 for s in mine),
        }
    ours, bare = summary["mmaudio"], summary["bare"]
    by_run = {(s.server, s.run): s for s in samples}
    runs = sorted({s.run for s in samples})
    paired = [by_run["mmaudio", r].cold_start_ms / by_run["bare", r].cold_start_ms for r in runs]
    summary["ratio"] = {
        "time": ours["median_ms"] / bare["median_ms"],
        "time_paired_median": statistics.median(paired),
        "rss": ours["median_rss_mib"] / bare["median_rss_mib"],
        "tools_list_bytes": ours["tools_list_bytes"] / bare["tools_list_bytes"],
    }
    return summary


def render(summary: dict[str, Any]) -> str:
    rows = [
        "| server | median cold start (ms) | p90 (ms) | median RSS (MiB) | tools/list bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for server in SERVERS:
        s = summary[server]
        rows.append(
            f"| {server} | {s['median_ms']:.0f} | {s['p90_ms']:.0f} | {s['median_rss_mib']:.1f} | "
            f"{s['tools_list_bytes']} |"
        )
    ratio = summary["ratio"]
    rows += [
        "",
        f"mmaudio/bare: time x{ratio['time']:.2f} (median of per-run ratios x{ratio['time_paired_median']:.2f}), "
        f"RSS x{ratio['rss']:.2f}, tools/list bytes x{ratio['tools_list_bytes']:.1f}",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="measured runs per server (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs first, to warm caches (default 1)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    order = list(SERVERS)
    samples: list[Sample] = []
    for run in range(-args.warmup, args.runs):
        pair = order if run % 2 == 0 else order[::-1]
        measured = [measure(server, run, position) for position, server in enumerate(pair)]
        if run >= 0:
            samples += measured
        label = f"run {run}" if run >= 0 else "warm-up"
        print(f"{label}: " + ", ".join(f"{s.server} {s.cold_start_ms:.0f} ms" for s in measured), file=sys.stderr)

    summary = summarize(samples)
    command = shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv])
    print(f"command: {command}")
    for server, argv in SERVERS.items():
        print(f"  {server}: {shlex.join(argv)}")
    print(f"machine: nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, {platform.machine()}")
    print()
    print(render(summary))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": command,
        "servers": SERVERS,
        "protocol_version": PROTOCOL_VERSION,
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_after": os.getloadavg(),
        },
        "summary": summary,
        "samples": [asdict(s) for s in samples],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
