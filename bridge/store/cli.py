"""`bridge calls list | show | tail | export | recording | prune`: the call log from a terminal.

`list`, `show`, `export`, `recording` and `prune` read the database (BRIDGE_DATABASE_URL);
`recording` and `prune` also the recording store (BRIDGE_RECORDINGS_DIR / BRIDGE_RECORDINGS_URL)
and `prune` the numbers file (each profile's `recording_retention_days`), so run them with the
server's environment. `tail` follows a running server's live feed (`--url`,
BRIDGE_ADMIN_TOKEN), because with SQLite only the server knows what is happening now.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, BinaryIO, TextIO

import sqlalchemy as sa

from bridge import numbers
from bridge.errors import ConfigError
from bridge.numbers_cli import tool_settings
from bridge.recording.store import RecordingMissing, RecordingStore, store_from_settings
from bridge.settings import ENVIRONMENT
from bridge.store import database, queries, recordings, report
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

    recording = commands.add_parser("recording", help="one call's recording (WAV) as a file")
    recording.add_argument("call_sid")
    recording.add_argument(
        "--output", "-o", help="file to write (default: CALL_SID.wav; - for stdout)"
    )

    prune = commands.add_parser(
        "prune",
        help="delete old calls with their recordings, and recordings past their profile's "
        "recording_retention_days",
    )
    prune.add_argument("--older-than", help="calls that started this long ago, e.g. 30d, 12w")
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
        if args.command == "recording":
            return await _recording(engine, args, out)
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
    now = time.time()
    before = now - queries.parse_duration(args.older_than) if args.older_than else None
    settings = tool_settings()
    # The numbers file as the server reads it; an invalid one stops here, before any deletion.
    directory = numbers.Numbers(settings).current
    retention = {name: p.recording_retention_days for name, p in directory.profiles.items()}
    if before is None and all(days is None for days in retention.values()):
        print(
            "bridge calls prune: nothing to do: give --older-than, or set "
            "recording_retention_days in a profile",
            file=sys.stderr,
        )
        return 2
    verb = "would delete" if args.dry_run else "deleted"
    store = store_from_settings(settings.recordings_dir, settings.recordings_url)
    try:
        if before is not None:
            pruned = await recordings.prune_calls(engine, store, before, dry_run=args.dry_run)
            print(
                f"{verb} {pruned.calls} calls started before {report.clock(before)} UTC "
                f"({pruned.recordings} with a recording)",
                file=out,
            )
        expired = await recordings.expire_recordings(
            engine,
            store,
            retention,
            directory.default.name,
            now,
            since=before,
            dry_run=args.dry_run,
        )
    finally:
        await store.aclose()
    if expired:
        detail = ", ".join(
            f"{name} {count} (kept {retention[name]:g} days)" for name, count in expired.items()
        )
        total = sum(expired.values())
        print(f"{verb} {total} recordings past their profile's retention: {detail}", file=out)
    return 0


async def _recording(engine: Any, args: argparse.Namespace, out: TextIO) -> int:
    recorded = await recordings.recording_of(engine, args.call_sid)
    if recorded is None:
        print(f"bridge calls: no call {args.call_sid}", file=sys.stderr)
        return 1
    if recorded.key is None:
        print(f"bridge calls: call {args.call_sid} has no recording", file=sys.stderr)
        return 1
    settings = tool_settings()
    store = store_from_settings(settings.recordings_dir, settings.recordings_url)
    target = args.output or recorded.key.rsplit("/", 1)[-1]  # CALL_SID.wav
    try:
        size = await store.size(recorded.key)
        if target == "-":
            out.flush()
            await _copy(store, recorded.key, size, out.buffer)
            out.buffer.flush()
            return 0
        file = await asyncio.to_thread(open, target, "wb")
        try:
            with file:
                await _copy(store, recorded.key, size, file)
        except BaseException:
            os.unlink(target)  # no half a recording left behind
            raise
    except RecordingMissing:
        print(
            f"bridge calls: the recording of {args.call_sid} ({recorded.key}) is not in {store!r}",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"bridge calls: cannot write {target}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the store's own errors (an unreachable bucket, refused access)
        print(f"bridge calls: cannot read {recorded.key} from {store!r}: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.aclose()
    print(f"{target}: {size} bytes, the recording of {args.call_sid}", file=out)
    return 0


async def _copy(store: RecordingStore, key: str, size: int, sink: BinaryIO) -> None:
    async for chunk in store.read(key, 0, size):
        await asyncio.to_thread(sink.write, chunk)


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
