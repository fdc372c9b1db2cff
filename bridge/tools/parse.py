"""`ProfileTools` from a profile's numbers-file table: `end_call`, `[transfer]`, `[keypad]`,
`[[tools]]` and `[[mcp]]`, each replacing the inherited value whole, every bad field named.

`${NAME}` in URLs and header values is expanded here, once per load; an error message shows the
template, never what it expanded to.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from bridge.profiles import Fields, normalise_number
from bridge.tools.config import (
    BUILTIN_TOOLS,
    END_CALL,
    HttpTool,
    KeyAction,
    McpServer,
    ProfileTools,
    Secret,
    Transfer,
)

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DESTINATION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # becomes an enum value for the model
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what the Realtime API accepts
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token
KEYPAD_KEYS = "0123456789*#"
_TRANSFER_FIELDS = ("destinations", "say", "timeout_seconds", "caller_id")
_HTTP_FIELDS = ("name", "description", "url", "method", "parameters", "headers", "timeout_seconds")
_MCP_FIELDS = (
    "server_label",
    "server_url",
    "headers",
    "allowed_tools",
    "require_approval",
    "server_description",
)


def tools_from_table(
    fields: Fields, inherit: ProfileTools, environ: Mapping[str, str] | None = None
) -> ProfileTools:
    """`inherit` with the profile's tool fields applied; problems go to `fields.problems`.

    `environ` (default `os.environ`) supplies `${NAME}` values.
    """
    env = os.environ if environ is None else environ
    table = fields.table
    end_call = fields.boolean("end_call", "end_call")
    before = len(fields.problems)
    transfer = _transfer(fields) if "transfer" in table else inherit.transfer
    transfer_ok = len(fields.problems) == before
    keypad = _keypad(fields) if "keypad" in table else inherit.keypad
    # A keypad transfer must name a destination of the transfer in force, whichever of the two
    # this profile changed; a broken [transfer] is reported once, not again for every key.
    if transfer_ok and ("transfer" in table or "keypad" in table):
        inherited = "" if "keypad" in table else " (inherited)"
        _check_keypad(fields, keypad, transfer, inherited)
    http = _http_tools(fields, env) if "tools" in table else inherit.http
    mcp = _mcp_servers(fields, env) if "mcp" in table else inherit.mcp
    return ProfileTools(
        end_call=inherit.end_call if end_call is None else end_call,
        transfer=transfer,
        keypad=keypad,
        http=http,
        mcp=mcp,
    )


def _transfer(fields: Fields) -> Transfer | None:
    table = fields.subtable("transfer", "transfer")
    if table is None:
        return None
    table.unknown(_TRANSFER_FIELDS, "transfer.")
    destinations: dict[str, str] = {}
    listed = table.subtable("destinations", "transfer.destinations")
    if listed is not None:
        for name in listed.table:
            field = f"transfer.destinations.{name}"
            if not _DESTINATION.match(name):
                listed.problem(field, "name must be lowercase letters, digits, - or _ (at most 63)")
            number = listed.string(name, field, empty=False)
            if number is None:
                continue
            try:
                destinations[name] = normalise_number(number)
            except ValueError as exc:
                listed.problem(field, str(exc))
    if "destinations" not in table.table or (listed is not None and not listed.table):
        table.problem("transfer.destinations", "needs at least one name = number")
    changes: dict[str, Any] = {}
    say = table.string("say", "transfer.say")
    if say is not None:
        changes["say"] = say.strip()
    seconds = table.number("timeout_seconds", "transfer.timeout_seconds", 5, 600, integer=True)
    if seconds is not None:
        changes["timeout_seconds"] = int(seconds)
    caller_id = table.string("caller_id", "transfer.caller_id", empty=False)
    if caller_id is not None:
        try:
            changes["caller_id"] = normalise_number(caller_id)
        except ValueError as exc:
            table.problem("transfer.caller_id", str(exc))
    return Transfer(destinations, **changes) if destinations else None


def _keypad(fields: Fields) -> dict[str, KeyAction]:
    table = fields.subtable("keypad", "keypad")
    if table is None:
        return {}
    keypad: dict[str, KeyAction] = {}
    for key in table.table:
        field = f"keypad.{key}"
        if len(key) != 1 or key not in KEYPAD_KEYS:
            table.problem(field, "key must be one of 0-9, * or #")
            continue
        text = table.string(key, field, empty=False)
        if text is None:
            continue
        if text == END_CALL:
            keypad[key] = KeyAction("end_call")
        elif text.startswith("transfer:") and text != "transfer:":
            keypad[key] = KeyAction("transfer", text.removeprefix("transfer:"))
        else:
            table.problem(field, f'must be "end_call" or "transfer:NAME", got {json.dumps(text)}')
    return keypad


def _check_keypad(
    fields: Fields, keypad: Mapping[str, KeyAction], transfer: Transfer | None, inherited: str
) -> None:
    for key, action in keypad.items():
        if action.action != "transfer":
            continue
        if transfer is None:
            reason = "this profile has no [transfer] destinations"
        elif action.destination not in transfer.destinations:
            names = ", ".join(transfer.destinations)
            reason = f'no destination "{action.destination}" in transfer.destinations ({names})'
        else:
            continue
        fields.problem(f"keypad.{key}", f'"{action}"{inherited}: {reason}')


def _tables(fields: Fields, key: str) -> list[tuple[str, Fields]]:
    """The tables of an array of tables, each with its field prefix (`tools[0].`)."""
    value = fields.table.get(key)
    if not isinstance(value, list):
        fields.problem(key, f"must be an array of tables ([[profiles.NAME.{key}]])")
        return []
    found = []
    for index, item in enumerate(value):
        if isinstance(item, dict):
            found.append((f"{key}[{index}].", Fields(item, fields.where, fields.problems)))
        else:
            fields.problem(f"{key}[{index}]", "must be a table")
    return found


def _http_tools(fields: Fields, env: Mapping[str, str]) -> tuple[HttpTool, ...]:
    tools: list[HttpTool] = []
    names: dict[str, str] = {}
    for prefix, table in _tables(fields, "tools"):
        table.unknown(_HTTP_FIELDS, prefix)
        name = _label(table, "name", prefix, names)
        if name in BUILTIN_TOOLS:
            table.problem(f"{prefix}name", f'"{name}" is the name of a built-in tool')
            name = None
        description = _required(table, "description", prefix)
        url = _url(table, "url", prefix, env)
        method = table.choice("method", f"{prefix}method", ("GET", "POST"))
        parameters = _parameters(table, prefix)
        headers = _headers(table, prefix, env)
        seconds = table.number("timeout_seconds", f"{prefix}timeout_seconds", 0.1, 60)
        if name is None or description is None or url is None or headers is None:
            continue
        changes: dict[str, Any] = {"headers": headers}
        if method is not None:
            changes["method"] = method
        if parameters is not None:
            changes["parameters"] = parameters
        if seconds is not None:
            changes["timeout_seconds"] = seconds
        tools.append(HttpTool(name, description.strip(), url, **changes))
    return tuple(tools)


def _mcp_servers(fields: Fields, env: Mapping[str, str]) -> tuple[McpServer, ...]:
    servers: list[McpServer] = []
    labels: dict[str, str] = {}
    for prefix, table in _tables(fields, "mcp"):
        table.unknown(_MCP_FIELDS, prefix)
        label = _label(table, "server_label", prefix, labels)
        url = _url(table, "server_url", prefix, env)
        headers = _headers(table, prefix, env)
        allowed = table.strings("allowed_tools", f"{prefix}allowed_tools")
        if allowed is not None and not allowed:
            table.problem(f"{prefix}allowed_tools", "must not be empty (leave it out for all)")
        approval = table.table.get("require_approval", "never")
        if approval != "never":
            table.problem(
                f"{prefix}require_approval",
                f'must be "never", got {_shown(approval)}: nobody on a phone line can approve '
                "a tool call",
            )
        description = table.string("server_description", f"{prefix}server_description")
        if label is None or url is None or headers is None:
            continue
        servers.append(
            McpServer(
                server_label=label,
                server_url=url,
                headers=headers,
                allowed_tools=None if allowed is None else tuple(allowed),
                server_description=(description or "").strip(),
            )
        )
    return tuple(servers)


def _required(table: Fields, key: str, prefix: str) -> str | None:
    if key not in table.table:
        table.problem(prefix + key, "is required")
        return None
    return table.string(key, prefix + key, empty=False)


def _label(table: Fields, key: str, prefix: str, seen: dict[str, str]) -> str | None:
    """A tool name or server label: required, API-safe, unique within its list."""
    name = _required(table, key, prefix)
    if name is None:
        return None
    if not _TOOL_NAME.match(name):
        table.problem(prefix + key, "must be 1 to 64 letters, digits, _ or -")
        return None
    first = seen.setdefault(name, prefix + key)
    if first != prefix + key:
        table.problem(prefix + key, f'"{name}" is already used by {first}')
        return None
    return name


def _url(table: Fields, key: str, prefix: str, env: Mapping[str, str]) -> Secret | None:
    template = _required(table, key, prefix)
    if template is None:
        return None
    url = _expand(table, template.strip(), prefix + key, env)
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url.value)
        host = parts.hostname
    except ValueError:
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        table.problem(prefix + key, f"{json.dumps(template)} is not an http(s) URL")
        return None
    return url


def _headers(table: Fields, prefix: str, env: Mapping[str, str]) -> dict[str, Secret] | None:
    headers = table.subtable("headers", f"{prefix}headers")
    if headers is None:
        return None if "headers" in table.table else {}
    found: dict[str, Secret] = {}
    for name in headers.table:
        field = f"{prefix}headers.{name}"
        if not _HEADER_NAME.match(name):
            headers.problem(field, "is not a valid header name")
            continue
        template = headers.string(name, field)
        value = None if template is None else _expand(headers, template, field, env)
        if value is None:
            continue
        if "\r" in value.value or "\n" in value.value:
            headers.problem(field, "must not contain a line break")
            continue
        found[name] = value
    return found if len(found) == len(headers.table) else None


def _parameters(table: Fields, prefix: str) -> dict[str, Any] | None:
    """A JSON-schema object for the tool's arguments, as the Realtime API takes it."""
    schema = table.subtable("parameters", f"{prefix}parameters")
    if schema is None:
        return None
    field = f"{prefix}parameters"
    if schema.table.get("type") != "object":
        table.problem(field, 'must be a JSON schema with type = "object"')
        return None
    if not isinstance(schema.table.get("properties", {}), dict):
        table.problem(f"{field}.properties", "must be a table")
        return None
    try:
        json.dumps(schema.table)
    except (TypeError, ValueError):
        table.problem(field, "must hold JSON values only (no dates or times)")
        return None
    return dict(schema.table)


def _expand(table: Fields, template: str, field: str, env: Mapping[str, str]) -> Secret | None:
    """`template` with each `${NAME}` replaced from `env`; a missing variable is a problem."""
    missing = False
    used: list[str] = []

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        found = env.get(name)
        if not found:
            state = "is not set" if found is None else "is empty"
            table.problem(field, f"${{{name}}} {state} in the environment")
            missing = True
            return ""
        used.append(found)
        return found

    expanded = _VARIABLE.sub(value, template)
    return None if missing else Secret(template, expanded, tuple(used))


def _shown(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return type(value).__name__
