"""The exception tree, split by what the caller of the failing code can do about it.

BridgeError
├── ConfigError            settings or profiles are unusable: refuse to start (exit 2)
├── UpstreamError          the Realtime service failed us
│   ├── UpstreamRejected   it refused the session (auth, bad model, beta shape): do not retry
│   └── UpstreamUnavailable it could not be reached or dropped us: retrying may help
└── ProtocolViolation      a peer sent a message we cannot accept
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(BridgeError):
    """Configuration is missing or malformed; `problems` lists every finding."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UpstreamError(BridgeError):
    """The Realtime session failed."""


class UpstreamRejected(UpstreamError):
    """The Realtime service refused us; retrying the same request will not help."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class UpstreamUnavailable(UpstreamError):
    """The Realtime service could not be reached or went away; a retry may succeed."""


class ProtocolViolation(BridgeError):
    """A peer sent something that breaks its protocol; `detail` says what."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
