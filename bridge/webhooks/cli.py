"""`bridge webhooks list | redeliver SID`: the post-call webhook outbox from a terminal.

Both use the call log's database (BRIDGE_DATABASE_URL, or --database-url). A redelivery is a new
row in the outbox, due at once: a running server's sender makes it within a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.errors import ConfigError
from bridge.store import database
from bridge.store.dbcli import database_url
from bridge.store.report import clock
from bridge.webhooks import outbox


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge webhooks", description=__doc__)
    parser.add_argument("--database-url", help="default: $BRIDGE_DATABASE_URL or the SQLite file")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="deliveries, newest first")
    listing.add_argument("--state", choices=outbox.STATES)
    listing.add_argument("--call", help="only this call's deliveries")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="JSON lines, one delivery each")

    redeliver = commands.add_parser(
        "redeliver", help="send a call's webhook again (a new delivery id), even if delivered"
    )
    redeliver.add_argument("call_sid")
    redeliver.add_argument("--url", help="default: where the call's last delivery went")
    return parser


async def run(args: argparse.Namespace, out: TextIO) -> int:
    engine = database.create_engine(database_url(args.database_url))
    try:
        if args.command == "list":
            return await _list(engine, args, out)
        return await _redeliver(engine, args, out)
    finally:
        await engine.dispose()


async def _list(engine: AsyncEngine, args: argparse.Namespace, out: TextIO) -> int:
    found = await outbox.list_deliveries(
        engine, state=args.state, call_sid=args.call, limit=args.limit
    )
    if args.json:
        for delivery in found:
            print(json.dumps(_public(delivery), separators=(",", ":")), file=out)
    else:
        print(table(found), file=out)
    return 0


async def _redeliver(engine: AsyncEngine, args: argparse.Namespace, out: TextIO) -> int:
    try:
        delivery = await outbox.redeliver(engine, args.call_sid, time.time(), args.url)
    except outbox.UnknownCall:
        print(f"bridge webhooks: no call {args.call_sid}", file=sys.stderr)
        return 1
    except outbox.NoUrl:
        print(
            f"bridge webhooks: call {args.call_sid} never had a webhook URL; give --url",
            file=sys.stderr,
        )
        return 1
    print(delivery.delivery_id, file=out)
    return 0


def _public(delivery: outbox.Delivery) -> dict[str, Any]:
    """A delivery for `list --json`: everything but the body and the claim."""
    return {
        "delivery_id": delivery.delivery_id,
        "call_sid": delivery.call_sid,
        "url": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "created_at": delivery.created_at,
        "next_attempt_at": delivery.next_attempt_at if delivery.state == "pending" else None,
        "last_attempt_at": delivery.last_attempt_at,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "delivered_at": delivery.delivered_at,
    }


def table(deliveries: Sequence[outbox.Delivery]) -> str:
    """One line per delivery, aligned columns; times in UTC."""
    header = ("delivery id", "call sid", "state", "tries", "last", "next attempt (UTC)")
    lines = [header]
    for delivery in deliveries:
        last = str(delivery.last_status) if delivery.last_status is not None else ""
        if delivery.last_error:
            last = f"{last} {delivery.last_error}".strip() if last else delivery.last_error
        pending = delivery.state == "pending"
        lines.append(
            (
                delivery.delivery_id,
                delivery.call_sid,
                delivery.state,
                str(delivery.attempts),
                last or "-",
                clock(delivery.next_attempt_at) if pending else "-",
            )
        )
    widths = [max(len(line[index]) for line in lines) for index in range(len(header) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)), line[-1]]
        ).rstrip()
        for line in lines
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, sys.stdout))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"bridge webhooks: {exc}", file=sys.stderr)
        return 2
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        print(f"bridge webhooks: database unavailable: {database.describe(exc)}", file=sys.stderr)
        return 1
