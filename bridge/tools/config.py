"""A profile's actions and tools, as validated configuration (parsed by `bridge.tools.parse`).

Header values (and URLs) may name environment variables as `${NAME}`; they are expanded once,
when the numbers file loads, and held as `Secret`s so that no repr, log line or call record
shows them. `ProfileTools.secrets()` lists every expanded value, so what the model sends or a
tool answers can be scrubbed of them before it is recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"
BUILTIN_TOOLS = frozenset({END_CALL, TRANSFER_CALL})
HttpMethod = Literal["GET", "POST"]


@dataclasses.dataclass(frozen=True, slots=True)
class Secret:
    """A configured value after `${NAME}` expansion; `template` is what may be shown."""

    template: str
    value: str = dataclasses.field(repr=False)
    # The environment's values in it: scrubbed on their own too (a tool may echo a bare token).
    from_environment: tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        return self.template

    @property
    def expanded(self) -> bool:
        """True when the value came (partly) from the environment."""
        return self.value != self.template


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    """Where `transfer_call` (and keypad transfers) may send the caller, and how."""

    destinations: Mapping[str, str]  # name -> E.164 number
    say: str = "Please hold while I connect you."  # <Say> before the <Dial>; "" = none
    timeout_seconds: int = 30  # <Dial timeout>: ring this long before giving up
    caller_id: str = ""  # <Dial callerId>; "" = Twilio's default (the caller's own number)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyAction:
    """What a keypad key does at once: `end_call`, or `transfer` to `destination`."""

    action: Literal["end_call", "transfer"]
    destination: str = ""

    def __str__(self) -> str:
        return "end_call" if self.action == "end_call" else f"transfer:{self.destination}"


@dataclasses.dataclass(frozen=True, slots=True)
class HttpTool:
    """A function the model may call; the bridge runs it as one HTTP request."""

    name: str
    description: str
    url: Secret
    method: HttpMethod = "POST"
    parameters: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    headers: Mapping[str, Secret] = dataclasses.field(default_factory=dict)
    timeout_seconds: float = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class McpServer:
    """A remote MCP server the Realtime service itself calls during a response."""

    server_label: str
    server_url: Secret
    headers: Mapping[str, Secret] = dataclasses.field(default_factory=dict)
    allowed_tools: tuple[str, ...] | None = None  # None: every tool the server lists
    require_approval: Literal["never"] = "never"  # nobody on a phone line can approve a call
    server_description: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileTools:
    """Everything a profile lets the assistant do besides talking."""

    end_call: bool = True
    transfer: Transfer | None = None
    keypad: Mapping[str, KeyAction] = dataclasses.field(default_factory=dict)
    http: tuple[HttpTool, ...] = ()
    mcp: tuple[McpServer, ...] = ()

    def http_tool(self, name: str) -> HttpTool | None:
        for tool in self.http:
            if tool.name == name:
                return tool
        return None

    def secrets(self) -> tuple[str, ...]:
        """Every value that came from the environment, longest first (for scrubbing)."""
        found: set[str] = set()
        for tool in self.http:
            found.update(_expanded(tool.url, *tool.headers.values()))
        for server in self.mcp:
            found.update(_expanded(server.server_url, *server.headers.values()))
        return tuple(sorted((value for value in found if value), key=len, reverse=True))


def _expanded(*values: Secret) -> list[str]:
    found: list[str] = []
    for value in values:
        if value.expanded:
            found.append(value.value)
            found.extend(value.from_environment)
    return found


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret value replaced by `[secret]`."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "[secret]")
    return text
