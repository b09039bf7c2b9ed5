"""The ledger (re-issued calls, the spending guard, MCP tasks) in PostgreSQL, beside the jobs, for replicas.

Same rules as `mmaudio_mcp.ledger.Ledger` (SQLite), in the tables `mmaudio_calls`, `mmaudio_spend` and
`mmaudio_tasks` that `PostgresJobStore` creates (schema version 2), on its connection pool:

- a call whose replica died is joinable: a holder counts as alive while it holds an unexpired job lease (every
  replica renews its leases; a dead one's expire) or, on this machine, while its process runs;
- the spending guard counts under a transaction-scoped advisory lock per key, so two replicas cannot both take the
  last place;
- times are Unix seconds from each replica's clock, as in SQLite (keep replicas' clocks in sync, as NTP does).
"""

from __future__ import annotations

import os
import time
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mmaudio_mcp.ledger import REATTACH_SECONDS, Ledger, Spent, TaskRow, process_alive

if TYPE_CHECKING:
    from mmaudio_mcp.ledger import SpendCap
    from mmaudio_mcp.pgstore import PostgresJobStore

_TASK_COLUMNS: Final = "task_id, owner, tool, request_id, extra, created, updated, ttl_ms, status, message, outcome"


class PostgresLedger(Ledger):
    """A `Ledger` whose tables are in the replicas' PostgreSQL database (every method is overridden: the SQLite file
    of the base class is never opened)."""

    def __init__(self, store: PostgresJobStore) -> None:
        super().__init__(Path(os.devnull))
        self._store = store

    # --- calls ------------------------------------------------------------------------------------------------------

    async def abandoned(self, fingerprint: str, window: float = REATTACH_SECONDS) -> tuple[list[str], int]:
        async def find(conn: Any) -> tuple[list[str], int]:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT call_id, request_id, holder, state, EXISTS (SELECT 1 FROM mmaudio_jobs WHERE "
                    "lease_owner = c.holder AND lease_until > now()) AS leasing FROM mmaudio_calls c "
                    "WHERE fingerprint = $1 AND started >= $2 AND state IN ('abandoned', 'running') "
                    "ORDER BY started DESC FOR UPDATE OF c",
                    fingerprint,
                    time.time() - window,
                )
                alive = {row[0]: row[3] == "running" and (row[4] or process_alive(row[2]) is True) for row in rows}
                found = [row for row in rows if row[1] is not None and (row[3] == "abandoned" or not alive[row[0]])]
                for row in found:
                    await conn.execute("UPDATE mmaudio_calls SET state = 'taken' WHERE call_id = $1", row[0])
                return [row[1] for row in found], sum(alive.values())

        return await self._store.run(find)

    async def begin(self, call_id: str, fingerprint: str, holder: str, request_id: str | None) -> None:
        now = time.time()

        async def begin(conn: Any) -> None:
            await conn.execute("DELETE FROM mmaudio_calls WHERE started < $1", now - 86400)
            await conn.execute(
                "INSERT INTO mmaudio_calls (call_id, fingerprint, request_id, holder, state, started) "
                "VALUES ($1, $2, $3, $4, 'running', $5)",
                call_id,
                fingerprint,
                request_id,
                holder,
                now,
            )

        await self._store.run(begin)

    async def bind(self, call_id: str, request_id: str) -> None:
        sql = "UPDATE mmaudio_calls SET request_id = $1 WHERE call_id = $2"
        await self._store.run(lambda conn: conn.execute(sql, request_id, call_id))

    async def end(self, call_id: str, *, answered: bool) -> None:
        async def end(conn: Any) -> None:
            if not answered:
                await conn.execute(
                    "UPDATE mmaudio_calls SET state = 'abandoned' WHERE call_id = $1 AND state = 'running'", call_id
                )
                return
            request_id = await conn.fetchval(
                "UPDATE mmaudio_calls SET state = 'answered' WHERE call_id = $1 RETURNING request_id", call_id
            )
            if request_id is not None:
                await conn.execute(
                    "UPDATE mmaudio_calls SET state = 'answered' WHERE request_id = $1 AND state = 'abandoned'",
                    request_id,
                )

        await self._store.run(end)

    # --- spend ------------------------------------------------------------------------------------------------------

    async def reserve(self, owner: str | None, local_id: str, cap: SpendCap) -> Spent | None:
        if cap.jobs <= 0:
            return None

        async def reserve(conn: Any) -> Spent | None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "spend:" + (owner or ""))
                spent = await _spent(conn, owner or "", cap.window_seconds)
                if spent.count >= cap.jobs:
                    return spent
                await conn.execute(
                    "INSERT INTO mmaudio_spend (local_id, owner, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    local_id,
                    owner or "",
                    time.time(),
                )
                await conn.execute("DELETE FROM mmaudio_spend WHERE at < $1", time.time() - 7 * 86400)
            return None

        return await self._store.run(reserve)

    async def refund(self, local_id: str) -> None:
        await self._store.run(lambda conn: conn.execute("DELETE FROM mmaudio_spend WHERE local_id = $1", local_id))

    async def spent(self, owner: str | None, cap: SpendCap) -> Spent:
        return await self._store.run(lambda conn: _spent(conn, owner or "", cap.window_seconds))

    # --- tasks ------------------------------------------------------------------------------------------------------

    async def create_task(self, task: TaskRow) -> None:
        async def create(conn: Any) -> None:
            await conn.execute(
                "DELETE FROM mmaudio_tasks WHERE ttl_ms IS NOT NULL AND created + ttl_ms / 1000.0 < $1", time.time()
            )
            await conn.execute(
                f"INSERT INTO mmaudio_tasks ({_TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",  # noqa: S608 (constant)
                task.task_id,
                task.owner or "",
                *astuple(task)[2:],
            )

        await self._store.run(create)

    async def get_task(self, task_id: str) -> TaskRow | None:
        sql = f"SELECT {_TASK_COLUMNS} FROM mmaudio_tasks WHERE task_id = $1"  # noqa: S608 (constant)
        row = await self._store.run(lambda conn: conn.fetchrow(sql, task_id))
        return _task(row) if row else None

    async def delete_task(self, task_id: str) -> None:
        await self._store.run(lambda conn: conn.execute("DELETE FROM mmaudio_tasks WHERE task_id = $1", task_id))

    async def end_task(self, task_id: str, status: str, message: str, outcome: str | None) -> TaskRow | None:
        async def end(conn: Any) -> TaskRow | None:
            await conn.execute(
                "UPDATE mmaudio_tasks SET status = $1, message = $2, outcome = COALESCE($3, outcome), updated = $4 "
                "WHERE task_id = $5 AND status = 'working'",
                status,
                message,
                outcome,
                time.time(),
                task_id,
            )
            row = await conn.fetchrow(f"SELECT {_TASK_COLUMNS} FROM mmaudio_tasks WHERE task_id = $1", task_id)  # noqa: S608
            return _task(row) if row else None

        return await self._store.run(end)

    async def aclose(self) -> None:
        """Nothing of its own to close: the pool is the job store's."""


async def _spent(conn: Any, owner: str, window: float) -> Spent:
    row = await conn.fetchrow(
        "SELECT COUNT(*), MIN(at) FROM mmaudio_spend WHERE owner = $1 AND at >= $2", owner, time.time() - window
    )
    return Spent(row[0], row[1] + window if row[1] is not None else None)


def _task(row: Any) -> TaskRow:
    values = tuple(row)
    return TaskRow(values[0], values[1] or None, *values[2:])


__all__ = ["PostgresLedger"]
