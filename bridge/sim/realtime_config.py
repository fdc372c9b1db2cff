"""Realtime simulator settings, and the GA session object: defaults, validation, `session.update`
(tools and tool choice included).

Pure functions over plain dicts, so the session rules are testable without sockets.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "AUDIO_FORMATS",
    "ClientError",
    "Mode",
    "SessionPlan",
    "SimConfig",
    "SimToolCall",
    "added_mcp_servers",
    "apply_session_update",
    "default_session",
    "default_turn_detection",
    "mcp_allowed",
    "missing",
    "require",
    "session_expired_message",
    "validate_audio_format",
    "validate_output_modalities",
    "validate_tool_choice",
    "validate_tools",
]

_T = TypeVar("_T")

#: Session keys the GA interface accepts in `session.update` (SDK `RealtimeSessionCreateRequest`).
GA_SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "include",
        "tracing",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "parallel_tool_calls",
        "reasoning",
        # Echoed back by clients that copy `session.created`; the server ignores them.
        "id",
        "object",
        "expires_at",
    }
)
AUDIO_FORMATS = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma"})
TURN_DETECTION_TYPES = frozenset({"server_vad", "semantic_vad"})
FUNCTION_TOOL_KEYS = frozenset({"type", "name", "description", "parameters"})
MCP_TOOL_KEYS = frozenset(
    {
        "type",
        "server_label",
        "server_url",
        "connector_id",
        "tunnel_id",
        "authorization",
        "headers",
        "allowed_tools",
        "allowed_callers",
        "require_approval",
        "server_description",
        "defer_loading",
    }
)
TOOL_CHOICE_OPTIONS = frozenset({"none", "auto", "required"})
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Mode(enum.StrEnum):
    """How the simulated model misbehaves (or not)."""

    NORMAL = "normal"
    ALWAYS_TEXT = "always-text"  # every response is text only (output_text), never audio
    # First response is text only; responses stay text only while the conversation holds an
    # assistant item with only text content; deleting those items brings audio back.
    STICKY_TEXT = "sticky-text"
    DROP_MID_RESPONSE = (
        "drop-mid-response"  # abort TCP after a few deltas of a session's 1st response
    )
    REJECT_CONNECT = "reject-connect"  # refuse the WebSocket handshake (HTTP 403)
    ERROR_ON_CONNECT = "error-on-connect"  # accept, send `error` (invalid_api_key), close 1008
    DROP_AFTER = "drop-after"  # abort TCP `drop_after_seconds` after the handshake, whatever runs
    UNAVAILABLE = "unavailable"  # refuse the WebSocket handshake (HTTP 503)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionPlan:
    """What the `index`-th session (handshake) of a simulator does, fixed when it arrives.
    Ages are seconds after the handshake was accepted."""

    index: int
    mode: Mode
    drop_after: float | None = None  # abort the TCP connection (no close frame) at this age
    max_seconds: float | None = None  # expire at this age: `session_expired`, then close 1000


@dataclasses.dataclass(frozen=True, slots=True)
class SimToolCall:
    """A tool call the simulated model makes: a function call the client runs, or (with
    `server_label`) an MCP call the service runs itself, answered with `output` or `error`."""

    name: str
    arguments: Mapping[str, Any] | str = dataclasses.field(default_factory=dict)  # str: verbatim
    server_label: str = ""
    output: str = ""
    error: str = ""
    call_id: str = ""  # empty: a generated `call_...`

    @property
    def arguments_json(self) -> str:
        """The arguments as sent on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclasses.dataclass
class SimConfig:
    """Behaviour of a `RealtimeSimulator`; read live, so it may be changed between calls."""

    mode: Mode = Mode.NORMAL
    replies: Sequence[str] = (
        "Hello! I am doing great, thanks for asking. How can I help you today?",
    )  # cycled per session
    # If set: turn index (0-based response count of the session) -> 24 kHz float audio to speak.
    reply_audio: Callable[[int], np.ndarray] | None = None
    # If > 0: reply_audio repeats after this many turns, so each is encoded once and shared.
    reply_turns: int = 0
    chunk_ms: int = 100  # audio per output_audio.delta
    speedup: float = 5.0  # deltas are sent this many times faster than real time
    late_deltas_after_cancel: int = 0  # deltas of the old item still sent after a cancel
    caller_transcripts: Sequence[str] = ("Hi Tyler, how's it going?",)  # cycled per commit
    vad_threshold_dbfs: float = -40.0  # energy VAD, used instead of the session's 0..1 threshold
    first_response_latency_ms: int = 0  # delay before the first delta of every response
    # Keep input audio (`input_audio`, `input_ulaw`, append payloads); benchmarks turn it off.
    record_input: bool = True
    drop_after_deltas: int = 3  # DROP_MID_RESPONSE: audio deltas sent before the abort
    # Answer index -> the tool calls of that response. Answers are the responses that reply to
    # the caller: started by turn detection or by `response.create` without instructions, and
    # not right after a `function_call_output`. Counted per session from 0.
    tool_calls: Mapping[int, Sequence[SimToolCall]] = dataclasses.field(default_factory=dict)
    # MCP server_label -> its tool names, for `mcp_list_tools`; a label not here fails to list.
    mcp_tools: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    mcp_call_ms: int = 0  # how long the "service" waits for an MCP server's answer
    # If set: (tool name, tool output) -> what the model says after a tool result: the response
    # after a `function_call_output`, or the message after MCP calls (the last one's output, or
    # its error if it failed). Unset: the `replies` cycle.
    tool_reply: Callable[[str, str], str] | None = None
    # Mode of the n-th session by index; every handshake counts, refused ones too. Sessions
    # past the end use `mode`.
    session_modes: Sequence[Mode] = ()
    drop_after_seconds: float = 1.0  # DROP_AFTER: a session's age when its TCP is aborted
    # If set: a session this old gets the `session_expired` error, then a close 1000 (the GA
    # service does this at 3600 s); also its `expires_at`.
    session_max_seconds: float | None = None
    # If set: every session's TCP is aborted at this age ±20 % (soak tests); the spread is
    # drawn from `seed` and the session's index, so the n-th session's life is reproducible.
    drop_every_seconds: float | None = None
    seed: int = 0
    # Caller transcripts cycle across the simulator's sessions, so a reconnected call's new
    # session goes on with the next one. Off: each session starts the cycle afresh.
    transcripts_per_simulator: bool = False

    def session_plan(self, index: int) -> SessionPlan:
        """The plan of the `index`-th session (0-based, refused handshakes included)."""
        mode = self.session_modes[index] if index < len(self.session_modes) else self.mode
        drops: list[float] = []
        if mode is Mode.DROP_AFTER:
            drops.append(self.drop_after_seconds)
        if self.drop_every_seconds is not None:
            spread = random.Random(f"{self.seed}:{index}").uniform(0.8, 1.2)
            drops.append(self.drop_every_seconds * spread)
        return SessionPlan(index, mode, min(drops, default=None), self.session_max_seconds)


class ClientError(Exception):
    """A client event the server refuses; becomes an `error` event and the session carries on."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "invalid_value",
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


def missing(param: str) -> ClientError:
    """The error for a required parameter that is absent."""
    return ClientError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def require(event: dict[str, Any], name: str, kind: type[_T]) -> _T:
    """`event[name]` if present and of type `kind` (a bool is not an integer here)."""
    if name not in event:
        raise missing(name)
    value = event[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ClientError(
            f"Invalid type for '{name}': expected {'integer' if kind is int else kind.__name__}.",
            code="invalid_type",
            param=name,
        )
    return value


def session_expired_message(max_seconds: float) -> str:
    """The GA service's message when a session reaches its maximum duration."""
    return f"Your session hit the maximum duration of {max_seconds / 60:g} minutes."


def default_turn_detection(kind: str = "server_vad") -> dict[str, Any]:
    """The server's defaults for a turn detection of type `kind`."""
    if kind == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def default_session(model: str) -> dict[str, Any]:
    """The GA session object a new connection starts with (as in `session.created`)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": f"sess_{secrets.token_hex(10)}",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": default_turn_detection(),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
    }


def validate_output_modalities(value: Any, param: str) -> list[str]:
    """`["audio"]` or `["text"]`; GA refuses both together."""
    if not isinstance(value, list) or not value or any(v not in ("text", "audio") for v in value):
        raise ClientError(
            f"Invalid value for '{param}': expected ['audio'] or ['text'].", param=param
        )
    if len(set(value)) > 1:
        raise ClientError(
            f"Invalid modalities: {value}. Supported combinations are: ['text'] and ['audio'].",
            param=param,
        )
    return [value[0]]


def validate_audio_format(value: Any, param: str) -> dict[str, Any]:
    """A GA audio format object, normalized (`audio/pcm` gets its only rate, 24000)."""
    if not isinstance(value, dict) or value.get("type") not in AUDIO_FORMATS:
        kind = value.get("type") if isinstance(value, dict) else value
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'audio/pcm', 'audio/pcmu' and "
            "'audio/pcma'.",
            param=f"{param}.type",
        )
    if value["type"] == "audio/pcm":
        rate = value.get("rate", 24000)
        if rate != 24000:
            raise ClientError(
                f"Invalid value: {rate}. Supported values are: 24000.", param=f"{param}.rate"
            )
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": value["type"]}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge `update` into `base` in place: dicts recurse, anything else (lists, null) replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _require_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError(f"Invalid type for '{param}': expected an object.", param=param)
    return value


def apply_session_update(
    current: dict[str, Any], update: Any, *, audio_produced: bool
) -> dict[str, Any]:
    """Return the session after `session.update`, or raise `ClientError` (nothing applied).

    Beta-shaped keys (`modalities`, `input_audio_format`, top-level `voice`, ...) are unknown
    parameters in GA, as is a missing `session.type`.
    """
    update = _require_dict(update, "session")
    for key in update:
        if key not in GA_SESSION_KEYS:
            raise ClientError(
                f"Unknown parameter: 'session.{key}'.",
                code="unknown_parameter",
                param=f"session.{key}",
            )
    if "type" not in update:
        raise ClientError(
            "Missing required parameter: 'session.type'.",
            code="missing_required_parameter",
            param="session.type",
        )
    if update["type"] != "realtime":
        raise ClientError(
            f"Invalid value: '{update['type']}'. The simulator supports only 'realtime'.",
            param="session.type",
        )
    new = copy.deepcopy(current)
    clean = {k: v for k, v in update.items() if k not in ("id", "object", "expires_at")}
    if "output_modalities" in clean:
        clean["output_modalities"] = validate_output_modalities(
            clean["output_modalities"], "session.output_modalities"
        )
    # Tools and tool choice replace the old ones whole (a dict choice is not merged).
    if "tools" in clean:
        new["tools"] = validate_tools(clean.pop("tools"), "session.tools")
    if "tool_choice" in clean:
        new["tool_choice"] = validate_tool_choice(clean.pop("tool_choice"), "session.tool_choice")
    audio = _require_dict(clean.pop("audio", {}), "session.audio")
    _deep_merge(new, clean)
    for direction in ("input", "output"):
        part = _require_dict(audio.get(direction, {}), f"session.audio.{direction}")
        target = new["audio"][direction]
        part = dict(part)
        if "format" in part:
            # A format object replaces the old one: no `rate` left over on audio/pcmu.
            target["format"] = validate_audio_format(
                part.pop("format"), f"session.audio.{direction}.format"
            )
        if direction == "input" and "turn_detection" in part:
            target["turn_detection"] = _merge_turn_detection(
                target.get("turn_detection"), part.pop("turn_detection")
            )
        voice_change = "voice" in part and part["voice"] != target.get("voice")
        if direction == "output" and voice_change and audio_produced:
            raise ClientError(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        _deep_merge(target, part)
    return new


def _merge_turn_detection(old: Any, value: Any) -> dict[str, Any] | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    value = _require_dict(value, param)
    kind = value.get("type", old.get("type") if isinstance(old, dict) else "server_vad")
    if kind not in TURN_DETECTION_TYPES:
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.",
            param=f"{param}.type",
        )
    base = (
        copy.deepcopy(old)
        if isinstance(old, dict) and old.get("type") == kind
        else default_turn_detection(kind)
    )
    _deep_merge(base, value)
    return base


def validate_tools(value: Any, param: str) -> list[dict[str, Any]]:
    """Function and MCP tool definitions, checked lightly as the service does (a copy)."""
    if not isinstance(value, list):
        raise ClientError(f"Invalid type for '{param}': expected an array.", param=param)
    tools: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, raw in enumerate(value):
        at = f"{param}[{i}]"
        tool = _require_dict(raw, at)
        kind = tool.get("type")
        if kind is None:
            raise missing(f"{at}.type")
        if kind == "function":
            _known_keys(tool, FUNCTION_TOOL_KEYS, at)
            name = tool.get("name")
            if name is None:
                raise missing(f"{at}.name")
            if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                raise ClientError(
                    f"Invalid '{at}.name': string does not match pattern. Expected a string "
                    "that matches the pattern '^[a-zA-Z0-9_-]+$' (at most 64 characters).",
                    code="invalid_value",
                    param=f"{at}.name",
                )
            if "parameters" in tool and not isinstance(tool["parameters"], dict):
                raise ClientError(
                    f"Invalid type for '{at}.parameters': expected an object.",
                    param=f"{at}.parameters",
                )
            key = f"function:{name}"
        elif kind == "mcp":
            _known_keys(tool, MCP_TOOL_KEYS, at)
            label = tool.get("server_label")
            if not isinstance(label, str) or not label:
                raise missing(f"{at}.server_label")
            if not any(tool.get(k) for k in ("server_url", "connector_id", "tunnel_id")):
                raise ClientError(
                    f"One of 'server_url', 'connector_id' or 'tunnel_id' must be provided for "
                    f"'{at}'.",
                    code="missing_required_parameter",
                    param=f"{at}.server_url",
                )
            _check_allowed_tools(tool.get("allowed_tools"), f"{at}.allowed_tools")
            approval = tool.get("require_approval")
            if not (
                approval is None or approval in ("always", "never") or isinstance(approval, dict)
            ):
                raise ClientError(
                    f"Invalid value: '{approval}'. Supported values are: 'always' and 'never'.",
                    param=f"{at}.require_approval",
                )
            headers = tool.get("headers")
            if headers is not None and (
                not isinstance(headers, dict)
                or not all(isinstance(v, str) for v in headers.values())
            ):
                raise ClientError(
                    f"Invalid type for '{at}.headers': expected an object of strings.",
                    param=f"{at}.headers",
                )
            key = f"mcp:{label}"
        else:
            raise ClientError(
                f"Invalid value: '{kind}'. Supported values are: 'function' and 'mcp'.",
                param=f"{at}.type",
            )
        if key in names:
            what = "function name" if kind == "function" else "MCP server_label"
            raise ClientError(
                f"Duplicate {what} in '{param}': '{key.partition(':')[2]}'.", param=at
            )
        names.add(key)
        tools.append(copy.deepcopy(tool))
    return tools


def validate_tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    """`none`, `auto`, `required`, a function (`{"type":"function","name"}`) or an MCP
    server's tool (`{"type":"mcp","server_label","name"?}`)."""
    if isinstance(value, str):
        if value not in TOOL_CHOICE_OPTIONS:
            raise ClientError(
                f"Invalid value: '{value}'. Supported values are: 'none', 'auto' and 'required'.",
                param=param,
            )
        return value
    choice = _require_dict(value, param)
    kind = choice.get("type")
    if kind == "function":
        if not isinstance(choice.get("name"), str):
            raise missing(f"{param}.name")
    elif kind == "mcp":
        if not isinstance(choice.get("server_label"), str):
            raise missing(f"{param}.server_label")
    else:
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'function' and 'mcp'.",
            param=f"{param}.type",
        )
    return dict(choice)


def added_mcp_servers(old_tools: Any, new_tools: Any) -> list[dict[str, Any]]:
    """The MCP tools of `new_tools` that `old_tools` did not have as they are now: the servers
    a `session.update` makes the service list."""
    old = [tool for tool in old_tools or () if tool.get("type") == "mcp"]
    return [tool for tool in new_tools or () if tool.get("type") == "mcp" and tool not in old]


def mcp_allowed(tool: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """`names` filtered by the tool's `allowed_tools` (a list of names, or `{"tool_names"}`)."""
    allowed = tool.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    if allowed is None:
        return list(names)
    return [name for name in names if name in allowed]


def _known_keys(tool: dict[str, Any], known: frozenset[str], at: str) -> None:
    for key in tool:
        if key not in known:
            raise ClientError(
                f"Unknown parameter: '{at}.{key}'.", code="unknown_parameter", param=f"{at}.{key}"
            )


def _check_allowed_tools(value: Any, param: str) -> None:
    if value is None:
        return
    names = value.get("tool_names", []) if isinstance(value, dict) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ClientError(
            f"Invalid type for '{param}': expected an array of tool names or a filter object.",
            param=param,
        )
