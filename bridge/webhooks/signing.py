"""Signing post-call webhook bodies: `X-Bridge-Signature: sha256=<hex HMAC-SHA256 of the body>`.

The secret (BRIDGE_CALL_WEBHOOK_SECRET) lives in settings; it never reaches a log line or an
error message. Without one, production refuses to start when a webhook URL is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from bridge.errors import ConfigError
from bridge.settings import Settings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Bridge-Signature"
DELIVERY_HEADER = "X-Bridge-Delivery"
PREFIX = "sha256="

_warned = False  # the development warning about unsigned webhooks is logged once per process


def sign(secret: bytes, body: bytes) -> str:
    """The `X-Bridge-Signature` value of `body`."""
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Whether `header` is the signature of exactly these bytes (constant-time compare)."""
    return hmac.compare_digest(sign(secret, body), header.strip())


def check_secret(settings: Settings, profile_urls: Iterable[str]) -> None:
    """At start-up: a webhook URL (the environment's or any profile's) needs the secret.

    Production: ConfigError. Development: one warning, and webhooks go out unsigned.
    """
    if settings.call_webhook_secret is not None:
        return
    if not settings.call_webhook_url and not any(profile_urls):
        return
    if settings.environment == "production":
        raise ConfigError(
            [
                "BRIDGE_CALL_WEBHOOK_SECRET: required when BRIDGE_ENV=production and a call "
                "webhook URL is set (receivers could not tell our calls from forgeries)"
            ]
        )
    warn_unsigned()


def warn_unsigned() -> None:
    """Log, once per process, that webhooks are sent without a signature."""
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "BRIDGE_CALL_WEBHOOK_SECRET is not set: post-call webhooks are sent WITHOUT "
            "X-Bridge-Signature. Development only; BRIDGE_ENV=production refuses to start "
            "like this."
        )
