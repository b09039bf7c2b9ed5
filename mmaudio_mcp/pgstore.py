"""The job store in PostgreSQL, for several replicas behind a load balancer (`MMAUDIO_DATABASE_URL=postgresql://...`).

It keeps the same contract as `SqliteJobStore` (see `mmaudio_mcp.store` and docs/store-contract.md), with the same
pure `merge_records`:

- `save` reads the row with `SELECT ... FOR UPDATE`, merges and writes it in one transaction, fenced on the lease
  holder when asked, and sends `pg_notify('mmaudio_jobs', request_id)`, delivered at commit;
- `claim` is one conditional `UPDATE` on the database's clock (`now()`), so replicas' clocks need not agree;
- `renew` extends every lease of a holder in one statement;
- `listen(callback)` keeps one dedicated connection per process that LISTENs, so a waiter on any replica wakes as
  soon as the row changes (followers still re-read every tick, so a lost notification costs at most one tick);
- the schema is versioned in `mmaudio_meta` and migrated under an advisory lock (two replicas can start together).

asyncpg (no ORM) is imported only when this store is opened: stdio and SQLite users never load it. Install it with
the `postgres` extra: `pip install "mmaudio-mcp[postgres]"`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import logging
import secrets
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio

from mmaudio_mcp.errors import ConfigurationError, StoreError
from mmaudio_mcp.models import JobRecord, JobStatus
from mmaudio_mcp.store import LeaseLostError, merge_records

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 2
CHANNEL: Final = "mmaudio_jobs"
POKE: Final = "poll:"
"""A notification that asks the lease holder to poll now, before the request_id (a plain one says: row changed)."""
_LOCK_KEY: Final = 0x6D6D_6175_6469_6F  # the advisory lock that serializes migrations ("mmaudio")
_MIGRATIONS: Final[dict[int, str]] = {
    1: """
    CREATE TABLE IF NOT EXISTS mmaudio_jobs (
        local_id     text PRIMARY KEY,
        request_id   text UNIQUE,
        status       text NOT NULL,
        created_at   timestamptz NOT NULL,
        updated_at   timestamptz NOT NULL,
        record       jsonb NOT NULL,
        lease_owner  text,
        lease_until  timestamptz,
        version      bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS mmaudio_jobs_created ON mmaudio_jobs (created_at);
    CREATE INDEX IF NOT EXISTS mmaudio_jobs_status ON mmaudio_jobs (status);
    CREATE INDEX IF NOT EXISTS mmaudio_jobs_lease ON mmaudio_jobs (lease_owner);
    """,
    2: """
    CREATE TABLE IF NOT EXISTS mmaudio_calls (
        call_id     text PRIMARY KEY,
        fingerprint text NOT NULL,
        request_id  text,
        holder      text NOT NULL,
        state       text NOT NULL,
        started     double precision NOT NULL
    );
    CREATE INDEX IF NOT EXISTS mmaudio_calls_fingerprint ON mmaudio_calls (fingerprint, started);
    CREATE INDEX IF NOT EXISTS mmaudio_calls_request ON mmaudio_calls (request_id);
    CREATE TABLE IF NOT EXISTS mmaudio_spend (
        local_id text PRIMARY KEY,
        owner    text NOT NULL,
        at       double precision NOT NULL
    );
    CREATE INDEX IF NOT EXISTS mmaudio_spend_owner ON mmaudio_spend (owner, at);
    CREATE TABLE IF NOT EXISTS mmaudio_tasks (
        task_id    text PRIMARY KEY,
        owner      text NOT NULL,
        tool       text NOT NULL,
        request_id text NOT NULL,
        extra      text NOT NULL,
        created    double precision NOT NULL,
        updated    double precision NOT NULL,
        ttl_ms     bigint,
        status     text NOT NULL,
        message    text,
        outcome    text
    );
    """,
}
"""Schema changes by the version they lead to; each runs once, in order, in one transaction."""
_TERMINAL: Final = [status.value for status in JobStatus if status.is_terminal]


class _Conn(Protocol):
    """The part of asyncpg's Connection this module uses."""

    async def execute(self, query: str, *args: object) -> str: ...
    async def fetch(self, query: str, *args: object) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: object) -> Any: ...
    async def fetchval(self, query: str, *args: object) -> Any: ...
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    async def add_listener(self, channel: str, callback: Callable[..., object]) -> None: ...
    def add_termination_listener(self, callback: Callable[..., object]) -> None: ...
    def is_closed(self) -> bool: ...
    async def close(self) -> None: ...


class _Pool(Protocol):
    def acquire(self) -> AbstractAsyncContextManager[_Conn]: ...
    async def close(self) -> None: ...


def redacted(url: str) -> str:
    """The database URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")
    except ImportError as exc:
        raise ConfigurationError(
            "MMAUDIO_DATABASE_URL names a PostgreSQL database, but the PostgreSQL driver is not installed. Install "
            'it with `pip install "mmaudio-mcp[postgres]"` (or unset MMAUDIO_DATABASE_URL to use the local store).'
        ) from exc


class PostgresJobStore:
    """A `JobStore` in PostgreSQL: a small connection pool, opened on first use, plus one LISTEN connection."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.path = redacted(url)  # what messages name, as SqliteJobStore names its file
        self._pool_size = pool_size
        self._pool: _Pool | None = None
        self._listener: _Conn | None = None
        self._callbacks: list[Callable[[str], None]] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._lock = anyio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> PostgresJobStore:
        """Connect (and migrate) now, so that a problem shows at once."""
        store = cls(url)
        await store._ready()
        return store

    # --- the contract ----------------------------------------------------------------------------------------------

    async def save(self, record: JobRecord, *, fence: str | None = None) -> JobRecord:
        for attempt in range(5):
            try:
                return await self._with(lambda conn: _merge_row(conn, record, fence))
            except StoreError as exc:
                # Two processes inserting the same new row at once: the loser merges into the winner's row.
                if not isinstance(exc.__cause__, _asyncpg().UniqueViolationError) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def get(self, request_id: str) -> JobRecord | None:
        rows = await self._records("SELECT record::text FROM mmaudio_jobs WHERE request_id = $1", request_id)
        return rows[0] if rows else None

    async def recent(self, limit: int = 20) -> list[JobRecord]:
        return await self._records("SELECT record::text FROM mmaudio_jobs ORDER BY created_at DESC LIMIT $1", limit)

    async def unfinished(self) -> list[JobRecord]:
        sql = "SELECT record::text FROM mmaudio_jobs WHERE status <> ALL($1::text[]) ORDER BY created_at"
        return await self._records(sql, _TERMINAL)

    async def claim(self, request_id: str, holder: str, seconds: float) -> bool:
        sql = (
            "UPDATE mmaudio_jobs SET lease_owner = $2, lease_until = now() + make_interval(secs => $3) "
            "WHERE request_id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now())"
        )
        status = await self._with(lambda conn: conn.execute(sql, request_id, holder, seconds))
        return status.endswith(" 1")

    async def renew(self, holder: str, seconds: float) -> set[str]:
        sql = (
            "UPDATE mmaudio_jobs SET lease_until = now() + make_interval(secs => $2) WHERE lease_owner = $1 "
            "RETURNING request_id"
        )
        rows = await self._with(lambda conn: conn.fetch(sql, holder, seconds))
        return {row[0] for row in rows}

    async def release(self, request_id: str, holder: str) -> None:
        sql = (
            "UPDATE mmaudio_jobs SET lease_owner = NULL, lease_until = NULL WHERE request_id = $1 AND lease_owner = $2"
        )
        await self._with(lambda conn: conn.execute(sql, request_id, holder))

    async def lease(self, request_id: str) -> tuple[str | None, float | None, int]:
        """The row's lease holder, lease expiry (Unix seconds) and version (for diagnostics and tests)."""
        sql = (
            "SELECT lease_owner, extract(epoch FROM lease_until)::float8, version FROM mmaudio_jobs "
            "WHERE request_id = $1"
        )
        row = await self._with(lambda conn: conn.fetchrow(sql, request_id))
        return (row[0], row[1], row[2]) if row else (None, None, 0)

    async def owner_of(self, api_key: str) -> str:
        async def salt(conn: _Conn) -> bytes:
            await conn.execute(
                "INSERT INTO mmaudio_meta (name, value) VALUES ('owner_salt', $1) ON CONFLICT DO NOTHING",
                secrets.token_hex(16),
            )
            return bytes.fromhex(await conn.fetchval("SELECT value FROM mmaudio_meta WHERE name = 'owner_salt'"))

        return hmac.new(await self._with(salt), api_key.encode(), hashlib.sha256).hexdigest()[:32]

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(request_id)` whenever any process writes that job's row (from NOTIFY, at its commit).
        If the LISTEN connection drops (a database restart, a failover), it is opened again in the background,
        every second until it works; meanwhile the re-reads every tick still see every change."""
        self._callbacks.append(callback)
        await self._ready()
        await self._connect_listener()

    async def _connect_listener(self) -> None:
        async with self._lock:
            if self._closed or (self._listener is not None and not self._listener.is_closed()):
                return
            try:
                conn: _Conn = await _asyncpg().connect(self.url)
                await conn.add_listener(CHANNEL, self._notified)
                conn.add_termination_listener(self._listener_lost)
            except (OSError, _asyncpg().PostgresError, _asyncpg().InterfaceError) as exc:
                raise self._error(exc) from exc
            self._listener = conn

    async def _reconnect_listener(self) -> None:
        while not self._closed:
            await anyio.sleep(1.0)
            try:
                await self._connect_listener()
            except StoreError as exc:
                logger.warning("could not listen again on %s: %s", self.path, exc.message)
                continue
            logger.warning("listening again on %s", self.path)
            return

    async def poke(self, request_id: str) -> None:
        """Ask whichever replica holds this job's lease to poll it now (a webhook reached another replica)."""
        await self._with(lambda conn: conn.execute("SELECT pg_notify($1, $2)", CHANNEL, POKE + request_id))

    async def run(self, work: Callable[[_Conn], Awaitable[_T]]) -> _T:
        """Run `work(connection)` on a pooled connection (the ledger's tables live beside the jobs)."""
        return await self._with(work)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
            pool, self._pool = self._pool, None
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        with anyio.CancelScope(shield=True):
            if listener is not None and not listener.is_closed():
                await listener.close()
            if pool is not None:
                await pool.close()

    # --- plumbing ---------------------------------------------------------------------------------------------------

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for callback in self._callbacks:
            try:
                callback(payload)
            except Exception:  # one listener's bug must not stop the others
                logger.exception("job change callback failed for %s", payload)

    def _listener_lost(self, _conn: object) -> None:
        if self._closed:
            return
        logger.warning("lost the LISTEN connection to %s; changes are seen by re-reading until it is back", self.path)
        # asyncpg calls this from the event loop (asyncio only); the reconnection runs beside whatever is running.
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect_listener())

    async def _records(self, sql: str, *args: object) -> list[JobRecord]:
        rows = await self._with(lambda conn: conn.fetch(sql, *args))
        return [JobRecord.model_validate_json(row[0]) for row in rows]

    async def _with(self, work: Callable[[_Conn], Awaitable[_T]]) -> _T:
        pool = await self._ready()
        pg = _asyncpg()
        try:
            async with pool.acquire() as conn:
                return await work(conn)
        except (OSError, pg.PostgresError, pg.InterfaceError) as exc:
            raise self._error(exc) from exc

    async def _ready(self) -> _Pool:
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._closed:
                raise RuntimeError("the job store is closed")
            if self._pool is None:
                pg = _asyncpg()
                try:
                    pool: _Pool = await pg.create_pool(self.url, min_size=1, max_size=self._pool_size)
                    async with pool.acquire() as conn:
                        await _migrate(conn, self.path)
                except (OSError, pg.PostgresError, pg.InterfaceError) as exc:
                    raise self._error(exc) from exc
                self._pool = pool
            return self._pool

    def _error(self, exc: BaseException) -> StoreError:
        detail = str(exc).replace(self.url, self.path) or type(exc).__name__
        if isinstance(exc, OSError):
            return StoreError(
                f"The job database {self.path} cannot be reached ({detail}). Check that PostgreSQL runs there and "
                "that MMAUDIO_DATABASE_URL is right; jobs already submitted are kept in it."
            )
        return StoreError(
            f"The job database {self.path} refused a request ({type(exc).__name__}: {detail}). Check the database "
            "and the user's rights, then try again."
        )


async def _merge_row(conn: _Conn, record: JobRecord, fence: str | None) -> JobRecord:
    """Read (locking the row), merge and write in one transaction; wake every replica's waiters at commit."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT local_id, record::text, lease_owner FROM mmaudio_jobs WHERE local_id = $1 OR "
            "(request_id IS NOT NULL AND request_id = $2) ORDER BY local_id = $1 DESC LIMIT 1 FOR UPDATE",
            record.local_id,
            record.request_id,
        )
        if fence is not None and row is not None and row[2] != fence:
            raise LeaseLostError(f"{record.request_id} is leased by another process")
        stored = JobRecord.model_validate_json(row[1]) if row else None
        merged = merge_records(stored, record)
        values = (merged.request_id, merged.status.value, merged.updated_at, merged.model_dump_json())
        if row is None:
            await conn.execute(
                "INSERT INTO mmaudio_jobs (local_id, request_id, status, created_at, updated_at, record, version) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb, 1)",
                merged.local_id,
                values[0],
                values[1],
                merged.created_at,
                *values[2:],
            )
        else:
            await conn.execute(
                "UPDATE mmaudio_jobs SET request_id = $1, status = $2, updated_at = $3, record = $4::jsonb, "
                "version = version + 1 WHERE local_id = $5",
                *values,
                row[0],
            )
        if merged.request_id is not None:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, merged.request_id)
    return merged


async def _migrate(conn: _Conn, where: str) -> None:
    """Bring the schema to SCHEMA_VERSION, once, under an advisory lock (replicas may start at the same moment)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute("CREATE TABLE IF NOT EXISTS mmaudio_meta (name text PRIMARY KEY, value text NOT NULL)")
        found = await conn.fetchval("SELECT value FROM mmaudio_meta WHERE name = 'schema_version'")
        version = int(found) if found is not None else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{where} was written by a newer mmaudio-mcp (schema {version}); upgrade mmaudio-mcp.")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(_MIGRATIONS[target])
            logger.info("job database %s: schema migrated to version %d", where, target)
        await conn.execute(
            "INSERT INTO mmaudio_meta (name, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            str(SCHEMA_VERSION),
        )


__all__ = ["CHANNEL", "POKE", "SCHEMA_VERSION", "PostgresJobStore", "redacted"]
