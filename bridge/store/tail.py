"""`bridge calls tail`: a running server's live feed (Server-Sent Events) as terminal lines.

On a terminal the turn being spoken is redrawn in place as its words arrive; piped, each turn
is printed once it is superseded (the next turn, an event, or the call's end).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

import httpx

READ_TIMEOUT = 45.0  # the server sends a keepalive every 15 s
RECONNECT = 2.0


async def events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """SSE lines -> (event name, JSON data)."""
    kind, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class Printer:
    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.calls: dict[str, dict[str, Any]] = {}
        self.open: tuple[str, str] | None = None  # (call_sid, item_id) of the unfinished line
        self.open_line = ""
        self.printed: dict[tuple[str, str], str] = {}

    def handle(self, kind: str, data: dict[str, Any]) -> int:
        """Print what `data` says; returns 1 when a call ended."""
        if kind == "snapshot":
            for live in data["calls"]:
                if live["call"]["call_sid"] not in self.calls:
                    self._started(live["call"])
                for turn in live["turns"]:
                    self._turn(live["call"]["call_sid"], turn)
                for tool_call in live.get("tool_calls", []):
                    self._tool_call(live["call"]["call_sid"], tool_call)
        elif kind == "call_started":
            self._started(data["call"])
        elif kind == "turn":
            self._turn(data["call_sid"], data["turn"])
        elif kind == "tool_call":
            self._tool_call(data["call_sid"], data["tool_call"])
        elif kind == "event":
            event = data["event"]
            self._line(data["call_sid"], f"! {event['kind']} at {event['at']:.1f}s")
        elif kind == "call_ended":
            self.calls.pop(data["call_sid"], None)
            self._line(
                data["call_sid"],
                f"ended: {data.get('end_reason') or 'gone'} after {data.get('duration') or 0:.1f}s",
            )
            return 1
        return 0

    def _started(self, call: dict[str, Any]) -> None:
        self.calls[call["call_sid"]] = call
        who = f"{call.get('from_number') or '?'} -> {call.get('to_number') or '?'}"
        self._line(call["call_sid"], f"started: {who} profile={call.get('profile') or '-'}")

    def _turn(self, call_sid: str, turn: dict[str, Any]) -> None:
        text = turn.get("text")
        if text is None:
            text = "(transcript not kept)"
        notes = []
        if turn.get("interrupted"):
            notes.append(f"interrupted, heard {turn.get('heard_ms')} ms")
        if turn.get("latency_ms") is not None:
            notes.append(f"{turn['latency_ms']:.0f} ms to answer")
        suffix = f"  [{'; '.join(notes)}]" if notes else ""
        line = self._prefix(call_sid) + f"{turn['role']:>9}: {text}{suffix}"
        key = (call_sid, turn["item_id"])
        if self.printed.get(key) == line:
            return  # unchanged (a snapshot after reconnecting repeats every live turn)
        if self.open != key:
            self._settle()
            self.open = key
        self.open_line = line
        if self.tty:
            self.out.write("\r\x1b[K" + line)
            self.out.flush()

    def _tool_call(self, call_sid: str, tool_call: dict[str, Any]) -> None:
        """One line when a tool starts and one when it finishes (not again after reconnecting)."""
        outcome = tool_call.get("outcome") or "running"
        key = (call_sid, f"tool:{tool_call.get('call_id')}")
        if self.printed.get(key) == outcome:
            return
        self.printed[key] = outcome
        took = tool_call.get("duration_ms")
        notes = f" in {took:.0f} ms" if took is not None else ""
        if tool_call.get("holding_phrase"):
            notes += ", holding phrase"
        if tool_call.get("error"):
            notes += f": {str(tool_call['error'])[:120]}"
        name = f"{tool_call.get('name')} ({tool_call.get('kind')})"
        self._line(call_sid, f"* {name} {outcome}{notes}")

    def _settle(self) -> None:
        """Finish the open turn's line."""
        if self.open is None:
            return
        key, line = self.open, self.open_line
        self.open, self.open_line = None, ""
        if self.tty:
            self.out.write("\n")
        elif line.rstrip().endswith(":"):
            return  # nothing said yet; the words will come in a later update
        elif self.printed.get(key) != line:
            self.out.write(line + "\n")
        self.printed[key] = line
        self.out.flush()

    def _line(self, call_sid: str, text: str) -> None:
        self._settle()
        self.out.write(self._prefix(call_sid) + text + "\n")
        self.out.flush()

    def _prefix(self, call_sid: str) -> str:
        return f"{time.strftime('%H:%M:%S')} {call_sid[:12]}  "


async def follow(base: str, token: str | None, out: TextIO, *, count: int | None = None) -> int:
    """Print the live feed until interrupted (or `count` calls ended); 1 if refused."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    printer = Printer(out, tty=out.isatty())
    ended = 0
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while True:
            try:
                async with client.stream("GET", f"{base}/api/live", headers=headers) as response:
                    if response.status_code in (401, 403):
                        print(
                            f"bridge calls tail: refused ({response.status_code}); "
                            "set BRIDGE_ADMIN_TOKEN",
                            file=sys.stderr,
                        )
                        return 1
                    response.raise_for_status()
                    async for kind, data in events(response.aiter_lines()):
                        ended += printer.handle(kind, data)
                        if count is not None and ended >= count:
                            return 0
            except httpx.HTTPError as exc:
                print(f"bridge calls tail: {exc!r}; reconnecting", file=sys.stderr)
                await asyncio.sleep(RECONNECT)
