"""A small SVG picture of who spoke when: caller and assistant lanes on the call's clock.

An interrupted reply is drawn solid up to the barge-in, followed by a dashed ghost as long as
the audio the caller never heard; barge-ins and errors are marked on the axis. A call with tool
calls or keypresses gets a third lane: a bar per tool call as long as it ran, a key per press.
Each turn carries its start (`data-start`, seconds) and the picture its scale (`data-left`,
`data-scale`: x = left + seconds * scale), for the recording player's seeking and playhead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH = 900
LEFT = 80
RIGHT = 16
LANES = {"caller": 16, "assistant": 50}
TOOLS_Y = 84  # the third lane, when there is something to put in it
LANE_HEIGHT = 22
AXIS_GAP = 14  # from the last lane to the axis
TICKS_HEIGHT = 22  # below the axis
CHAR_WIDTH = 6.5  # roughly, at the 11 px label size: does a tool's name fit in its bar?
MARKED_EVENTS = {"barge_in": "barge-in", "upstream_error": "error", "protocol_error": "error"}


def _ticks(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800):
        if span / step <= 10:
            return float(step)
    return 3600.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def timeline_svg(
    duration: float | None,
    turns: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    tool_calls: Sequence[dict[str, Any]] = (),
) -> Markup:
    """The picture for one call (turn, event and tool call dicts as `queries.get_call` returns
    them)."""
    keys = [e for e in events if e["kind"] == "dtmf" and e.get("at") is not None]
    lanes = dict(LANES)
    if tool_calls or keys:
        lanes["tools"] = TOOLS_Y
    axis_y = max(lanes.values()) + LANE_HEIGHT + AXIS_GAP
    height = axis_y + TICKS_HEIGHT
    span = max(1.0, duration or 0.0)
    for turn in turns:  # everything fits, including the ghosts of unheard audio
        end: float = turn["ended_at"] or turn["started_at"]
        span = max(span, end + _unheard_s(turn))
    for tool_call in tool_calls:
        span = max(span, tool_call["ended_at"] or tool_call["started_at"])
    for key in keys:
        span = max(span, key["at"])
    scale = (WIDTH - LEFT - RIGHT) / span

    def x(t: float) -> float:
        return round(LEFT + max(0.0, t) * scale, 1)

    label = "who spoke when" + (", tool calls and keypresses" if "tools" in lanes else "")
    parts = [
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="100%" '
        f'role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg" '
        f'data-left="{LEFT}" data-scale="{scale:.6g}" data-bottom="{axis_y}">'
    ]
    for role, y in lanes.items():
        parts.append(f'<text x="4" y="{y + 15}" class="lane-label">{role}</text>')
        parts.append(
            f'<line x1="{LEFT}" y1="{y + LANE_HEIGHT / 2}" x2="{WIDTH - RIGHT}" '
            f'y2="{y + LANE_HEIGHT / 2}" class="lane"/>'
        )
    for turn in turns:
        lane = LANES.get(turn["role"])
        if lane is None:
            continue
        y = lane
        start: float = turn["started_at"]
        end = turn["ended_at"] if turn["ended_at"] is not None else start
        width = max(2.0, x(end) - x(start))
        label = escape((turn.get("text") or "")[:120])
        css = f"turn {turn['role']}" + (" interrupted" if turn.get("interrupted") else "")
        parts.append(
            f'<rect x="{x(start)}" y="{y}" width="{width:.1f}" height="{LANE_HEIGHT}" '
            f'class="{css}" data-start="{start}">'
            f"<title>{_clock(start)}–{_clock(end)} {label}</title></rect>"
        )
        unheard = _unheard_s(turn)
        if unheard:
            parts.append(
                f'<rect x="{x(end)}" y="{y}" width="{max(2.0, unheard * scale):.1f}" '
                f'height="{LANE_HEIGHT}" class="turn unheard"><title>not heard: '
                f"{unheard:.1f} s (estimated)</title></rect>"
            )
    for tool_call in tool_calls:
        parts.append(_tool_bar(tool_call, x))
    for key in keys:
        at = x(key["at"])
        digit = escape(str(key["detail"].get("digit", "?")))
        parts.append(
            f'<g class="key"><title>key {digit} pressed at {_clock(key["at"])}</title>'
            f'<rect x="{at - 6}" y="{TOOLS_Y + 3}" width="12" height="16" rx="3"/>'
            f'<text x="{at}" y="{TOOLS_Y + 15}" text-anchor="middle">{digit}</text></g>'
        )
    for event in events:
        mark = MARKED_EVENTS.get(event["kind"])
        if mark is None or event.get("at") is None:
            continue
        at = x(event["at"])
        parts.append(
            f'<line x1="{at}" y1="8" x2="{at}" y2="{axis_y}" class="mark {mark}">'
            f"<title>{escape(event['kind'])} at {_clock(event['at'])}</title></line>"
        )
    step = _ticks(span)
    parts.append(
        f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" class="axis"/>'
    )
    tick = 0.0
    while tick <= span:
        parts.append(f'<text x="{x(tick)}" y="{axis_y + 16}" class="tick">{_clock(tick)}</text>')
        tick += step
    parts.append("</svg>")
    return Markup("".join(parts))


def _tool_bar(tool_call: dict[str, Any], x: Callable[[float], float]) -> str:
    """A tool call's bar from start to end (a sliver while it runs), its name inside if it fits."""
    start: float = tool_call["started_at"]
    end = tool_call["ended_at"] if tool_call["ended_at"] is not None else start
    width = max(3.0, x(end) - x(start))
    outcome = str(tool_call["outcome"])
    took = tool_call["duration_ms"]
    about = f"{tool_call['name']} ({tool_call['kind']}) {outcome}, {_clock(start)}–{_clock(end)}"
    if took is not None:
        about += f", {took:.0f} ms"
    if tool_call["holding_phrase"]:
        about += ", holding phrase"
    css = f"tool outcome-{outcome}" if outcome.isidentifier() else "tool"
    bar = (
        f'<g class="{escape(css)}"><title>{escape(about)}</title>'
        f'<rect x="{x(start)}" y="{TOOLS_Y}" width="{width:.1f}" height="{LANE_HEIGHT}"/>'
    )
    name = str(tool_call["name"])
    if width >= CHAR_WIDTH * len(name) + 6:
        bar += f'<text x="{x(start) + 3}" y="{TOOLS_Y + 15}">{escape(name)}</text>'
    return bar + "</g>"


def _unheard_s(turn: dict[str, Any]) -> float:
    """Seconds of reply audio the caller never heard (interrupted assistant turns only)."""
    if not turn.get("interrupted") or turn.get("heard_ms") is None:
        return 0.0
    unheard_ms: float = turn["audio_ms"] - turn["heard_ms"]
    return max(0.0, unheard_ms / 1000)
