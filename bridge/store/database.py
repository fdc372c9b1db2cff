"""Opening the call log's database and bringing its schema up to date (Alembic).

SQLite (the embedded default) is upgraded automatically at start; PostgreSQL is upgraded by
`bridge db upgrade`, and a server whose schema is behind refuses to start rather than write
rows the tables cannot hold.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.errors import ConfigError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT = 5.0
SQLITE_BUSY_MS = 2000  # how long a write waits for a lock before it counts as a failure
SCHEMA_CHECK_TIMEOUT = 10.0
LOCK = 0x62726964676501  # pg_advisory_xact_lock key held while migrating ("bridge" + 1)


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL, or ConfigError naming what is wrong with it (password hidden)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError([f"BRIDGE_DATABASE_URL: not a database URL ({exc})"]) from None
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ConfigError(
            [
                "BRIDGE_DATABASE_URL: use sqlite+aiosqlite:///path or "
                f"postgresql+asyncpg://..., got {parsed.drivername}://"
            ]
        )
    return parsed


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An async engine with bounded connects; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed,
        pool_pre_ping=True,  # connections killed by a database restart are replaced, not used
        pool_size=5,
        max_overflow=5,
        pool_timeout=CONNECT_TIMEOUT,
        connect_args={
            "timeout": CONNECT_TIMEOUT,
            "command_timeout": 30,
            "server_settings": {"application_name": "bridge"},
        },
    )


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (dashboard) never block the writer
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to `revision` on the engine's database."""

    def run(connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas (or init containers) upgrading at once: one migrates, the others wait
            # for its commit and then find nothing to do.
            await connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
        await connection.run_sync(run)


async def upgrade_url(url: str) -> None:
    """`upgrade` the database at `url` with an engine of its own (tests, the benchmark)."""
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for a database that was never migrated."""

    def read(connection: sa.Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def prepare(engine: AsyncEngine) -> None:
    """Start-up: upgrade SQLite; for PostgreSQL insist the schema is current.

    An unreachable PostgreSQL does not stop the bridge (calls go on; the writer retries);
    a reachable one with an old schema does (ConfigError: run `bridge db upgrade`).
    """
    if is_sqlite(engine):
        await upgrade(engine)
        return
    try:
        async with asyncio.timeout(SCHEMA_CHECK_TIMEOUT):
            revision = await current_revision(engine)
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        logger.error(
            "call log database unreachable at start (%s); calls will be served and their "
            "records retried",
            describe(exc),
        )
        return
    head = head_revision()
    if revision != head:
        raise ConfigError(
            [
                f"BRIDGE_DATABASE_URL: database schema is at {revision or 'nothing'}, "
                f"this version needs {head}: run `bridge db upgrade`"
            ]
        )


def describe(exc: BaseException) -> str:
    """A one-line reason for logs: the exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}"[:300]
