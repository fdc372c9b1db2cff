"""What shapes one call: the assistant's persona, voice, greeting, turn-taking, audio mode and who
may call. `profile_from_table` builds one from a numbers-file table, naming every bad field.

A profile is fixed when the call starts; reloading configuration never changes a live call.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from bridge.fallback import DEFAULT_FALLBACK_SAY, Busy, Fallback
from bridge.redact import REDACT_KINDS
from bridge.settings import AudioMode, Settings
from bridge.tools.config import ProfileTools

TurnDetectionType = Literal["server_vad", "semantic_vad"]
Eagerness = Literal["low", "medium", "high", "auto"]
# The Realtime GA built-in voices; a typo here would otherwise surface as a failed call.
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
MAX_INSTRUCTIONS_CHARS = 100_000
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PREFIX = re.compile(r"^\+[0-9]{1,14}\*$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")  # ISO 639-1 (or -3), what the transcription API takes
_FORMATTING = re.compile(r"[\s().\-/]")
# Caller IDs Twilio uses when the number is withheld (anonymous, restricted, unknown, blocked).
WITHHELD = frozenset({"", "+266696687", "+7378742833", "+8656696", "+2562533"})
ANONYMOUS = "anonymous"


def normalise_number(text: str) -> str:
    """E.164 form of a phone number: `+1 (555) 010-0000` and `0015550100000` give `+15550100000`.

    Raises ValueError for anything that is not a plausible E.164 number.
    """
    compact = _FORMATTING.sub("", text.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _E164.match(compact):
        raise ValueError(f"{json.dumps(text)} is not an E.164 number (+ and 7 to 15 digits)")
    return compact


def _caller_entry(text: str) -> str:
    """A caller rule entry: an E.164 number, a prefix ending in `*`, or `anonymous`."""
    if text.strip().lower() == ANONYMOUS:
        return ANONYMOUS
    compact = _FORMATTING.sub("", text.strip())
    if _PREFIX.match(compact):
        return compact
    return normalise_number(text)


@dataclasses.dataclass(frozen=True, slots=True)
class CallerRules:
    """Who may call: an allow list or a deny list of numbers, `+44*` prefixes, or `anonymous`."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def admits(self, caller: str) -> bool:
        if self.allow:
            return _matches(self.allow, caller)
        return not _matches(self.deny, caller)


def _matches(entries: tuple[str, ...], caller: str) -> bool:
    try:
        number = normalise_number(caller)
    except ValueError:
        number = ""  # "anonymous", "client:alice", ...: no caller ID we can match on
    withheld = number in WITHHELD
    for entry in entries:
        if entry == ANONYMOUS:
            if withheld:
                return True
        elif entry.endswith("*"):
            if number and not withheld and number.startswith(entry[:-1]):
                return True
        elif number == entry:
            return True
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class TurnDetection:
    """Turn detection sent to the Realtime session: server VAD tuning, or semantic VAD eagerness."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    type: TurnDetectionType = "server_vad"
    eagerness: Eagerness = "auto"


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """One assistant configuration, chosen by the called number."""

    name: str
    instructions: str
    voice: str
    model: str
    greeting: str = ""
    goodbye: str = ""  # said when a server shutdown ends the call ("" = just close)
    turn_detection: TurnDetection = TurnDetection()
    transcription_model: str = "gpt-4o-mini-transcribe"
    audio_mode: AudioMode = AudioMode.TRANSCODE
    max_call_seconds: float = 3600.0
    keep_transcripts: bool = True
    transcription_language: str = ""  # empty: the transcription model detects it
    callers: CallerRules = CallerRules()
    # end_call, transfer, keypad, HTTP tools, MCP servers
    tools: ProfileTools = dataclasses.field(default_factory=ProfileTools)
    reconnect_seconds: float = 5.0  # trying to reach the model again before the fallback
    session_max_seconds: float = 3300.0  # move to a fresh Realtime session before this age
    # True when BRIDGE_SESSION_MAX_SECONDS set it: the environment then wins over the file.
    session_max_pinned: bool = False
    fallback: Fallback = dataclasses.field(default_factory=Fallback)  # model cannot be reached
    busy: Busy = dataclasses.field(default_factory=Busy)  # the process is at BRIDGE_MAX_CALLS
    record: bool = False  # a two-channel WAV of the call (bridge/recording)
    recording_retention_days: float | None = None  # `bridge calls prune` deletes older ones
    call_webhook_url: str = ""  # where finished calls are POSTed (default BRIDGE_CALL_WEBHOOK_URL)
    redact: frozenset[str] = frozenset()  # of REDACT_KINDS: replaced in every stored text

    @classmethod
    def from_settings(cls, settings: Settings, name: str = "default") -> Profile:
        """The built-in profile: everything comes from the environment."""
        return cls(
            name=name,
            instructions=settings.instructions,
            voice=settings.voice,
            model=settings.model,
            greeting=settings.greeting,
            goodbye=settings.goodbye,
            turn_detection=TurnDetection(
                threshold=settings.vad_threshold,
                prefix_padding_ms=settings.vad_prefix_padding_ms,
                silence_duration_ms=settings.vad_silence_ms,
            ),
            transcription_model=settings.transcription_model,
            audio_mode=settings.audio_mode,
            max_call_seconds=settings.max_call_seconds,
            reconnect_seconds=settings.reconnect_seconds,
            session_max_seconds=settings.session_max_seconds,
            session_max_pinned="session_max_seconds" in settings.model_fields_set,
            record=settings.record,
            call_webhook_url=settings.call_webhook_url or "",
        )


# ---- building a profile from a numbers-file table --------------------------------------------

PROFILE_FIELDS = (
    "instructions",
    "instructions_file",
    "voice",
    "model",
    "greeting",
    "goodbye",
    "turn_detection",
    "transcription",
    "audio_mode",
    "max_call_seconds",
    "keep_transcripts",
    "callers",
    "numbers",
    "end_call",
    "transfer",
    "keypad",
    "tools",
    "mcp",
    "reconnect_seconds",
    "session_max_seconds",
    "fallback",
    "busy",
    "record",
    "recording_retention_days",
    "call_webhook_url",
    "redact",
)
_SERVER_VAD_ONLY = ("threshold", "prefix_padding_ms", "silence_duration_ms")


def _show(value: Any) -> str:
    if isinstance(value, str | bool | int | float):
        return json.dumps(value)
    return type(value).__name__


class Fields:
    """Typed reads from one TOML table; each problem is reported under its dotted field name."""

    def __init__(self, table: Mapping[str, Any], where: str, problems: list[str]) -> None:
        self.table = table
        self.where = where  # e.g. 'config/numbers.toml: profile "support": '
        self.problems = problems

    def problem(self, field: str, message: str) -> None:
        self.problems.append(f"{self.where}{field}: {message}")

    def unknown(self, allowed: tuple[str, ...], prefix: str = "") -> None:
        for key in self.table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.problem(prefix + key, f"unknown field{hint}")

    def string(self, key: str, field: str, *, empty: bool = True) -> str | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(field, f"must be a string, got {_show(value)}")
            return None
        if not empty and not value.strip():
            self.problem(field, "must not be empty")
            return None
        return value

    def choice(self, key: str, field: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(key, field)
        if value is not None and value not in choices:
            allowed = ", ".join(json.dumps(choice) for choice in choices)
            self.problem(field, f"must be one of {allowed}, got {json.dumps(value)}")
            return None
        return value

    def number(
        self, key: str, field: str, low: float, high: float, *, integer: bool = False
    ) -> float | None:
        value = self.table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if integer else "a number"
            self.problem(field, f"must be {kind}, got {_show(value)}")
            return None
        if integer and not isinstance(value, int):
            self.problem(field, f"must be an integer, got {_show(value)}")
            return None
        if not low <= value <= high:
            self.problem(field, f"must be between {low:g} and {high:g}, got {value:g}")
            return None
        return float(value)

    def boolean(self, key: str, field: str) -> bool | None:
        value = self.table.get(key)
        if value is not None and not isinstance(value, bool):
            self.problem(field, f"must be true or false, got {_show(value)}")
            return None
        return value

    def subtable(self, key: str, field: str) -> Fields | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(field, f"must be a table, got {_show(value)}")
            return None
        return Fields(value, self.where, self.problems)

    def strings(self, key: str, field: str) -> list[str] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(field, "must be a list of strings")
            return None
        return value


def profile_from_table(
    name: str, fields: Fields, inherit: Profile, base_dir: Path, files: list[Path]
) -> Profile:
    """The profile `inherit` with the table's fields applied; problems go to `fields.problems`.

    Paths read (instructions files) are appended to `files` so a reload can watch them.
    """
    fields.unknown(PROFILE_FIELDS)
    changes: dict[str, Any] = {"name": name}
    instructions = fields.string("instructions", "instructions", empty=False)
    instructions_file = fields.string("instructions_file", "instructions_file", empty=False)
    if instructions is not None and instructions_file is not None:
        fields.problem("instructions", "set instructions or instructions_file, not both")
    elif instructions is not None:
        changes["instructions"] = instructions
    elif instructions_file is not None:
        path = base_dir / instructions_file
        files.append(path)
        text = _read_instructions(path, fields)
        if text is not None:
            changes["instructions"] = text
    voice = fields.choice("voice", "voice", VOICES)
    model = fields.string("model", "model", empty=False)
    greeting = fields.string("greeting", "greeting")
    goodbye = fields.string("goodbye", "goodbye")
    audio_mode = fields.choice("audio_mode", "audio_mode", tuple(mode.value for mode in AudioMode))
    seconds = fields.number("max_call_seconds", "max_call_seconds", 1, 86_400)
    keep = fields.boolean("keep_transcripts", "keep_transcripts")
    record = fields.boolean("record", "record")
    retention = fields.number("recording_retention_days", "recording_retention_days", 0, 36_500)
    webhook = fields.string("call_webhook_url", "call_webhook_url")
    if webhook and not _is_http_url(webhook):
        fields.problem("call_webhook_url", f"must be an http:// or https:// URL, got {webhook!r}")
        webhook = None
    reconnect = fields.number("reconnect_seconds", "reconnect_seconds", 0.5, 120)
    session_max = fields.number("session_max_seconds", "session_max_seconds", 60, 86_400)
    if inherit.session_max_pinned:
        session_max = None  # BRIDGE_SESSION_MAX_SECONDS wins (checked all the same)
    for key, value in (
        ("voice", voice),
        ("model", model),
        ("greeting", greeting),
        ("goodbye", goodbye),
        ("max_call_seconds", seconds),
        ("keep_transcripts", keep),
        ("reconnect_seconds", reconnect),
        ("session_max_seconds", session_max),
        ("record", record),
        ("recording_retention_days", retention),
        ("call_webhook_url", webhook),
    ):
        if value is not None:
            changes[key] = value
    if audio_mode is not None:
        changes["audio_mode"] = AudioMode(audio_mode)
    changes["turn_detection"] = _turn_detection(fields, inherit.turn_detection)
    transcription = fields.subtable("transcription", "transcription")
    if transcription is not None:
        transcription.unknown(("model", "language"), "transcription.")
        model_name = transcription.string("model", "transcription.model")
        if model_name is not None:
            changes["transcription_model"] = model_name.strip()
        language = transcription.string("language", "transcription.language")
        if language is not None and language and not _LANGUAGE.match(language):
            transcription.problem(
                "transcription.language",
                f'must be an ISO 639-1 code such as "en", got {json.dumps(language)}',
            )
        elif language is not None:
            changes["transcription_language"] = language
    # Caller rules belong to the profile that states them: they are never inherited.
    changes["callers"] = _callers(fields)
    from bridge.tools.parse import tools_from_table  # it imports Fields from this module

    changes["tools"] = tools_from_table(fields, inherit.tools)
    changes["fallback"] = _fallback(fields, inherit.fallback)
    changes["busy"] = _busy(fields, inherit.busy)
    kinds = fields.strings("redact", "redact")
    if kinds is not None:
        unknown = [kind for kind in kinds if kind not in REDACT_KINDS]
        if unknown:
            allowed = ", ".join(json.dumps(kind) for kind in REDACT_KINDS)
            fields.problem("redact", f"unknown {json.dumps(unknown[0])}; use any of {allowed}")
        else:
            changes["redact"] = frozenset(kinds)
    return dataclasses.replace(inherit, **changes)


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _read_instructions(path: Path, fields: Fields) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fields.problem("instructions_file", f"cannot read {path}: {reason}")
        return None
    if not text.strip():
        fields.problem("instructions_file", f"{path} is empty")
        return None
    if len(text) > MAX_INSTRUCTIONS_CHARS:
        fields.problem(
            "instructions_file", f"{path} has {len(text)} characters, over {MAX_INSTRUCTIONS_CHARS}"
        )
        return None
    return text.strip()


def _turn_detection(fields: Fields, inherit: TurnDetection) -> TurnDetection:
    table = fields.subtable("turn_detection", "turn_detection")
    if table is None:
        return inherit
    table.unknown(("type", *_SERVER_VAD_ONLY, "eagerness"), "turn_detection.")
    changes: dict[str, Any] = {}
    kind = table.choice("type", "turn_detection.type", get_args(TurnDetectionType))
    if kind is not None:
        changes["type"] = kind
    threshold = table.number("threshold", "turn_detection.threshold", 0, 1)
    padding = table.number(
        "prefix_padding_ms", "turn_detection.prefix_padding_ms", 0, 5000, integer=True
    )
    silence = table.number(
        "silence_duration_ms", "turn_detection.silence_duration_ms", 50, 10_000, integer=True
    )
    eagerness = table.choice("eagerness", "turn_detection.eagerness", get_args(Eagerness))
    if threshold is not None:
        changes["threshold"] = threshold
    if padding is not None:
        changes["prefix_padding_ms"] = int(padding)
    if silence is not None:
        changes["silence_duration_ms"] = int(silence)
    if eagerness is not None:
        changes["eagerness"] = eagerness
    effective = changes.get("type", inherit.type)
    # A setting the chosen detector ignores is a mistake the operator wants to hear about.
    if effective == "semantic_vad":
        for key in _SERVER_VAD_ONLY:
            if key in table.table:
                table.problem(f"turn_detection.{key}", "applies to server_vad only")
    elif "eagerness" in table.table:
        table.problem("turn_detection.eagerness", "applies to semantic_vad only")
    return dataclasses.replace(inherit, **changes)


def _fallback(fields: Fields, inherit: Fallback) -> Fallback:
    """`[fallback]` replaces the inherited one whole: `say` and `dial` are one decision."""
    table = fields.subtable("fallback", "fallback")
    if table is None:
        return inherit
    table.unknown(("say", "dial"), "fallback.")
    say = table.string("say", "fallback.say")
    dial = table.string("dial", "fallback.dial", empty=False)
    number = ""
    if dial is not None:
        try:
            number = normalise_number(dial)
        except ValueError as exc:
            table.problem("fallback.dial", str(exc))
    return Fallback(say=DEFAULT_FALLBACK_SAY if say is None else say, dial=number)


def _busy(fields: Fields, inherit: Busy) -> Busy:
    table = fields.subtable("busy", "busy")
    if table is None:
        return inherit
    table.unknown(("say",), "busy.")
    return Busy(say=table.string("say", "busy.say") or "")


def _callers(fields: Fields) -> CallerRules:
    table = fields.subtable("callers", "callers")
    if table is None:
        return CallerRules()
    table.unknown(("allow", "deny"), "callers.")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("allow", "deny"):
        entries = table.strings(key, f"callers.{key}")
        if entries is None:
            continue
        parsed = []
        for index, entry in enumerate(entries):
            try:
                parsed.append(_caller_entry(entry))
            except ValueError as exc:
                table.problem(
                    f"callers.{key}[{index}]",
                    f'{exc}; use a number, a prefix such as "+44*", or "anonymous"',
                )
        lists[key] = tuple(parsed)
    if "allow" in lists and "deny" in lists:
        table.problem("callers", "set allow or deny, not both")
        return CallerRules()
    return CallerRules(**lists)
