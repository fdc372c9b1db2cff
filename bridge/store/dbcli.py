"""`bridge db upgrade | current`: the call log's schema migrations, run by an operator.

PostgreSQL deployments run `bridge db upgrade` before starting a new version (a server whose
schema is behind refuses to start); SQLite is upgraded by the server itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import sqlalchemy as sa

from bridge.errors import ConfigError
from bridge.settings import ENVIRONMENT, Settings
from bridge.store import database

ENV_NAME = next(name for name, field in ENVIRONMENT.items() if field == "database_url")


def database_url(explicit: str | None) -> str:
    """--database-url, else BRIDGE_DATABASE_URL, else the embedded SQLite default."""
    default = Settings.model_fields["database_url"].default
    return explicit or os.environ.get(ENV_NAME) or str(default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge db", description=__doc__)
    parser.add_argument("--database-url", help=f"default: ${ENV_NAME} or the SQLite file")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upgrade", help="apply every migration not yet applied")
    commands.add_parser("current", help="show the schema revision and the one this code needs")
    return parser


async def _run(command: str, url: str) -> int:
    engine = database.create_engine(url)
    try:
        if command == "upgrade":
            before = await database.current_revision(engine)
            await database.upgrade(engine)
            after = await database.current_revision(engine)
            print(f"database schema: {before or 'empty'} -> {after}")
        else:
            current = await database.current_revision(engine)
            head = database.head_revision()
            state = "up to date" if current == head else "needs `bridge db upgrade`"
            print(f"database schema: {current or 'empty'} (this version needs {head}: {state})")
            return 0 if current == head else 1
    finally:
        await engine.dispose()
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    url = database_url(args.database_url)
    try:
        return asyncio.run(_run(args.command, url))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"bridge db: {problem}", file=sys.stderr)
        return 2
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        print(f"bridge db: database unavailable: {database.describe(exc)}", file=sys.stderr)
        return 1
