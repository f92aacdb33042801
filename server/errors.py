"""The relay's exceptions.

RelayError
├── ConfigError      a RELAY_* variable is missing or has a bad value
├── SharedStateUnavailable  Redis cannot be reached right now
└── WebhookError     a webhook request is refused (carries its HTTP status)
    ├── SignatureError    401: missing, malformed or non-matching signature
    ├── NotJSONError      415: the body is not JSON
    └── PayloadError      422: JSON, but not a valid Stellar payload

Messages are short, lowercase, and safe to send to the peer: they never hold
a secret, a key or a traceback.
"""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A configuration value is wrong; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class SharedStateUnavailable(RelayError):
    """Redis, where workers and nodes share keys and restocks, is out of
    reach; what needs it is refused until the link is back."""


class WebhookError(RelayError):
    """A refused webhook; ``status`` and ``body`` become the HTTP answer."""

    status = 400

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.details is not None:
            body["problems"] = self.details

        return body


class SignatureError(WebhookError):
    status = 401


class NotJSONError(WebhookError):
    status = 415


class PayloadError(WebhookError):
    status = 422
