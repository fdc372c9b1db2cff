"""A small SVG picture of who spoke when: caller and assistant lanes on the call's clock.

An interrupted reply is drawn solid up to the barge-in, followed by a dashed ghost as long as
the audio the caller never heard; barge-ins and errors are marked on the axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH = 900
LEFT = 80
RIGHT = 16
LANES = {"caller": 16, "assistant": 50}
LANE_HEIGHT = 22
AXIS_Y = 86
HEIGHT = 108
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
    duration: float | None, turns: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]]
) -> Markup:
    """The picture for one call (turn and event dicts as `queries.get_call` returns them)."""
    span = max(1.0, duration or 0.0)
    for turn in turns:  # everything fits, including the ghosts of unheard audio
        end: float = turn["ended_at"] or turn["started_at"]
        span = max(span, end + _unheard_s(turn))
    scale = (WIDTH - LEFT - RIGHT) / span

    def x(t: float) -> float:
        return round(LEFT + max(0.0, t) * scale, 1)

    parts = [
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        'role="img" aria-label="who spoke when" xmlns="http://www.w3.org/2000/svg">'
    ]
    for role, y in LANES.items():
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
            f'class="{css}"><title>{_clock(start)}–{_clock(end)} {label}</title></rect>'
        )
        unheard = _unheard_s(turn)
        if unheard:
            parts.append(
                f'<rect x="{x(end)}" y="{y}" width="{max(2.0, unheard * scale):.1f}" '
                f'height="{LANE_HEIGHT}" class="turn unheard"><title>not heard: '
                f"{unheard:.1f} s (estimated)</title></rect>"
            )
    for event in events:
        mark = MARKED_EVENTS.get(event["kind"])
        if mark is None or event.get("at") is None:
            continue
        at = x(event["at"])
        parts.append(
            f'<line x1="{at}" y1="8" x2="{at}" y2="{AXIS_Y}" class="mark {mark}">'
            f"<title>{escape(event['kind'])} at {_clock(event['at'])}</title></line>"
        )
    step = _ticks(span)
    parts.append(
        f'<line x1="{LEFT}" y1="{AXIS_Y}" x2="{WIDTH - RIGHT}" y2="{AXIS_Y}" class="axis"/>'
    )
    tick = 0.0
    while tick <= span:
        parts.append(f'<text x="{x(tick)}" y="{AXIS_Y + 16}" class="tick">{_clock(tick)}</text>')
        tick += step
    parts.append("</svg>")
    return Markup("".join(parts))


def _unheard_s(turn: dict[str, Any]) -> float:
    """Seconds of reply audio the caller never heard (interrupted assistant turns only)."""
    if not turn.get("interrupted") or turn.get("heard_ms") is None:
        return 0.0
    unheard_ms: float = turn["audio_ms"] - turn["heard_ms"]
    return max(0.0, unheard_ms / 1000)
