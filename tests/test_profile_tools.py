"""A profile's actions and tools from the numbers file: `${NAME}` expansion that never shows the
value, inheritance from the default, and one message per mistake naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.numbers import load
from bridge.profiles import Fields
from bridge.settings import Settings
from bridge.tools.config import (
    HttpTool,
    KeyAction,
    McpServer,
    ProfileTools,
    Secret,
    Transfer,
)
from bridge.tools.parse import tools_from_table

SETTINGS = Settings(openai_api_key="k")
ORDERS_TOKEN = "orders-secret-123"
CRM_TOKEN = "crm-secret-4567"

FULL = """
[profiles.orders]
numbers = ["+15550100000"]
end_call = true

[profiles.orders.transfer]
destinations = { front_desk = "+15550100100", billing = "+1 (555) 010-0200" }
say = "One moment."
timeout_seconds = 45
caller_id = "+15550100000"

[profiles.orders.keypad]
"0" = "transfer:front_desk"
"9" = "end_call"

[[profiles.orders.tools]]
name = "lookup_order"
description = "Look up an order by its number"
url = "https://api.example.com/orders"
method = "POST"
parameters = { type = "object", properties = { order = { type = "string" } }, required = ["order"] }
headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
timeout_seconds = 5

[[profiles.orders.mcp]]
server_label = "crm"
server_url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${CRM_TOKEN}" }
allowed_tools = ["find_customer"]
require_approval = "never"
"""


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", ORDERS_TOKEN)
    monkeypatch.setenv("CRM_TOKEN", CRM_TOKEN)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "numbers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, SETTINGS)
    return caught.value.problems


@pytest.mark.usefixtures("environ")
def test_the_full_example_loads_with_secrets_expanded_and_hidden(tmp_path: Path) -> None:
    tools = load(write(tmp_path, FULL), SETTINGS).profiles["orders"].tools
    auth = Secret("Bearer ${ORDERS_TOKEN}", f"Bearer {ORDERS_TOKEN}")
    assert tools == ProfileTools(
        end_call=True,
        transfer=Transfer(
            destinations={"front_desk": "+15550100100", "billing": "+15550100200"},
            say="One moment.",
            timeout_seconds=45,
            caller_id="+15550100000",
        ),
        keypad={"0": KeyAction("transfer", "front_desk"), "9": KeyAction("end_call")},
        http=(
            HttpTool(
                name="lookup_order",
                description="Look up an order by its number",
                url=Secret("https://api.example.com/orders", "https://api.example.com/orders"),
                method="POST",
                parameters={
                    "type": "object",
                    "properties": {"order": {"type": "string"}},
                    "required": ["order"],
                },
                headers={"Authorization": auth},
                timeout_seconds=5.0,
            ),
        ),
        mcp=(
            McpServer(
                server_label="crm",
                server_url=Secret("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
                headers={"Authorization": Secret("Bearer ${CRM_TOKEN}", f"Bearer {CRM_TOKEN}")},
                allowed_tools=("find_customer",),
            ),
        ),
    )
    assert ORDERS_TOKEN not in repr(tools)
    assert CRM_TOKEN not in repr(tools)
    assert str(auth) == "Bearer ${ORDERS_TOKEN}"
    # Longest first; the bare tokens too, should a tool echo one without "Bearer".
    assert tools.secrets() == (
        f"Bearer {ORDERS_TOKEN}",
        f"Bearer {CRM_TOKEN}",
        ORDERS_TOKEN,
        CRM_TOKEN,
    )


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    tools = load(write(tmp_path, '[profiles.default]\nvoice = "sage"\n'), SETTINGS).default.tools
    assert tools == ProfileTools()
    path = write(
        tmp_path,
        """
        [[profiles.default.tools]]
        name = "ping"
        description = "Check the service"
        url = "http://localhost:8080/ping"
        """,
    )
    (tool,) = load(path, SETTINGS).default.tools.http
    assert (tool.method, tool.timeout_seconds, dict(tool.headers)) == ("POST", 5.0, {})
    assert tool.parameters == {"type": "object", "properties": {}}
    assert not tool.url.expanded


def test_an_unset_variable_is_refused_naming_it_and_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORDERS_TOKEN", raising=False)
    monkeypatch.setenv("CRM_TOKEN", CRM_TOKEN)
    problems = problems_of(write(tmp_path, FULL))
    assert problems == [
        f'{tmp_path / "numbers.toml"}: profile "orders": tools[0].headers.Authorization: '
        "${ORDERS_TOKEN} is not set in the environment"
    ]
    monkeypatch.setenv("ORDERS_TOKEN", ORDERS_TOKEN)
    monkeypatch.setenv("CRM_TOKEN", "")
    problems = problems_of(write(tmp_path, FULL))
    assert problems == [
        f'{tmp_path / "numbers.toml"}: profile "orders": mcp[0].headers.Authorization: '
        "${CRM_TOKEN} is empty in the environment"
    ]


def test_errors_never_show_expanded_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE", "ftp://secret-host.internal")
    monkeypatch.setenv("TOKEN", "line\nbreak-secret")
    text = """
    [[profiles.default.tools]]
    name = "t"
    description = "d"
    url = "${BASE}/x"
    headers = { X-Token = "${TOKEN}" }
    """
    problems = problems_of(write(tmp_path, text))
    assert [problem.split(": ", 2)[2] for problem in problems] == [
        'tools[0].url: "${BASE}/x" is not an http(s) URL',
        "tools[0].headers.X-Token: must not contain a line break",
    ]
    assert not any("secret" in problem for problem in problems)


def test_environ_can_be_passed_explicitly() -> None:
    problems: list[str] = []
    table = {"mcp": [{"server_label": "crm", "server_url": "https://${HOST}/mcp"}]}
    tools = tools_from_table(Fields(table, "", problems), ProfileTools(), {"HOST": "mcp.test"})
    assert problems == []
    assert tools.mcp[0].server_url == Secret("https://${HOST}/mcp", "https://mcp.test/mcp")
    assert tools.secrets() == ("https://mcp.test/mcp", "mcp.test")


@pytest.mark.usefixtures("environ")
def test_profiles_inherit_from_default_and_replace_whole_fields(tmp_path: Path) -> None:
    text = FULL.replace("profiles.orders", "profiles.default").replace("numbers = [", "# [")
    text += """
    [profiles.quiet]
    end_call = false
    keypad = { "1" = "transfer:billing" }

    [profiles.plain]
    transfer = { destinations = { desk = "+15550100300" } }
    keypad = {}
    tools = []
    mcp = []
    """
    directory = load(write(tmp_path, text), SETTINGS)
    default, quiet, plain = (
        directory.profiles[name].tools for name in ("default", "quiet", "plain")
    )
    assert quiet.end_call is False
    assert quiet.keypad == {"1": KeyAction("transfer", "billing")}  # replaced as a whole
    assert (quiet.transfer, quiet.http, quiet.mcp) == (default.transfer, default.http, default.mcp)
    assert plain.end_call is True
    assert plain.transfer == Transfer(destinations={"desk": "+15550100300"})
    assert (plain.keypad, plain.http, plain.mcp) == ({}, (), ())


@pytest.mark.usefixtures("environ")
def test_a_new_transfer_breaking_the_inherited_keypad_is_reported(tmp_path: Path) -> None:
    text = FULL.replace("profiles.orders", "profiles.default").replace("numbers = [", "# [")
    text += '[profiles.other.transfer]\ndestinations = { desk = "+15550100300" }\n'
    (problem,) = problems_of(write(tmp_path, text))
    assert problem.endswith(
        'profile "other": keypad.0: "transfer:front_desk" (inherited): '
        'no destination "front_desk" in transfer.destinations (desk)'
    )


TOOL = '[[profiles.p.tools]]\nname = "t"\ndescription = "d"\nurl = "https://x.test/"\n'
MCP = '[[profiles.p.mcp]]\nserver_label = "s"\nserver_url = "https://x.test/mcp"\n'
DESTINATIONS = '[profiles.p.transfer]\ndestinations = { desk = "+15550100100" }\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[profiles.p]\nend_call = "yes"', 'end_call: must be true or false, got "yes"'),
        ("[profiles.p]\ntools = 3", "tools: must be an array of tables ([[profiles.NAME.tools]])"),
        ("[profiles.p]\nmcp = [1]", "mcp[0]: must be a table"),
        # transfer
        ("[profiles.p.transfer]\nsay = 'hi'", "transfer.destinations: needs at least one name"),
        ("[profiles.p.transfer]\ndestinations = {}", "transfer.destinations: needs at least one"),
        (
            '[profiles.p.transfer]\ndestinations = { "Front Desk" = "+15550100100" }',
            "transfer.destinations.Front Desk: name must be lowercase letters, digits, - or _",
        ),
        (
            '[profiles.p.transfer]\ndestinations = { desk = "555-0100" }',
            'transfer.destinations.desk: "555-0100" is not an E.164 number',
        ),
        (
            "[profiles.p.transfer]\ndestinations = { desk = 5550100 }",
            "transfer.destinations.desk: must be a string, got 5550100",
        ),
        (DESTINATIONS + "timeout = 30", 'transfer.timeout: unknown field (did you mean "timeou'),
        (DESTINATIONS + "timeout_seconds = 2", "transfer.timeout_seconds: must be between 5 and"),
        (DESTINATIONS + "timeout_seconds = 7.5", "transfer.timeout_seconds: must be an integer"),
        (DESTINATIONS + 'caller_id = "me"', 'transfer.caller_id: "me" is not an E.164 number'),
        # keypad
        ('[profiles.p.keypad]\n"A" = "end_call"', "keypad.A: key must be one of 0-9, * or #"),
        ('[profiles.p.keypad]\n"10" = "end_call"', "keypad.10: key must be one of 0-9, * or #"),
        (
            '[profiles.p.keypad]\n"5" = "hangup"',
            'keypad.5: must be "end_call" or "transfer:NAME", got "hangup"',
        ),
        (
            '[profiles.p.keypad]\n"0" = "transfer:desk"',
            'keypad.0: "transfer:desk": this profile has no [transfer] destinations',
        ),
        (
            DESTINATIONS + '[profiles.p.keypad]\n"#" = "transfer:billing"',
            'keypad.#: "transfer:billing": no destination "billing" in transfer.destinations',
        ),
        # HTTP tools
        (TOOL + "nmae = 'x'", 'tools[0].nmae: unknown field (did you mean "name"?)'),
        (TOOL.replace('name = "t"\n', ""), "tools[0].name: is required"),
        (TOOL.replace('"t"', '"look up"'), "tools[0].name: must be 1 to 64 letters, digits"),
        (TOOL.replace('"t"', '"x' + "y" * 64 + '"'), "tools[0].name: must be 1 to 64 letters"),
        (TOOL + TOOL, 'tools[1].name: "t" is already used by tools[0].name'),
        (TOOL.replace('"t"', '"end_call"'), 'tools[0].name: "end_call" is the name of a built-in'),
        (TOOL.replace('"t"', '"transfer_call"'), 'tools[0].name: "transfer_call" is the name of'),
        (TOOL.replace('"d"', '"  "'), "tools[0].description: must not be empty"),
        (TOOL.replace('description = "d"\n', ""), "tools[0].description: is required"),
        (TOOL.replace("https://x.test/", "ftp://x.test/"), 'tools[0].url: "ftp://x.test/" is not'),
        (TOOL.replace("https://x.test/", "https:///path"), 'tools[0].url: "https:///path" is'),
        (TOOL + 'method = "get"', 'tools[0].method: must be one of "GET", "POST", got "get"'),
        (TOOL + "parameters = { order = 1 }", "tools[0].parameters: must be a JSON schema with"),
        (TOOL + 'parameters = "{}"', 'tools[0].parameters: must be a table, got "{}"'),
        (
            TOOL + 'parameters = { type = "object", properties = [] }',
            "tools[0].parameters.properties: must be a table",
        ),
        (
            TOOL + 'parameters = { type = "object", default = 2024-01-01 }',
            "tools[0].parameters: must hold JSON values only",
        ),
        (TOOL + "headers = { X-Id = 7 }", "tools[0].headers.X-Id: must be a string, got 7"),
        (TOOL + 'headers = { "X Id" = "7" }', "tools[0].headers.X Id: is not a valid header name"),
        (TOOL + "headers = []", "tools[0].headers: must be a table, got list"),
        (TOOL + "timeout_seconds = 0", "tools[0].timeout_seconds: must be between 0.1 and 60"),
        (TOOL + "timeout_seconds = 61", "tools[0].timeout_seconds: must be between 0.1 and 60"),
        # MCP servers
        (MCP + "allowed = []", 'mcp[0].allowed: unknown field (did you mean "allowed_tools"?)'),
        (MCP.replace('server_label = "s"\n', ""), "mcp[0].server_label: is required"),
        (MCP.replace('"s"', '"a.b"'), "mcp[0].server_label: must be 1 to 64 letters, digits"),
        (MCP + MCP, 'mcp[1].server_label: "s" is already used by mcp[0].server_label'),
        (MCP.replace("https://x.test/mcp", "x.test/mcp"), 'mcp[0].server_url: "x.test/mcp" is'),
        (MCP + "allowed_tools = 'find'", "mcp[0].allowed_tools: must be a list of strings"),
        (MCP + "allowed_tools = []", "mcp[0].allowed_tools: must not be empty"),
        (MCP + "server_description = 1", "mcp[0].server_description: must be a string, got 1"),
        (
            MCP + 'require_approval = "always"',
            'mcp[0].require_approval: must be "never", got "always": nobody on a phone line '
            "can approve a tool call",
        ),
        (
            MCP + "require_approval = { never = { tool_names = ['x'] } }",
            'mcp[0].require_approval: must be "never", got {"never": {"tool_names": ["x"]}}',
        ),
    ],
)
def test_mistakes_are_named_by_field(tmp_path: Path, body: str, expected: str) -> None:
    problems = problems_of(write(tmp_path, body))
    assert any(f'profile "p": {expected}' in problem for problem in problems), problems
    assert len(problems) == 1, problems


def test_every_mistake_in_one_file_is_reported_together(tmp_path: Path) -> None:
    text = (
        '[profiles.p]\nend_call = 1\n[profiles.p.keypad]\n"X" = "end_call"\n'
        + TOOL.replace('"t"', '"end_call"')
        + MCP
        + 'require_approval = "always"\n'
    )
    problems = problems_of(write(tmp_path, text))
    assert [problem.split(": ", 2)[2].split(":")[0] for problem in problems] == [
        "end_call",
        "keypad.X",
        "tools[0].name",
        "mcp[0].require_approval",
    ]
