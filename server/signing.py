"""Standard Webhooks signatures: checking them, and making them.

A signature is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``;
the ``webhook-signature`` header may hold several, space-separated, and one
match is enough. :func:`verify` is a pure function of the request and the
clock; the HMAC itself is computed by the ``standardwebhooks`` package.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks import Webhook

from server.config import WebhookSecret
from server.errors import NotJSONError, SignatureError

TOLERANCE_SECONDS = 300
MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """What a valid signature proves: who sent it (``source``) and its id."""

    webhook_id: str
    timestamp: int
    source: str
    text: str


def sign(secret: bytes, webhook_id: str, timestamp: int, text: str) -> str:
    """The ``v1,<base64>`` signature of one message."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)

    return Webhook(secret).sign(webhook_id, moment, text)


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[WebhookSecret],
    *,
    now: float,
) -> VerifiedWebhook:
    """Check a webhook's headers and signature; raise SignatureError if not.

    ``headers`` must be case-insensitive (Sanic's are). The body is decoded
    as UTF-8 first: a body that is not text cannot be a Stellar payload, and
    the HMAC is computed over that exact text, never a re-serialised one.
    """
    webhook_id = headers.get("webhook-id", "")
    timestamp_text = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    missing = [
        name
        for name, value in (
            ("webhook-id", webhook_id),
            ("webhook-timestamp", timestamp_text),
            ("webhook-signature", signatures),
        )
        if not value
    ]
    if missing:
        raise SignatureError(f"missing header: {', '.join(missing)}")
    if len(webhook_id) > MAX_ID_LENGTH:
        raise SignatureError(f"webhook-id is longer than {MAX_ID_LENGTH} characters")

    timestamp = _check_timestamp(timestamp_text, now)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NotJSONError("body is not UTF-8 text") from None

    offered = _offered_signatures(signatures)
    for secret in secrets:
        expected = _decode(sign(secret.key, webhook_id, timestamp, text)[3:])
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return VerifiedWebhook(webhook_id, timestamp, secret.name, text)

    raise SignatureError("no matching signature")


def _check_timestamp(text: str, now: float) -> int:
    try:
        timestamp = int(text)
    except ValueError:
        raise SignatureError("webhook-timestamp is not whole Unix seconds") from None
    if timestamp < now - TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes old")
    if timestamp > now + TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes in the future")

    return timestamp


def _offered_signatures(header: str) -> list[bytes]:
    offered = []
    for item in header.split():
        version, _, encoded = item.partition(",")
        if version == "v1" and encoded:
            decoded = _decode(encoded)
            if decoded:
                offered.append(decoded)
    if not offered:
        raise SignatureError("webhook-signature holds no v1 signature")

    return offered


def _decode(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return b""
