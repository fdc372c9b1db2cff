"""A profile's survival fields: reconnect budget, session cap (and the environment overriding it),
`[fallback]` and `[busy]`, validated, inherited, and the TwiML each answers with."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.after_stream import NextStep
from bridge.errors import ConfigError
from bridge.fallback import DEFAULT_FALLBACK_SAY, Busy, Fallback
from bridge.numbers import Directory, load
from bridge.profiles import Profile
from bridge.settings import Settings

SETTINGS = Settings(openai_api_key="sk-test")
FILE = """
[profiles.default]
reconnect_seconds = 8
session_max_seconds = 1700

[profiles.default.fallback]
say = "We are having trouble. Goodbye."

[profiles.default.busy]
say = "All lines are busy."

[profiles.support]
numbers = ["+15550100000"]
reconnect_seconds = 2.5

[profiles.support.fallback]
dial = "+1 (555) 010-0100"

[profiles.quiet]
numbers = ["+15550100002"]
session_max_seconds = 600

[profiles.quiet.busy]
say = ""
"""


def load_text(tmp_path: Path, text: str, settings: Settings = SETTINGS) -> Directory:
    path = tmp_path / "numbers.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load(path, settings)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value.problems


def test_defaults_come_from_the_environment() -> None:
    profile = Profile.from_settings(SETTINGS)
    assert (profile.reconnect_seconds, profile.session_max_seconds) == (5.0, 3300.0)
    assert profile.fallback == Fallback(say=DEFAULT_FALLBACK_SAY, dial="")
    assert profile.busy == Busy(say="")
    assert not profile.session_max_pinned
    settings = Settings.from_environ(
        {"OPENAI_API_KEY": "k", "BRIDGE_RECONNECT_SECONDS": "3", "BRIDGE_MAX_CALLS": "250"}
    )
    assert Profile.from_settings(settings).reconnect_seconds == 3.0
    assert settings.max_calls == 250
    assert settings.event_loop_lag_limit_ms is None


def test_the_file_sets_them_and_other_profiles_inherit_from_default(tmp_path: Path) -> None:
    directory = load_text(tmp_path, FILE)
    default, support, quiet = (directory.profiles[n] for n in ("default", "support", "quiet"))
    assert (default.reconnect_seconds, default.session_max_seconds) == (8.0, 1700.0)
    assert default.fallback == Fallback("We are having trouble. Goodbye.")
    assert default.busy == Busy("All lines are busy.")
    # support: its own budget; its [fallback] replaces default's whole (the built-in `say`).
    assert (support.reconnect_seconds, support.session_max_seconds) == (2.5, 1700.0)
    assert support.fallback == Fallback(say=DEFAULT_FALLBACK_SAY, dial="+15550100100")
    assert support.busy == default.busy
    # quiet: "" means reject with a busy tone.
    assert (quiet.reconnect_seconds, quiet.session_max_seconds) == (8.0, 600.0)
    assert quiet.fallback == default.fallback
    assert quiet.busy == Busy("")


def test_the_environment_wins_over_the_file_for_the_session_cap(tmp_path: Path) -> None:
    settings = Settings.from_environ(
        {
            "OPENAI_API_KEY": "k",
            "BRIDGE_SESSION_MAX_SECONDS": "1500",
            "BRIDGE_RECONNECT_SECONDS": "4",
        }
    )
    directory = load_text(tmp_path, FILE, settings)
    for profile in directory.profiles.values():
        assert profile.session_max_seconds == 1500.0
        assert profile.session_max_pinned
    # reconnect_seconds is only a default: the file's values stand.
    assert directory.profiles["default"].reconnect_seconds == 8.0
    assert directory.profiles["support"].reconnect_seconds == 2.5
    # A file's mistake is still a mistake when the environment overrides it.
    with pytest.raises(ConfigError):
        load_text(tmp_path, "[profiles.default]\nsession_max_seconds = 5\n", settings)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "[profiles.support]\nreconnect_seconds = 0.1",
            'profile "support": reconnect_seconds: must be between 0.5 and 120, got 0.1',
        ),
        (
            '[profiles.support]\nreconnect_seconds = "5"',
            'profile "support": reconnect_seconds: must be a number, got "5"',
        ),
        (
            "[profiles.support]\nsession_max_seconds = 90000",
            'profile "support": session_max_seconds: must be between 60 and 86400, got 90000',
        ),
        (
            '[profiles.support.fallback]\ndial = "front desk"',
            'profile "support": fallback.dial: "front desk" is not an E.164 number',
        ),
        (
            '[profiles.support.fallback]\ndial = ""',
            'profile "support": fallback.dial: must not be empty',
        ),
        (
            "[profiles.support.fallback]\nsay = 3",
            'profile "support": fallback.say: must be a string, got 3',
        ),
        (
            '[profiles.support.fallback]\nsya = "hello"',
            'profile "support": fallback.sya: unknown field (did you mean "say"?)',
        ),
        (
            '[profiles.support]\nfallback = "hang up"',
            'profile "support": fallback: must be a table, got "hang up"',
        ),
        (
            "[profiles.support.busy]\nsay = false",
            'profile "support": busy.say: must be a string, got false',
        ),
        (
            '[profiles.support.busy]\ndial = "+15550100100"',
            'profile "support": busy.dial: unknown field',
        ),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, body: str, expected: str) -> None:
    problems = problems_of(tmp_path, body)
    path = tmp_path / "numbers.toml"
    assert any(problem.startswith(f"{path}: {expected}") for problem in problems), problems


def test_fallback_says_then_hangs_up_or_dials() -> None:
    hang_up = Fallback(say="Sorry, goodbye.")
    assert hang_up.next_step() == NextStep(action="hangup", say="Sorry, goodbye.")
    twiml = hang_up.next_step().twiml()
    assert twiml.endswith("<Response><Say>Sorry, goodbye.</Say><Hangup /></Response>")
    dial = Fallback(say="Connecting you.", dial="+15550100100")
    assert dial.next_step() == NextStep(action="dial", number="+15550100100", say="Connecting you.")
    twiml = dial.next_step().twiml()
    assert twiml.endswith(
        "<Response><Say>Connecting you.</Say>"
        '<Dial timeout="30"><Number>+15550100100</Number></Dial><Hangup /></Response>'
    )
    silent = Fallback(say="", dial="+15550100100").next_step().twiml()
    assert "<Say" not in silent
    assert "<Number>+15550100100</Number>" in silent
    assert NextStep.from_json(dial.next_step().to_json()) == dial.next_step()


def test_busy_says_then_hangs_up_or_rejects_busy() -> None:
    twiml = Busy("All lines are busy.").twiml()
    assert twiml.endswith("<Response><Say>All lines are busy.</Say><Hangup /></Response>")
    assert Busy().twiml().endswith('<Response><Reject reason="busy" /></Response>')
    # A call we placed cannot be rejected: it is hung up.
    assert Busy().twiml(outbound=True).endswith("<Response><Hangup /></Response>")
    for twiml in (Busy("x").twiml(), Busy().twiml()):
        assert "<Connect" not in twiml


def test_the_shipped_example_sets_the_survival_fields() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "numbers.example.toml"
    directory = load(example, SETTINGS)
    support = directory.profiles["support"]
    assert support.fallback.dial == "+15550100100"
    assert directory.default.busy.say
    assert directory.default.session_max_seconds == 3300.0
