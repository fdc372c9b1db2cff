"""Calls as plain text for the terminal (`bridge calls list | show | export --format txt`)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from bridge.store.queries import CallDetail


def clock(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def call_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{secs:04.1f}"


def span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def shorten(text: str, limit: int = 120) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def transfer(call: dict[str, Any]) -> str:
    """ "Sales desk (+15550100777)", or "" when the call was not transferred."""
    name, number = call.get("transfer_to") or "", call.get("transfer_number") or ""
    if name and number:
        return f"{name} ({number})"
    return name or number


def call_table(calls: Sequence[dict[str, Any]]) -> str:
    """One line per call, newest first, aligned columns."""
    header = ("started (UTC)", "call sid", "from", "to", "profile", "duration", "end", "cost")
    lines = [header]
    for call in calls:
        lines.append(
            (
                clock(call["started_at"]),
                call["call_sid"],
                call["from_number"],
                call["to_number"],
                call["profile"],
                span(call["duration_s"]),
                (call["end_reason"] or ("live" if call.get("live") else "unfinished"))
                + (f" -> {call['transfer_to']}" if call.get("transfer_to") else ""),
                cost(call["cost_usd"]),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def call_text(detail: CallDetail) -> str:
    """A call as a transcript with times, latency, the heard/unheard split and events."""
    call = detail.call
    out = [
        f"call {call['call_sid']} ({call['direction'] or 'inbound'})",
        f"  from {call['from_number'] or '?'} to {call['to_number'] or '?'}, profile "
        f"{call['profile'] or '-'}, model {call['model'] or '-'}, voice {call['voice'] or '-'}",
        f"  started {clock(call['started_at'])} UTC, answered {clock(call['answered_at'])}, "
        f"ended {clock(call['ended_at'])}, duration {span(call['duration_s'])}",
        f"  end reason {call['end_reason'] or '-'}"
        + (f" ({call['end_detail']})" if call["end_detail"] else "")
        + f", Twilio status {call['twilio_status'] or '-'}",
        f"  barge-ins {call['barge_ins']}, text-only recoveries {call['text_only_recoveries']}, "
        f"errors {call['errors']}, tool calls {call['tool_calls']}, "
        f"cost {cost(call['cost_usd'])} (estimated)",
    ]
    if destination := transfer(call):
        out.append(f"  transferred to {destination}")
    if call.get("recording"):
        size = call.get("recording_bytes") or 0
        out.append(
            f"  recorded: {call['recording']} ({size / 1e6:.1f} MB; "
            f"bridge calls recording {call['call_sid']} -o FILE)"
        )
    out.append("")
    if not call["keep_transcripts"]:
        out.append("  (this profile keeps no transcripts)")
    for kind, entry in detail.conversation():
        if kind == "turn":
            out += _turn_lines(entry)
        elif kind == "tool_call":
            out += _tool_call_lines(entry)
        else:
            out.append(f"  {call_time(entry['at']):<15} {'key':<9} {entry['digit']}")
    if detail.events:
        out.append("")
        out.append("  events:")
        for event in detail.events:
            detail_text = json.dumps(event["detail"], separators=(",", ":"))
            out.append(f"  {call_time(event['at']):<8} {event['kind']:<22} {detail_text}")
    return "\n".join(out)


def _turn_lines(turn: dict[str, Any]) -> list[str]:
    when = f"{call_time(turn['started_at'])}-{call_time(turn['ended_at'])}"
    text = turn["text"] if turn["text"] is not None else "(not kept)"
    latency = f"  [answered in {turn['latency_ms']:.0f} ms]" if turn["latency_ms"] else ""
    source = f" ({turn['source']})" if turn["source"] not in ("model", "") else ""
    lines = [f"  {when:<15} {turn['role']:<9} {text}{latency}{source}"]
    if "heard_text" in turn:
        lines.append(
            f"  {'':<15} {'':<9} interrupted: heard {turn['heard_ms'] / 1000:.1f}s of "
            f"{turn['audio_ms'] / 1000:.1f}s; heard (estimated): {turn['heard_text']!r}; "
            f"never heard: {turn['unheard_text']!r}"
        )
    return lines


def _tool_call_lines(tool_call: dict[str, Any]) -> list[str]:
    """`name (kind) arguments -> outcome in N ms [holding phrase]`, then the result or error."""
    when = f"{call_time(tool_call['started_at'])}-{call_time(tool_call['ended_at'])}"
    arguments = tool_call["arguments"]
    arguments = "(arguments not kept)" if arguments is None else shorten(arguments, 80)
    took = tool_call["duration_ms"]
    outcome = tool_call["outcome"] + (f" in {took:.0f} ms" if took is not None else "")
    holding = "  [holding phrase]" if tool_call["holding_phrase"] else ""
    lines = [
        f"  {when:<15} {'tool':<9} {tool_call['name']} ({tool_call['kind']}) {arguments} "
        f"-> {outcome}{holding}"
    ]
    if tool_call["error"]:
        lines.append(f"  {'':<15} {'':<9} error: {shorten(tool_call['error'])}")
    elif tool_call["result"]:
        lines.append(f"  {'':<15} {'':<9} result: {shorten(tool_call['result'])}")
    return lines
