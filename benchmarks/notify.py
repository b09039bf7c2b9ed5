"""Wake-up latency across replicas: how long after a job's row is written does a waiter in ANOTHER process hear of it.

Debian's PostgreSQL is started in a temp folder (unix socket only, as the tests do). A listener child process opens
`PostgresJobStore.listen` and prints `time.time()` for each notification; this process saves N job rows with
`PostgresJobStore.save` (one `SELECT ... FOR UPDATE`, merge, write and `pg_notify` in one transaction), `--gap` ms
apart, stamping the wall clock just before each save call and just after it returns (the commit). Reported: from the
save call's start to the wake-up in the other process (what a waiter gains over re-reading each tick), and from the
commit to the wake-up (negative when the notification beats the commit's acknowledgement back to the writer).

Run from the repo root: `.venv/bin/python benchmarks/notify.py` (`--quick`: 50 rows).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime

import anyio
from _common import ROOT, command_line, percentile, print_header, table, write_results

LISTENER = """
import sys, time, anyio
from mmaudio_mcp.pgstore import PostgresJobStore

async def main() -> None:
    store = await PostgresJobStore.open(sys.argv[1])
    done = anyio.Event()
    seen = 0
    def heard(request_id: str) -> None:
        nonlocal seen
        print(f"{time.time():.6f} {request_id}", flush=True)
        seen += 1
        if seen == int(sys.argv[2]):
            done.set()
    await store.listen(heard)
    print("ready", flush=True)
    with anyio.fail_after(120):
        await done.wait()
    await store.aclose()

anyio.run(main)
"""


async def run(url: str, rows: int, gap: float) -> dict[str, object]:
    from mmaudio_mcp.models import GenerationParams, JobRecord, JobStatus
    from mmaudio_mcp.pgstore import PostgresJobStore

    listener = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", LISTENER, url, str(rows)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert listener.stdout is not None
    assert await anyio.to_thread.run_sync(listener.stdout.readline) == "ready\n"
    store = await PostgresJobStore.open(url)
    sent: dict[str, tuple[float, float]] = {}
    now = datetime.now(UTC)
    for n in range(rows):
        rid = f"mmaudio-v2-text-to-audio_bench-{n:06d}"
        record = JobRecord(
            local_id=f"bench-{n}",
            request_id=rid,
            status=JobStatus.COMPLETED,
            params=GenerationParams(prompt="a bell"),
            created_at=now,
            updated_at=now,
        )
        before = time.time()
        await store.save(record)
        sent[rid] = (before, time.time())
        await anyio.sleep(gap)
    out, _ = await anyio.to_thread.run_sync(listener.communicate)
    await store.aclose()
    heard = {rid: float(stamp) for stamp, rid in (line.split() for line in out.splitlines() if line.strip())}
    from_start = [(heard[rid] - start) * 1000 for rid, (start, _) in sent.items() if rid in heard]
    from_commit = [(heard[rid] - end) * 1000 for rid, (_, end) in sent.items() if rid in heard]
    saves = [(end - start) * 1000 for start, end in sent.values()]
    return {
        "rows": rows,
        "heard": len(heard),
        "save_start_to_wake_ms": {p: percentile(from_start, q) for p, q in (("p50", 50), ("p99", 99), ("max", 100))},
        "commit_to_wake_ms": {p: percentile(from_commit, q) for p, q in (("p50", 50), ("p99", 99), ("max", 100))},
        "save_ms": {p: percentile(saves, q) for p, q in (("p50", 50), ("p99", 99))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between saves (default 0.02)")
    parser.add_argument("--quick", action="store_true", help="50 rows")
    args = parser.parse_args()
    if args.quick:
        args.rows = 50
    sys.path.insert(0, str(ROOT))
    from tests.services import start_postgres

    facts = print_header(
        f"NOTIFY wake-ups: {args.rows} saves {args.gap * 1000:g} ms apart, listener in another process"
    )
    with start_postgres() as postgres:
        report = anyio.run(run, postgres.database("notify"), args.rows, args.gap)
    rows = [
        [label, f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.2f}" if "max" in r else "-"]
        for label, r in (
            ("save call start -> wake-up in the other process", report["save_start_to_wake_ms"]),
            ("save returned (committed) -> wake-up", report["commit_to_wake_ms"]),
            ("save itself (SELECT FOR UPDATE, merge, write, notify, commit)", report["save_ms"]),
        )
    ]
    print(table(["ms", "p50", "p99", "max"], rows))
    print(f"heard {report['heard']} of {report['rows']}")
    print(f"command: {command_line()}")
    write_results("notify", {"command": command_line(), "machine": facts, **report})


if __name__ == "__main__":
    main()
