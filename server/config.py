"""The relay's configuration: one frozen object, read from RELAY_* variables.

Every variable is read here and nowhere else. A bad value raises
:class:`ConfigError` naming the variable, so start-up stops with one line.
The README's config table lists the same variables with the same defaults.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from server.errors import ConfigError

T = TypeVar("T")

SECRET_PREFIX = "whsec_"
DEFAULT_SECRET_NAME = "default"
REDIS_SCHEMES = ("redis", "rediss", "unix")
MAX_WORKERS = 64


class DuplicatePolicy(enum.Enum):
    """What happens when a key that is already connected connects again."""

    REJECT = "reject"
    """The newcomer is refused with 4409; the first connection stays."""
    REPLACE = "replace"
    """The old connection is closed with 4409; the newcomer stays."""


class LogFormat(enum.Enum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """One signing secret. The key bytes never appear in a repr."""

    name: str
    key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"WebhookSecret(name={self.name!r}, key=<hidden>)"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay can be told. Build it with :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8080
    keys_file: Path = Path("keys.txt")
    webhook_secrets: tuple[WebhookSecret, ...] = ()
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    max_client_message: int = 4096
    client_buffer: int = 1024 * 1024
    backlog: int = 4096
    log_level: str = "info"
    log_format: LogFormat = LogFormat.AUTO
    redis_url: str = field(default="", repr=False)
    """Empty: keys and restocks live in this process. May hold a password,
    so it is left out of the repr; log :attr:`redis_location` instead."""
    redis_prefix: str = "stellar-relay"
    lease_seconds: float = 30.0
    workers: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every ``RELAY_*`` variable; unset ones keep their default."""
        reader = _Reader(environ)
        defaults = cls()
        secrets_text = reader.raw("RELAY_WEBHOOK_SECRETS")
        if not secrets_text:
            raise ConfigError(
                "RELAY_WEBHOOK_SECRETS",
                "required: a comma-separated list of name=whsec_... entries",
            )

        return cls(
            host=reader.text("RELAY_HOST", defaults.host),
            port=reader.integer("RELAY_PORT", defaults.port, low=0, high=65535),
            keys_file=Path(reader.text("RELAY_KEYS_FILE", str(defaults.keys_file))),
            webhook_secrets=_parse_secrets("RELAY_WEBHOOK_SECRETS", secrets_text),
            duplicate_policy=reader.choice(
                "RELAY_DUPLICATE_POLICY", DuplicatePolicy, defaults.duplicate_policy
            ),
            ping_interval=reader.number(
                "RELAY_PING_INTERVAL", defaults.ping_interval, low=0.1
            ),
            ping_timeout=reader.number(
                "RELAY_PING_TIMEOUT", defaults.ping_timeout, low=0.1
            ),
            max_client_message=reader.integer(
                "RELAY_MAX_CLIENT_MESSAGE", defaults.max_client_message, low=125
            ),
            client_buffer=reader.integer(
                "RELAY_CLIENT_BUFFER", defaults.client_buffer, low=1024
            ),
            backlog=reader.integer("RELAY_BACKLOG", defaults.backlog, low=1),
            log_level=reader.choice_text(
                "RELAY_LOG_LEVEL",
                ("debug", "info", "warning", "error"),
                defaults.log_level,
            ),
            log_format=reader.choice(
                "RELAY_LOG_FORMAT", LogFormat, defaults.log_format
            ),
            **_read_shared_state(reader, defaults),
        )

    @property
    def dead_client_window(self) -> float:
        """Longest time a silent, half-open client can keep holding its key."""
        return self.ping_interval + self.ping_timeout

    @property
    def redis_location(self) -> str:
        """Where Redis is, safe to log: no user name, no password."""
        return redact_redis_url(self.redis_url)


def redact_redis_url(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL, without its credentials."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""

    return f"{parts.scheme}://{host}{port}{parts.path}"


def _read_shared_state(reader: _Reader, defaults: Settings) -> dict[str, Any]:
    """The Redis settings, and the rule that several workers need Redis."""
    redis_url = reader.raw("RELAY_REDIS_URL")
    if redis_url and urlsplit(redis_url).scheme not in REDIS_SCHEMES:
        raise ConfigError(
            "RELAY_REDIS_URL",
            f"expected a redis://, rediss:// or unix:// URL, got "
            f"{redact_redis_url(redis_url)!r}",
        )
    workers = reader.integer("RELAY_WORKERS", defaults.workers, low=1, high=MAX_WORKERS)
    if workers > 1 and not redis_url:
        raise ConfigError(
            "RELAY_WORKERS",
            f"{workers} workers must share keys and restocks: set RELAY_REDIS_URL",
        )
    prefix = reader.text("RELAY_REDIS_PREFIX", defaults.redis_prefix)
    if not all(char.isalnum() or char in "-_.:" for char in prefix):
        raise ConfigError("RELAY_REDIS_PREFIX", "use letters, digits and - _ . : only")

    return {
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "lease_seconds": reader.number(
            "RELAY_LEASE_SECONDS", defaults.lease_seconds, low=1.0
        ),
        "workers": workers,
    }


def parse_secret(variable: str, text: str) -> bytes:
    """The key bytes of one ``whsec_<base64>`` secret."""
    encoded = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            variable, "a secret is not valid base64 after whsec_"
        ) from None
    if len(key) < 16:
        raise ConfigError(variable, "a secret is shorter than 16 bytes")

    return key


def _parse_secrets(variable: str, text: str) -> tuple[WebhookSecret, ...]:
    secrets = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or name.startswith(SECRET_PREFIX):
            # A bare secret; base64 may itself end in '=', so the test is the
            # whsec_ prefix, not the presence of '='.
            name, value = DEFAULT_SECRET_NAME, entry
        name = name.strip()
        if not name:
            raise ConfigError(variable, "an entry has an empty name before '='")
        secrets.append(WebhookSecret(name, parse_secret(variable, value.strip())))
    if not secrets:
        raise ConfigError(variable, "no secret given")

    return tuple(secrets)


class _Reader:
    """Typed access to the environment, each failure naming its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str:
        return self._environ.get(name, "").strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def _convert(
        self, name: str, default: T, convert: Callable[[str], T], what: str
    ) -> T:
        value = self.raw(name)
        if not value:
            return default
        try:
            return convert(value)
        except ValueError:
            raise ConfigError(name, f"expected {what}, got {value!r}") from None

    def integer(
        self, name: str, default: int, *, low: int, high: int | None = None
    ) -> int:
        number = self._convert(name, default, int, "a whole number")
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ConfigError(name, f"must be {bound}, got {number}")

        return number

    def number(self, name: str, default: float, *, low: float) -> float:
        number = self._convert(name, default, float, "a number of seconds")
        if not number >= low:
            raise ConfigError(name, f"must be at least {low}, got {number}")

        return number

    def choice(self, name: str, kind: type[enum.Enum], default: T) -> T:
        choices = ", ".join(str(member.value) for member in kind)
        value = self.raw(name).lower()
        if not value:
            return default
        try:
            return kind(value)  # type: ignore[return-value]
        except ValueError:
            raise ConfigError(
                name, f"expected one of {choices}, got {value!r}"
            ) from None

    def choice_text(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(name).lower() or default
        if value not in choices:
            raise ConfigError(
                name, f"expected one of {', '.join(choices)}, got {value!r}"
            )

        return value
