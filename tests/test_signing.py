"""Standard Webhooks verification as a pure function of request and clock."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook

from server.config import WebhookSecret
from server.errors import NotJSONError, SignatureError
from server.signing import sign, verify

NOW = 1_800_000_000
KEY = b"k" * 32
SECRETS = (WebhookSecret("old", b"o" * 32), WebhookSecret("acme", KEY))
BODY = b'{"site":"amazon"}'


def headers(signature: str | None = None, *, webhook_id="msg_1", timestamp=NOW):
    signature = signature or sign(KEY, webhook_id, timestamp, BODY.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_valid_signature_names_the_matching_secret():
    verified = verify(BODY, headers(), SECRETS, now=NOW)

    assert (verified.source, verified.webhook_id, verified.text) == (
        "acme",
        "msg_1",
        BODY.decode(),
    )


def test_signature_matches_the_reference_implementation():
    """A signature we make passes the standardwebhooks package's own verify."""
    secret = "whsec_" + base64.b64encode(KEY).decode()
    now = int(time.time())

    parsed = Webhook(secret).verify(BODY, headers(timestamp=now))

    assert parsed == {"site": "amazon"}


def test_any_of_several_offered_signatures_may_match():
    good = headers()["webhook-signature"]
    offered = f"v1,{base64.b64encode(b'x' * 32).decode()} {good}"

    assert verify(BODY, headers(offered), SECRETS, now=NOW).source == "acme"


@pytest.mark.parametrize(
    ("now", "message"),
    [(NOW + 301, "more than 5 minutes old"), (NOW - 301, "in the future")],
)
def test_timestamp_outside_tolerance_is_refused(now, message):
    with pytest.raises(SignatureError, match=message):
        verify(BODY, headers(), SECRETS, now=now)


def test_timestamp_at_the_edge_is_accepted():
    assert verify(BODY, headers(), SECRETS, now=NOW + 300).source == "acme"


@pytest.mark.parametrize(
    "signature", ["v1,", "v2,abcd", "garbage", "v1,!!!notbase64", "v1"]
)
def test_malformed_signatures_are_refused_cleanly(signature):
    with pytest.raises(SignatureError):
        verify(BODY, headers(signature), SECRETS, now=NOW)


def test_missing_headers_are_named():
    with pytest.raises(SignatureError, match="webhook-id, webhook-timestamp"):
        verify(BODY, {"webhook-signature": "v1,x"}, SECRETS, now=NOW)


def test_non_numeric_timestamp_is_refused():
    bad = {**headers(), "webhook-timestamp": "yesterday"}

    with pytest.raises(SignatureError, match="Unix seconds"):
        verify(BODY, bad, SECRETS, now=NOW)


def test_body_that_is_not_utf8_is_not_json():
    with pytest.raises(NotJSONError):
        verify(b"\xff\xfe", headers(), SECRETS, now=NOW)


def test_signature_for_another_id_does_not_match():
    moved = {**headers(), "webhook-id": "msg_2"}

    with pytest.raises(SignatureError, match="no matching signature"):
        verify(BODY, moved, SECRETS, now=NOW)
