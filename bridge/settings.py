"""Process settings from the environment, validated once at start-up.

Secrets live only here (as `SecretStr`, so they never print); everything per phone number lives
in profiles.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from bridge.errors import ConfigError

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_API_KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}$")
DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_INSTRUCTIONS = (
    "You are a friendly, concise voice assistant answering a phone call. "
    "Speak naturally in short sentences; the caller hears you over a telephone line."
)


class AudioMode(enum.StrEnum):
    """How caller audio meets the model: transcoded to 24 kHz PCM16, or mu-law passed through."""

    TRANSCODE = "transcode"
    PCMU = "pcmu"


# Environment variable -> field name. Unlisted BRIDGE_* variables are ignored.
ENVIRONMENT: dict[str, str] = {
    "OPENAI_API_KEY": "openai_api_key",
    "BRIDGE_REALTIME_URL": "realtime_url",
    "BRIDGE_MODEL": "model",
    "BRIDGE_VOICE": "voice",
    "BRIDGE_INSTRUCTIONS": "instructions",
    "BRIDGE_GREETING": "greeting",
    "BRIDGE_GOODBYE": "goodbye",
    "BRIDGE_PUBLIC_URL": "public_url",
    "BRIDGE_TTS_URL": "tts_url",
    "BRIDGE_TTS_MODEL": "tts_model",
    "BRIDGE_TRANSCRIPTION_MODEL": "transcription_model",
    "BRIDGE_VAD_THRESHOLD": "vad_threshold",
    "BRIDGE_VAD_PREFIX_PADDING_MS": "vad_prefix_padding_ms",
    "BRIDGE_VAD_SILENCE_MS": "vad_silence_ms",
    "BRIDGE_AUDIO_MODE": "audio_mode",
    "BRIDGE_MAX_CALL_SECONDS": "max_call_seconds",
    "BRIDGE_CONNECT_TIMEOUT": "connect_timeout",
    "BRIDGE_LOG_FORMAT": "log_format",
    "BRIDGE_LOG_LEVEL": "log_level",
    "BRIDGE_ENV": "environment",
    "BRIDGE_NUMBERS": "numbers_file",
    "BRIDGE_TRUST_FORWARDED": "trust_forwarded",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_API_KEY": "twilio_api_key",
    "TWILIO_API_SECRET": "twilio_api_secret",
    "BRIDGE_ADMIN_TOKEN": "admin_token",
    "BRIDGE_DATABASE_URL": "database_url",
    "BRIDGE_DRAIN_SECONDS": "drain_seconds",
    "BRIDGE_METRICS_PORT": "metrics_port",
    "BRIDGE_METRICS_HOST": "metrics_host",
    "BRIDGE_WORKERS": "workers",
    "BRIDGE_MAX_CALLS": "max_calls",
    "BRIDGE_RECONNECT_SECONDS": "reconnect_seconds",
    "BRIDGE_SESSION_MAX_SECONDS": "session_max_seconds",
    "BRIDGE_EVENT_LOOP_LAG_LIMIT_MS": "event_loop_lag_limit_ms",
    "BRIDGE_CALLER_TIMEOUT_SECONDS": "caller_timeout_seconds",
    "BRIDGE_RECORD": "record",
    "BRIDGE_RECORDINGS_DIR": "recordings_dir",
    "BRIDGE_RECORDINGS_URL": "recordings_url",
    "BRIDGE_CALL_WEBHOOK_URL": "call_webhook_url",
    "BRIDGE_CALL_WEBHOOK_SECRET": "call_webhook_secret",
}


class Settings(BaseModel):
    """Everything the process needs that does not depend on which number was called."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    openai_api_key: SecretStr
    realtime_url: str = DEFAULT_REALTIME_URL
    model: str = Field(default="gpt-realtime", min_length=1)
    voice: str = Field(default="marin", min_length=1)
    instructions: str = DEFAULT_INSTRUCTIONS
    greeting: str = ""
    goodbye: str = ""
    public_url: str | None = None
    tts_url: str | None = None
    tts_model: str = "gpt-4o-mini-tts"
    transcription_model: str = "gpt-4o-mini-transcribe"
    vad_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    vad_prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    vad_silence_ms: int = Field(default=500, ge=50, le=10000)
    audio_mode: AudioMode = AudioMode.TRANSCODE
    max_call_seconds: float = Field(default=3600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0, le=120)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    environment: Literal["development", "production"] = "development"
    numbers_file: str | None = None  # per-number profiles (TOML); default config/numbers.toml
    trust_forwarded: bool = False  # believe X-Forwarded-Proto/Host from a reverse proxy
    twilio_auth_token: SecretStr | None = None
    twilio_account_sid: str | None = None
    twilio_api_key: str | None = None
    twilio_api_secret: SecretStr | None = None
    admin_token: SecretStr | None = None  # protects the dashboard, API and metrics
    database_url: str = "sqlite+aiosqlite:///./data/bridge.db"
    drain_seconds: float = Field(default=300.0, ge=0)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The metrics port has no token: loopback unless a scraper must reach it (containers).
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    workers: int = Field(default=1, ge=1, le=64)  # `bridge serve` processes (bridge.workers)
    # Admission control, per process: calls beyond it hear the profile's busy answer (None: no
    # limit), and /readyz fails while the loop lags past the limit (None: lag is only exported).
    max_calls: int | None = Field(default=None, ge=1)
    event_loop_lag_limit_ms: float | None = Field(default=None, gt=0, le=10_000)
    # Profile defaults: how long to try reaching the model again before the fallback, and when to
    # move to a fresh Realtime session (the service ends one at 60 minutes, Azure at 30).
    reconnect_seconds: float = Field(default=5.0, ge=0.5, le=120)
    # Set in the environment, it wins over every profile's (see Profile.from_settings).
    session_max_seconds: float = Field(default=3300.0, ge=60, le=86_400)
    # A Media Stream with no message for this long is dead (Twilio sends media every 20 ms).
    caller_timeout_seconds: float = Field(default=5.0, ge=0.5, le=300)
    # Recordings: the default profile's `record`, and where WAVs go (a directory, or an
    # S3-compatible bucket `s3://bucket/prefix`, which wins when set; with replicas use a bucket).
    record: bool = False
    recordings_dir: str = "./data/recordings"
    recordings_url: str | None = None
    # Post-call webhook: every finished call is POSTed here, signed with the secret (HMAC-SHA256).
    call_webhook_url: str | None = None  # a profile's call_webhook_url overrides it
    call_webhook_secret: SecretStr | None = None

    @field_validator("openai_api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("realtime_url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"must be a ws:// or wss:// URL, got {value!r}")
        return value

    @field_validator("recordings_url")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"must be an s3://bucket/prefix URL, got {value!r}")
        return value

    @field_validator("public_url", "tts_url", "call_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _no_query(cls, value: str | None) -> str | None:
        # Twilio refuses a <Stream url> with a query string (error 31920), and signs the exact URL.
        if value is not None and (urlsplit(value).query or urlsplit(value).fragment):
            raise ValueError(f"must not have a query string or fragment, got {value!r}")
        return value

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is not None and not _ACCOUNT_SID.match(value):
            raise ValueError("must be an account SID: AC followed by 32 hex digits")
        return value

    @field_validator("twilio_api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        if value is not None and not _API_KEY_SID.match(value):
            raise ValueError("must be an API key SID: SK followed by 32 hex digits")
        return value

    @field_validator("twilio_auth_token", "twilio_api_secret")
    @classmethod
    def _secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be blank")
        return value

    @property
    def is_azure(self) -> bool:
        """Azure OpenAI wants an `api-key` header instead of a bearer token."""
        host = urlsplit(self.realtime_url).hostname or ""
        return host.endswith((".openai.azure.com", ".cognitiveservices.azure.com"))

    @property
    def speech_url(self) -> str:
        """Where the text-to-speech fallback posts: configured, else beside the Realtime URL."""
        if self.tts_url:
            return self.tts_url
        parts = urlsplit(self.realtime_url)
        scheme = "https" if parts.scheme == "wss" else "http"
        path = parts.path.rstrip("/")
        path = path[: -len("/realtime")] if path.endswith("/realtime") else path
        return urlunsplit((scheme, parts.netloc, f"{path}/audio/speech", "", ""))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate; raise ConfigError naming every bad variable."""
        env = os.environ if environ is None else environ
        values = {field: env[name] for name, field in ENVIRONMENT.items() if env.get(name)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            reverse = {field: name for name, field in ENVIRONMENT.items()}
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else "?"
                variable = reverse.get(field, field)
                message = "is required" if error["type"] == "missing" else error["msg"]
                problems.append(f"{variable}: {message}")
            raise ConfigError(problems) from exc
