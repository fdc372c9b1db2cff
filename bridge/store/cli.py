"""`bridge calls list | show | tail | export | prune`: the call log from a terminal.

`list`, `show`, `export` and `prune` read the database (BRIDGE_DATABASE_URL); `tail` follows a
running server's live feed (`--url`, BRIDGE_ADMIN_TOKEN), because with SQLite only the server
knows what is happening now.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, TextIO

import sqlalchemy as sa

from bridge.errors import ConfigError
from bridge.settings import ENVIRONMENT
from bridge.store import database, queries, report
from bridge.store.dbcli import database_url
from bridge.store.tail import follow

TOKEN_ENV = next(name for name, field in ENVIRONMENT.items() if field == "admin_token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge calls", description=__doc__)
    parser.add_argument("--database-url", help="default: $BRIDGE_DATABASE_URL or the SQLite file")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="calls, newest first")
    listing.add_argument("--number", help="called number (or part of it)")
    listing.add_argument("--caller", help="calling number (or part of it)")
    listing.add_argument("--profile")
    listing.add_argument("--since", help="e.g. 1h, 7d, 2026-11-01, epoch seconds")
    listing.add_argument("--until")
    listing.add_argument("--end-reason")
    listing.add_argument("--search", help="words said by either side")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="JSON lines, one call each")

    show = commands.add_parser("show", help="one call: transcript, timing, events")
    show.add_argument("call_sid")
    show.add_argument("--json", action="store_true")

    tail = commands.add_parser("tail", help="follow live calls as they happen")
    tail.add_argument("--url", default="http://127.0.0.1:8080", help="the bridge server")
    tail.add_argument("--count", type=int, help="exit after this many calls ended")

    export = commands.add_parser("export", help="one call as a file")
    export.add_argument("call_sid")
    export.add_argument("--format", choices=("json", "txt"), default="json")
    export.add_argument("--output", "-o", help="file to write (default: stdout)")

    prune = commands.add_parser("prune", help="delete old calls")
    prune.add_argument("--older-than", required=True, help="e.g. 30d, 12w")
    prune.add_argument("--dry-run", action="store_true", help="count, do not delete")
    return parser


async def run(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "tail":
        token = os.environ.get(TOKEN_ENV) or None
        return await follow(args.url.rstrip("/"), token, out, count=args.count)
    engine = database.create_engine(database_url(args.database_url))
    try:
        if args.command == "list":
            return await _list(engine, args, out)
        if args.command == "prune":
            return await _prune(engine, args, out)
        detail = await queries.get_call(engine, args.call_sid)
        if detail is None:
            print(f"bridge calls: no call {args.call_sid}", file=sys.stderr)
            return 1
        if args.command == "show":
            text = _json(detail.to_json()) if args.json else report.call_text(detail)
        else:
            text = _json(detail.to_json()) if args.format == "json" else report.call_text(detail)
        if getattr(args, "output", None):
            await asyncio.to_thread(_write, args.output, text + "\n")
        else:
            print(text, file=out)
        return 0
    finally:
        await engine.dispose()


async def _list(engine: Any, args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    query = queries.CallFilter(
        number=args.number,
        caller=args.caller,
        profile=args.profile,
        since=queries.parse_time(args.since, now) if args.since else None,
        until=queries.parse_time(args.until, now) if args.until else None,
        end_reason=args.end_reason,
        text=args.search,
    )
    page = await queries.list_calls(engine, query, limit=args.limit)
    if args.json:
        for call in page.calls:
            print(json.dumps(call, separators=(",", ":")), file=out)
    else:
        print(report.call_table(page.calls), file=out)
    return 0


async def _prune(engine: Any, args: argparse.Namespace, out: TextIO) -> int:
    before = time.time() - queries.parse_duration(args.older_than)
    if args.dry_run:
        page = await queries.list_calls(
            engine, queries.CallFilter(until=before), limit=queries.MAX_LIMIT
        )
        more = "+" if page.next_cursor else ""
        print(f"{len(page.calls)}{more} calls started before {report.clock(before)}", file=out)
        return 0
    deleted = await queries.prune(engine, before)
    print(f"deleted {deleted} calls started before {report.clock(before)} UTC", file=out)
    return 0


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, sys.stdout))
    except KeyboardInterrupt:
        return 130
    except (ConfigError, queries.BadQuery) as exc:
        print(f"bridge calls: {exc}", file=sys.stderr)
        return 2
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        print(f"bridge calls: database unavailable: {database.describe(exc)}", file=sys.stderr)
        return 1
