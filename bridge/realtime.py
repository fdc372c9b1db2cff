"""Sans-I/O Realtime side (GA interface): the client events we send and the server events we read.

Builders return plain dicts (validated against the official GA types in the tests); the parser turns
the server events the call reacts to into small typed objects and leaves the rest as `Other`.
"""

from __future__ import annotations

import binascii
import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
import pybase64

from bridge.errors import ProtocolViolation
from bridge.profiles import Profile, TurnDetection
from bridge.settings import AudioMode
from bridge.tools.config import END_CALL, TRANSFER_CALL, ProfileTools

PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
PCMU_FORMAT: dict[str, Any] = {"type": "audio/pcmu"}
AUDIO_ONLY = ["audio"]
REQUEST_METADATA = "bridge_request"  # response metadata key: which response.create this answers

# Beta names some Realtime-compatible servers still send, mapped to their GA names.
BETA_NAMES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}
AUDIO_CONTENT_TYPES = frozenset({"output_audio", "audio"})
TEXT_CONTENT_TYPES = frozenset({"output_text", "text"})
# Errors after which the session cannot continue.
FATAL_ERROR_CODES = frozenset(
    {"session_expired", "beta_api_shape_disabled", "invalid_api_key", "insufficient_quota"}
)
# Fatal errors a new session cures (the session reached its maximum duration).
RENEWABLE_ERROR_CODES = frozenset({"session_expired"})


# ---- client events ---------------------------------------------------------------------------


def session_update(profile: Profile, instructions: str | None = None) -> dict[str, Any]:
    """The `session.update` sent on connect: audio out only, turn detection, transcription,
    tools. `instructions` replaces the profile's (a session taking over a call in progress)."""
    audio_format = PCMU_FORMAT if profile.audio_mode is AudioMode.PCMU else PCM_FORMAT
    audio_input: dict[str, Any] = {
        "format": dict(audio_format),
        "turn_detection": _turn_detection(profile.turn_detection),
    }
    if profile.transcription_model:
        transcription = {"model": profile.transcription_model}
        if profile.transcription_language:
            transcription["language"] = profile.transcription_language
        audio_input["transcription"] = transcription
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": list(AUDIO_ONLY),
        "instructions": profile.instructions if instructions is None else instructions,
        "audio": {
            "input": audio_input,
            "output": {"format": dict(audio_format), "voice": profile.voice},
        },
    }
    tools = session_tools(profile.tools)
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


def session_tools(tools: ProfileTools) -> list[dict[str, Any]]:
    """The tools a profile offers: end_call, transfer_call, HTTP functions, MCP servers.

    Holds the expanded secrets of MCP headers: never log what this returns.
    """
    out: list[dict[str, Any]] = []
    if tools.end_call:
        out.append(
            _function(
                END_CALL,
                "Hang up the phone call. Say goodbye to the caller first, in the same turn: "
                "they hear the whole goodbye before the line closes.",
                {"reason": {"type": "string", "description": "Why the call is ending."}},
            )
        )
    if tools.transfer is not None and tools.transfer.destinations:
        names = sorted(tools.transfer.destinations)
        out.append(
            _function(
                TRANSFER_CALL,
                "Transfer the caller to a person. Tell the caller who you are transferring "
                "them to first, in the same turn; the transfer starts once they have heard it.",
                {"destination": {"type": "string", "enum": names}},
                required=["destination"],
            )
        )
    for tool in tools.http:
        out.append(
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            }
        )
    for server in tools.mcp:
        mcp: dict[str, Any] = {
            "type": "mcp",
            "server_label": server.server_label,
            "server_url": server.server_url.value,
            "require_approval": server.require_approval,
        }
        if server.headers:
            mcp["headers"] = {name: value.value for name, value in server.headers.items()}
        if server.allowed_tools is not None:
            mcp["allowed_tools"] = list(server.allowed_tools)
        if server.server_description:
            mcp["server_description"] = server.server_description
        out.append(mcp)
    return out


def _function(
    name: str, description: str, properties: dict[str, Any], required: list[str] | None = None
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"type": "function", "name": name, "description": description, "parameters": parameters}


def _turn_detection(vad: TurnDetection) -> dict[str, Any]:
    """Server VAD with its tuning, or semantic VAD with its eagerness; responses start on their own.

    `interrupt_response` is off: the bridge cancels itself, since only it knows whether the caller
    is still hearing audio.
    """
    if vad.type == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": vad.eagerness,
            "create_response": True,
            "interrupt_response": False,
        }
    return {
        "type": "server_vad",
        "threshold": vad.threshold,
        "prefix_padding_ms": vad.prefix_padding_ms,
        "silence_duration_ms": vad.silence_duration_ms,
        "create_response": True,
        "interrupt_response": False,
    }


def input_audio_append(audio: bytes) -> str:
    """Hot path (50 per second per call): built as a string, base64 needs no JSON escaping."""
    return (
        '{"type":"input_audio_buffer.append","audio":"' + pybase64.b64encode_as_string(audio) + '"}'
    )


def response_create(
    instructions: str | None = None, *, event_id: str | None = None, tools: bool = True
) -> dict[str, Any]:
    """Every response we ask for asks for audio, whatever the session says. Its `event_id`
    travels in the response's metadata, so `response.created` says which request it answers.
    `tools=False` forbids tool calls in this response (a holding phrase)."""
    response: dict[str, Any] = {"output_modalities": list(AUDIO_ONLY)}
    if instructions:
        response["instructions"] = instructions
    if not tools:
        response["tool_choice"] = "none"
    if event_id is not None:
        response["metadata"] = {REQUEST_METADATA: event_id}
    return _with_id({"type": "response.create", "response": response}, event_id)


def response_cancel(*, event_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": "response.cancel"}, event_id)


def item_truncate(
    item_id: str, audio_end_ms: int, *, event_id: str | None = None
) -> dict[str, Any]:
    return _with_id(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": max(0, int(audio_end_ms)),
        },
        event_id,
    )


def user_text(text: str, *, event_id: str | None = None) -> dict[str, Any]:
    """`conversation.item.create` of a user message holding `text` (e.g. keypad digits)."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return _with_id({"type": "conversation.item.create", "item": item}, event_id)


def function_call_output(
    call_id: str, output: str, *, event_id: str | None = None
) -> dict[str, Any]:
    """`conversation.item.create` of the output of the model's function call `call_id`."""
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return _with_id({"type": "conversation.item.create", "item": item}, event_id)


def system_text(text: str, *, event_id: str | None = None) -> dict[str, Any]:
    """`conversation.item.create` of a system message (what the bridge tells the model)."""
    item = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]}
    return _with_id({"type": "conversation.item.create", "item": item}, event_id)


def item_delete(item_id: str, *, event_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": "conversation.item.delete", "item_id": item_id}, event_id)


def say_exactly(base_instructions: str, text: str) -> str:
    """Per-response instructions replace the session's, so keep the persona and add the line."""
    return (
        f'{base_instructions}\n\nSay exactly this to the caller, aloud, and nothing else: "{text}"'
    )


def _with_id(event: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    if event_id is not None:
        event["event_id"] = event_id
    return event


# ---- server events ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AudioDelta:
    item_id: str
    response_id: str
    audio: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class TranscriptDelta:
    item_id: str
    delta: str


@dataclasses.dataclass(frozen=True, slots=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class InputTranscript:
    item_id: str
    transcript: str


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str
    request: str | None = None  # the `event_id` of our `response.create`, echoed in metadata


@dataclasses.dataclass(frozen=True, slots=True)
class OutputItem:
    item_id: str
    type: str
    content_types: tuple[str, ...]
    text: str

    @property
    def has_audio(self) -> bool:
        return any(kind in AUDIO_CONTENT_TYPES for kind in self.content_types)


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionCall:
    """The model calls a function (`response.output_item.done`, or `response.done`'s output)."""

    item_id: str
    call_id: str
    name: str
    arguments: str
    response_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class McpCallStarted:
    """The Realtime service started calling an MCP server's tool."""

    item_id: str
    name: str
    server_label: str


@dataclasses.dataclass(frozen=True, slots=True)
class McpCallDone:
    item_id: str
    name: str
    server_label: str
    arguments: str
    output: str
    error: str  # "" when it worked


@dataclasses.dataclass(frozen=True, slots=True)
class McpToolsListed:
    """An MCP server's tools as the service listed them (`conversation.item.done`), or the
    failure to list them (`mcp_list_tools.failed`: no label, no tools)."""

    item_id: str
    server_label: str
    tools: tuple[str, ...]
    failed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    reason: str | None
    output: tuple[OutputItem, ...]
    usage: dict[str, Any]
    function_calls: tuple[FunctionCall, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class ServerError:
    type: str
    code: str | None
    message: str
    event_id: str | None

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_ERROR_CODES

    @property
    def renewable(self) -> bool:
        """Fatal for this session, cured by a new one."""
        return self.code in RENEWABLE_ERROR_CODES


@dataclasses.dataclass(frozen=True, slots=True)
class Other:
    type: str


ServerEvent = (
    AudioDelta
    | TranscriptDelta
    | SpeechStarted
    | SpeechStopped
    | InputTranscript
    | ResponseCreated
    | ResponseDone
    | ItemTruncated
    | FunctionCall
    | McpCallStarted
    | McpCallDone
    | McpToolsListed
    | ServerError
    | Other
)


def parse_server_event(text: str | bytes) -> ServerEvent:
    """Parse one server frame; raise ProtocolViolation if it is not a Realtime event at all."""
    try:
        data = orjson.loads(text)
    except ValueError as exc:
        raise ProtocolViolation(f"invalid JSON from Realtime: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolViolation("Realtime event without a type")
    kind: str = data["type"]
    kind = BETA_NAMES.get(kind, kind)
    parser: Callable[[dict[str, Any], str], ServerEvent] = _PARSERS.get(kind, _other)
    try:
        return parser(data, kind)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProtocolViolation(f"malformed {kind}: {exc!r:.80}") from exc


def _audio_delta(data: dict[str, Any], kind: str) -> AudioDelta:
    return AudioDelta(
        item_id=data["item_id"],
        response_id=data.get("response_id", ""),
        audio=pybase64.b64decode(data["delta"], validate=True),
    )


def _transcript_delta(data: dict[str, Any], kind: str) -> TranscriptDelta:
    return TranscriptDelta(item_id=data.get("item_id", ""), delta=str(data.get("delta", "")))


def _speech_started(data: dict[str, Any], kind: str) -> SpeechStarted:
    return SpeechStarted(
        item_id=data.get("item_id", ""), audio_start_ms=int(data["audio_start_ms"])
    )


def _speech_stopped(data: dict[str, Any], kind: str) -> SpeechStopped:
    return SpeechStopped(item_id=data.get("item_id", ""), audio_end_ms=int(data["audio_end_ms"]))


def _input_transcript(data: dict[str, Any], kind: str) -> InputTranscript:
    return InputTranscript(item_id=data.get("item_id", ""), transcript=str(data["transcript"]))


def _response_created(data: dict[str, Any], kind: str) -> ResponseCreated:
    response = data["response"]
    metadata = response.get("metadata")
    request = metadata.get(REQUEST_METADATA) if isinstance(metadata, dict) else None
    return ResponseCreated(
        response_id=str(response["id"]), request=request if isinstance(request, str) else None
    )


def _response_done(data: dict[str, Any], kind: str) -> ResponseDone:
    response = data["response"]
    response_id = str(response.get("id", ""))
    details = response.get("status_details") or {}
    items = []
    calls = []
    for item in response.get("output") or []:
        if item.get("type") == "function_call":
            calls.append(_function_call(item, response_id))
        content = item.get("content") or []
        texts = [str(part.get("text") or part.get("transcript") or "") for part in content]
        items.append(
            OutputItem(
                item_id=str(item.get("id", "")),
                type=str(item.get("type", "")),
                content_types=tuple(str(part.get("type", "")) for part in content),
                text="".join(texts),
            )
        )
    return ResponseDone(
        response_id=response_id,
        status=str(response.get("status", "")),
        reason=details.get("reason") if isinstance(details, dict) else None,
        output=tuple(items),
        usage=dict(response.get("usage") or {}),
        function_calls=tuple(calls),
    )


def _function_call(item: dict[str, Any], response_id: str) -> FunctionCall:
    return FunctionCall(
        item_id=str(item.get("id", "")),
        call_id=str(item["call_id"]),
        name=str(item["name"]),
        arguments=str(item.get("arguments") or ""),
        response_id=response_id,
    )


def _output_item_added(data: dict[str, Any], kind: str) -> ServerEvent:
    item = data["item"]
    if item.get("type") == "mcp_call":
        return McpCallStarted(
            item_id=str(item.get("id", "")),
            name=str(item.get("name", "")),
            server_label=str(item.get("server_label", "")),
        )
    return Other(type=kind)


def _output_item_done(data: dict[str, Any], kind: str) -> ServerEvent:
    item = data["item"]
    if item.get("type") == "function_call":
        return _function_call(item, str(data.get("response_id", "")))
    if item.get("type") == "mcp_call":
        error = item.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("type") or "failed"
        return McpCallDone(
            item_id=str(item.get("id", "")),
            name=str(item.get("name", "")),
            server_label=str(item.get("server_label", "")),
            arguments=str(item.get("arguments") or ""),
            output=str(item.get("output") or ""),
            error=str(error or ""),
        )
    return Other(type=kind)


def _item_done(data: dict[str, Any], kind: str) -> ServerEvent:
    item = data["item"]
    if item.get("type") == "mcp_list_tools":
        tools = tuple(str(tool.get("name", "")) for tool in item.get("tools") or [])
        return McpToolsListed(
            item_id=str(item.get("id", "")),
            server_label=str(item.get("server_label", "")),
            tools=tools,
        )
    return Other(type=kind)


def _mcp_list_failed(data: dict[str, Any], kind: str) -> McpToolsListed:
    return McpToolsListed(
        item_id=str(data.get("item_id", "")), server_label="", tools=(), failed=True
    )


def _item_truncated(data: dict[str, Any], kind: str) -> ItemTruncated:
    return ItemTruncated(item_id=data["item_id"], audio_end_ms=int(data["audio_end_ms"]))


def _error(data: dict[str, Any], kind: str) -> ServerError:
    error = data.get("error") or {}
    return ServerError(
        type=str(error.get("type", "")),
        code=error.get("code"),
        message=str(error.get("message", "")),
        event_id=error.get("event_id"),
    )


def _other(data: dict[str, Any], kind: str) -> Other:
    return Other(type=kind)


_PARSERS = {
    "response.output_audio.delta": _audio_delta,
    "response.output_audio_transcript.delta": _transcript_delta,
    "input_audio_buffer.speech_started": _speech_started,
    "input_audio_buffer.speech_stopped": _speech_stopped,
    "conversation.item.input_audio_transcription.completed": _input_transcript,
    "response.created": _response_created,
    "response.done": _response_done,
    "conversation.item.truncated": _item_truncated,
    "response.output_item.added": _output_item_added,
    "response.output_item.done": _output_item_done,
    "conversation.item.done": _item_done,
    "mcp_list_tools.failed": _mcp_list_failed,
    "error": _error,
}
