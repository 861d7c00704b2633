"""Database engines for both backends, chosen by one URL.

``Database`` owns two engines:

* ``reader``: a pool for reads only (autocommit on PostgreSQL).
* ``writer``: for writes.  On PostgreSQL a pool of its own, whose connections
  plan every statement for its parameters (``plan_cache_mode``).
  On SQLite it holds exactly one connection, and every transaction on it starts
  with ``BEGIN IMMEDIATE``: SQLite allows one writer at a time, and taking the
  write lock up front (instead of upgrading a read lock mid-transaction) is what
  keeps concurrent writers from failing with "database is locked".  Writers
  queue on the pool instead.

SQLite runs in WAL mode (readers never block the writer) with
``synchronous=FULL`` by default, so a committed transaction survives a power
loss, not only a process crash: Parley acknowledges a message only after its
commit, and that promise must hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from parley.errors import ConfigError

__all__ = ["Backend", "Database", "describe_db_error", "normalize_url"]

Backend = Literal["sqlite", "postgresql"]


def describe_db_error(exc: BaseException) -> str:
    """One line for a driver's error.  SQLAlchemy wraps it with the statement and a
    link to its documentation, which belong in a debug log, not in the error an
    operator reads."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__


def normalize_url(url: str) -> URL:
    """Turn a user-facing URL into the async driver's URL.

    ``sqlite:///path/to.db`` -> aiosqlite; ``postgresql://`` or ``postgres://``
    -> asyncpg.  Raises ConfigError for anything else.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types here
        raise ConfigError(f"not a database URL: {exc}") from None
    name = parsed.drivername
    if name in ("sqlite", "sqlite+aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if name in ("postgresql", "postgres", "postgresql+asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ConfigError(f"unsupported database {name!r}: use sqlite:/// or postgresql://")


_STARTUP_LOCK = 0x5061726C6579  # "Parley"


WRITER_IDLE_TX_TIMEOUT_MS = 5000


class SqliteAppender:
    """SQLite's connection for the message append, next to the pooled writer.

    Used from the event loop's thread, and for its COMMIT from one worker
    thread at a time, never both at once: ``lock`` is held for a whole append,
    and ``committing`` is a COMMIT still running for an append that was
    cancelled while waiting for it (the next one waits for it first).
    ``busy_timeout`` 0: a write lock held by the pooled writer makes BEGIN fail
    at once instead of blocking the loop.
    """

    def __init__(self, path: str, synchronous: str) -> None:
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={synchronous}")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA busy_timeout=0")
        self.conn = c
        self.lock = asyncio.Lock()
        self.committing: asyncio.Future[None] | None = None

    async def settle(self) -> None:
        """Wait for a COMMIT left running by a cancelled append (its batch was
        never acknowledged, so its outcome is not needed)."""
        pending = self.committing
        if pending is None:
            return
        try:
            await asyncio.wait({pending})
        finally:
            if pending.done():
                self.committing = None
                if not pending.cancelled():
                    pending.exception()

    async def close(self) -> None:
        async with self.lock:
            await self.settle()
            self.conn.close()


class Database:
    """The engines of one node; built by the composition root, closed by it."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        sqlite_synchronous: str = "FULL",
        pg_schema: str | None = None,
        echo: bool = False,
    ) -> None:
        self.url = normalize_url(url)
        self.pg_schema = pg_schema
        """The PostgreSQL schema on the search path (None: the role's default)."""
        self._sqlite_synchronous = sqlite_synchronous
        self._appender: SqliteAppender | None = None
        self._held: list[tuple[AsyncConnection, Any]] = []
        self._keep = pool_size // 2  # a pool of one keeps nothing: other writers need it
        # One startup lock per schema: clusters sharing a database in different schemas
        # (e.g. test runs) do not wait for each other's start-up.
        self._startup_lock = _STARTUP_LOCK ^ zlib.crc32((pg_schema or "").encode())
        self.backend: Backend = (
            "sqlite" if self.url.drivername.startswith("sqlite") else "postgresql"
        )
        if self.backend == "sqlite":
            self.reader = self._sqlite_engine(
                pool_size=max(2, min(pool_size, 8)), immediate=False,
                synchronous=sqlite_synchronous, echo=echo,
            )
            self.writer = self._sqlite_engine(
                pool_size=1, immediate=True, synchronous=sqlite_synchronous, echo=echo,
            )
        else:
            settings = {"search_path": pg_schema} if pg_schema else {}
            # Reads run in autocommit: no BEGIN/ROLLBACK round trips around each
            # query (every statement sees its own snapshot either way, as under
            # READ COMMITTED).  No pre-ping on either pool: SQLAlchemy's ping is
            # BEGIN + ";" + ROLLBACK, three round trips before every use.  A
            # connection the server dropped fails its first statement instead
            # (the caller answers "unavailable, retry") and the pool discards
            # every connection older than that failure.  Profiled at 1,000 msg/s:
            # pings were 3-12% of the node's CPU, transaction starts 13%.
            # No overflow on either pool: an overflow connection is closed when
            # it is returned to a full pool and reopened by the next waiter, so a
            # burst of reads (1,000 devices connecting: memberships, send rules,
            # presence) turned into a connect per read and the pool stayed
            # saturated for ~17 s (4,000 concurrent reads: 6.4 s with 10+10
            # overflow, 3.7 s with 10 fixed, 2.5 s with 20 fixed).
            self.reader = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=0,
                isolation_level="AUTOCOMMIT", echo=echo,
                connect_args={"server_settings": settings} if settings else {},
            )
            # Writes plan every statement for its actual parameters: a generic
            # plan of the batch's msg-id lookup, chosen while the table was
            # small, scans a tenant's rows comparing each with every id of the
            # batch (65-95 ms per batch).  A connection setting, not a
            # per-transaction SET LOCAL, which cost a round trip per batch.
            # A writer's transaction lasts milliseconds; one left idle means its
            # node was cut off mid-commit (a partition): PostgreSQL ends it after
            # a few seconds, so its row locks (the conversation's last_seq) stop
            # blocking every other node's commits for that conversation -- the
            # partition test saw sends wait ~45 s after healing without this.
            self.writer = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=0, echo=echo,
                connect_args={"server_settings": {
                    **settings, "plan_cache_mode": "force_custom_plan",
                    "idle_in_transaction_session_timeout": str(WRITER_IDLE_TX_TIMEOUT_MS),
                }},
            )

    @property
    def oneshot(self) -> AsyncEngine:
        """The engine for a write of one statement: on PostgreSQL the autocommit pool,
        where the statement is its own transaction (one round trip instead of BEGIN,
        statement, COMMIT); on SQLite the writer."""
        return self.reader if self.backend == "postgresql" else self.writer

    def _sqlite_engine(
        self, *, pool_size: int, immediate: bool, synchronous: str, echo: bool
    ) -> AsyncEngine:
        engine = create_async_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=60,
            echo=echo,
            connect_args={"timeout": 30},
        )
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide where transactions start.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def startup_lock(self) -> AsyncIterator[None]:
        """Held while a node migrates and bootstraps (tenant, signing keys), so nodes
        starting together on one PostgreSQL database (and schema) do it one after the other.
        A PostgreSQL advisory lock (released with its connection, also on a crash);
        SQLite serialises writers itself."""
        if self.backend != "postgresql":
            yield
            return
        # On the autocommit pool: the lock is the session's, and no transaction
        # stays open (idle) while the bootstrap runs on other connections.
        async with self.reader.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._startup_lock})
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._startup_lock})

    def sqlite_appender(self) -> SqliteAppender:
        """SQLite only: the message append's own connection (see
        ``MessageStore._append_sqlite``), opened on first use, closed by ``close``."""
        if self._appender is None:
            path = self.url.database
            if not path or path == ":memory:":
                raise ValueError("the SQLite appender needs a database file")
            self._appender = SqliteAppender(path, self._sqlite_synchronous)
        return self._appender

    async def lease_writer(
        self, prefer: Callable[[Any], bool] | None = None
    ) -> tuple[AsyncConnection, Any]:
        """A writer connection and its driver's connection (asyncpg), for the
        PostgreSQL append; give it back with ``release_writer``, or invalidate and
        close it when it broke.

        Kept out of the pool between appends (up to half the pool's size): a
        checkout and return through SQLAlchemy's pool and its greenlet cost
        ~105 µs of the node's CPU per commit (measured: ``SELECT 1`` 96 µs alone,
        199 µs with the checkout), more than a quarter of a message's CPU at
        1,000 msg/s, where nearly every message is a commit of its own.

        ``prefer``: a test of the driver's connection; the most recently kept
        connection that passes it is taken first, else the most recent one."""
        held = self._held
        if held:
            if prefer is not None:
                for i in range(len(held) - 1, -1, -1):
                    if prefer(held[i][1]):
                        return held.pop(i)
            return held.pop()
        conn = await self.writer.connect()
        try:
            raw = (await conn.get_raw_connection()).driver_connection
        except BaseException:
            await conn.close()
            raise
        return conn, raw

    def keeps_another_writer(self) -> bool:
        """Whether ``release_writer`` would keep one more connection now (else it
        goes back to the pool, to writers that expect its settings unchanged)."""
        return len(self._held) < self._keep

    async def release_writer(self, lease: tuple[AsyncConnection, Any]) -> None:
        """Take back a connection from ``lease_writer`` that is still usable."""
        if len(self._held) < self._keep:
            self._held.append(lease)
        else:
            await lease[0].close()

    async def close(self) -> None:
        """Close every pooled connection; call once, at shutdown."""
        held, self._held = self._held, []
        for conn, _ in held:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._appender is not None:
            await self._appender.close()
            self._appender = None
        await self.reader.dispose()
        if self.writer is not self.reader:
            await self.writer.dispose()
