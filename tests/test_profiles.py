"""Profiles: number normalisation, caller rules, and validation messages naming file, profile and
field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.numbers import load
from bridge.profiles import CallerRules, Profile, TurnDetection, normalise_number
from bridge.settings import AudioMode, Settings

SETTINGS = Settings(openai_api_key="sk-test", voice="alloy", greeting="Env greeting")


@pytest.mark.parametrize(
    "text",
    ["+15550100000", "+1 (555) 010-0000", "+1.555.010.0000", " +1 555 010 0000 ", "0015550100000"],
)
def test_formats_of_one_number_normalise_alike(text: str) -> None:
    assert normalise_number(text) == "+15550100000"


@pytest.mark.parametrize("text", ["15550100000", "+1555", "+0123456789", "+1 555 CALL NOW", ""])
def test_non_e164_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an E\.164 number"):
        normalise_number(text)


def test_deny_list_blocks_numbers_prefixes_and_withheld_ids() -> None:
    rules = CallerRules(deny=("+15550100009", "+1900*", "anonymous"))
    assert rules.admits("+15550100001")
    assert rules.admits("+44 20 7946 0000")
    assert not rules.admits("+1 (555) 010-0009")
    assert not rules.admits("+19005550000")
    for withheld in ("anonymous", "", "+266696687", "Restricted"):
        assert not rules.admits(withheld), withheld


def test_allow_list_admits_only_its_entries() -> None:
    rules = CallerRules(allow=("+15550100001", "+44*"))
    assert rules.admits("+15550100001")
    assert rules.admits("+442079460000")
    assert not rules.admits("+15550100002")
    assert not rules.admits("anonymous")  # a withheld number matches no prefix
    assert CallerRules().admits("anonymous")


def write(tmp_path: Path, text: str, name: str = "numbers.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, SETTINGS)
    return caught.value.problems


def test_a_complete_profile_loads_and_others_inherit_from_default(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "support.md").write_text("  Help with products.\n", encoding="utf-8")
    path = write(
        tmp_path,
        """
        [profiles.default]
        voice = "marin"
        model = "gpt-realtime-mini"
        max_call_seconds = 600

        [profiles.support]
        numbers = ["+1 (555) 010-0000"]
        instructions_file = "prompts/support.md"
        voice = "cedar"
        greeting = ""
        audio_mode = "pcmu"
        keep_transcripts = false
        turn_detection = { type = "semantic_vad", eagerness = "low" }
        transcription = { model = "gpt-4o-transcribe", language = "de" }
        callers = { allow = ["+49*"] }
        """,
    )
    directory = load(path, SETTINGS)
    support = directory.for_number("+15550100000")
    assert support == Profile(
        name="support",
        instructions="Help with products.",
        voice="cedar",
        model="gpt-realtime-mini",  # from default
        greeting="",
        turn_detection=TurnDetection(type="semantic_vad", eagerness="low"),
        transcription_model="gpt-4o-transcribe",
        audio_mode=AudioMode.PCMU,
        max_call_seconds=600.0,  # from default
        keep_transcripts=False,
        transcription_language="de",
        callers=CallerRules(allow=("+49*",)),
    )
    default = directory.default
    assert (default.voice, default.greeting) == ("marin", "Env greeting")  # the rest from env
    assert default.instructions == SETTINGS.instructions


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # out of range
            "[profiles.support.turn_detection]\nthreshold = 1.5",
            'profile "support": turn_detection.threshold: must be between 0 and 1, got 1.5',
        ),
        (  # wrong type
            '[profiles.support]\nmax_call_seconds = "ten minutes"',
            'profile "support": max_call_seconds: must be a number, got "ten minutes"',
        ),
        (  # not one of the choices
            '[profiles.support]\nvoice = "marine"',
            'profile "support": voice: must be one of "alloy", ',
        ),
        (  # typo in a field name
            '[profiles.support]\nvoise = "cedar"',
            'profile "support": voise: unknown field (did you mean "voice"?)',
        ),
        (  # a number that is not E.164
            '[profiles.support]\nnumbers = ["555-0100"]',
            'profile "support": numbers[0]: "555-0100" is not an E.164 number',
        ),
        (  # both lists
            '[profiles.support.callers]\nallow = ["+1*"]\ndeny = ["+1900*"]',
            'profile "support": callers: set allow or deny, not both',
        ),
        (  # a bad caller entry
            '[profiles.support.callers]\ndeny = ["premium"]',
            'profile "support": callers.deny[0]: "premium" is not an E.164 number',
        ),
        (  # a setting the chosen detector ignores
            '[profiles.support.turn_detection]\ntype = "semantic_vad"\nthreshold = 0.4',
            'profile "support": turn_detection.threshold: applies to server_vad only',
        ),
        (  # a missing instructions file
            '[profiles.support]\ninstructions_file = "nope.md"',
            'profile "support": instructions_file: cannot read ',
        ),
        (  # both kinds of instructions
            '[profiles.support]\ninstructions = "a"\ninstructions_file = "b.md"',
            'profile "support": instructions: set instructions or instructions_file, not both',
        ),
        (  # a language that is not a code
            '[profiles.support.transcription]\nlanguage = "English"',
            'profile "support": transcription.language: must be an ISO 639-1 code',
        ),
        (  # an unusable profile name
            '[profiles."Sales Team"]\nvoice = "sage"',
            'profile "Sales Team": name must be lowercase letters, digits, - or _',
        ),
        (  # a float where an integer is needed
            "[profiles.support.turn_detection]\nsilence_duration_ms = 500.5",
            'profile "support": turn_detection.silence_duration_ms: must be an integer, got 500.5',
        ),
    ],
)
def test_each_mistake_is_named_by_file_profile_and_field(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = write(tmp_path, body)
    problems = problems_of(path)
    assert any(problem.startswith(f"{path}: {expected}") for problem in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [profiles.a]
        numbers = ["+15550100000"]
        voice = "nobody"
        [profiles.b]
        numbers = ["+1 555 010 0000"]
        keep_transcripts = "yes"
        [profiles.b.turn_detection]
        eagerness = "high"
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 4, problems
    assert f'{path}: profile "b": numbers[0]: +15550100000 already belongs to profile "a"' in (
        problems
    )
    assert f'{path}: profile "b": keep_transcripts: must be true or false, got "yes"' in problems
    assert f'{path}: profile "b": turn_detection.eagerness: applies to semantic_vad only' in (
        problems
    )


def test_file_level_mistakes_name_the_file(tmp_path: Path) -> None:
    broken = write(tmp_path, "[profiles.support\nvoice = 1", "broken.toml")
    (problem,) = problems_of(broken)
    assert problem.startswith(f"{broken}: invalid TOML: ")
    assert "line 1" in problem
    unknown = write(tmp_path, "[profile.support]\n", "unknown.toml")
    assert problems_of(unknown) == [f'{unknown}: profile: unknown field (did you mean "profiles"?)']
    assert problems_of(tmp_path / "missing.toml") == [
        f"{tmp_path / 'missing.toml'}: file not found"
    ]


def test_recording_redaction_and_webhook_fields_load_and_inherit(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [profiles.default]
        record = true
        recording_retention_days = 30
        redact = ["card"]
        call_webhook_url = "https://crm.example.com/hooks/calls"

        [profiles.staff]
        numbers = ["+15550100002"]
        record = false
        redact = []
        """,
    )
    profiles = load(path, SETTINGS).profiles
    default, staff = profiles["default"], profiles["staff"]
    assert (default.record, default.recording_retention_days) == (True, 30)
    assert default.redact == {"card"}
    assert default.call_webhook_url == "https://crm.example.com/hooks/calls"
    # Everything not set is inherited from default; what is set wins.
    assert not staff.record
    assert staff.redact == frozenset()
    assert staff.recording_retention_days == 30
    assert staff.call_webhook_url == "https://crm.example.com/hooks/calls"


def test_bad_recording_redaction_and_webhook_fields_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [profiles.default]
        record = "yes"
        recording_retention_days = -1
        redact = ["cards"]
        call_webhook_url = "ftp://example.com/x"
        """,
    )
    problems = "\n".join(problems_of(path))
    assert "record: must be true or false" in problems
    assert "recording_retention_days: must be between 0 and 36500" in problems
    assert 'redact: unknown "cards"' in problems
    assert "call_webhook_url: must be an http:// or https:// URL" in problems


def test_the_environment_sets_the_default_profile_recording_and_webhook() -> None:
    settings = Settings(
        openai_api_key="sk-test", record=True, call_webhook_url="https://hooks.example.com/c"
    )
    profile = Profile.from_settings(settings)
    assert profile.record
    assert profile.call_webhook_url == "https://hooks.example.com/c"
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Settings(openai_api_key="sk-test", recordings_url="https://bucket.example.com")
