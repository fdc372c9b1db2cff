"""Settings from the environment, and `bridge serve` refusing bad ones with exit code 2."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.settings import AudioMode, Settings
from tests.conftest import run_bridge


def test_defaults_need_only_the_key() -> None:
    settings = Settings.from_environ({"OPENAI_API_KEY": "sk-test"})
    assert settings.realtime_url == "wss://api.openai.com/v1/realtime"
    assert settings.model == "gpt-realtime"
    assert settings.audio_mode is AudioMode.TRANSCODE
    assert settings.speech_url == "https://api.openai.com/v1/audio/speech"
    assert not settings.is_azure
    assert "sk-test" not in repr(settings)


def test_azure_host_and_speech_url() -> None:
    settings = Settings.from_environ(
        {
            "OPENAI_API_KEY": "k",
            "BRIDGE_REALTIME_URL": "wss://res.openai.azure.com/openai/v1/realtime",
        }
    )
    assert settings.is_azure
    assert settings.speech_url == "https://res.openai.azure.com/openai/v1/audio/speech"


def test_every_problem_is_named_by_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(
            {
                "BRIDGE_REALTIME_URL": "https://not-a-websocket",
                "BRIDGE_VAD_THRESHOLD": "1.5",
                "BRIDGE_AUDIO_MODE": "opus",
            }
        )
    text = "\n".join(caught.value.problems)
    assert "OPENAI_API_KEY: is required" in text
    assert "BRIDGE_REALTIME_URL" in text
    assert "BRIDGE_VAD_THRESHOLD" in text
    assert "BRIDGE_AUDIO_MODE" in text


def test_serve_exits_2_with_a_clear_message() -> None:
    result = run_bridge("serve", "--port", "0", BRIDGE_PUBLIC_URL="ftp://nope")
    assert result.returncode == 2
    assert "OPENAI_API_KEY: is required" in result.stderr
    assert "BRIDGE_PUBLIC_URL" in result.stderr


def test_the_metrics_port_binds_loopback_by_default() -> None:
    settings = Settings.from_environ({"OPENAI_API_KEY": "k", "BRIDGE_METRICS_PORT": "9090"})
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9090)
    everywhere = Settings.from_environ({"OPENAI_API_KEY": "k", "BRIDGE_METRICS_HOST": "0.0.0.0"})
    assert everywhere.metrics_host == "0.0.0.0"
