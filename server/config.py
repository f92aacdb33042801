"""The relay's configuration: one frozen object, read from RELAY_* variables.

Every variable is read here and nowhere else. A bad value raises
:class:`ConfigError` naming the variable, so start-up stops with one line.
The README's config table lists the same variables with the same defaults.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from server.errors import ConfigError

T = TypeVar("T")

SECRET_PREFIX = "whsec_"
DEFAULT_SECRET_NAME = "default"
HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
REDIS_SCHEMES = ("redis", "rediss", "unix")
MAX_WORKERS = 64
MAX_SEND_THREADS = 16
AUTO_SEND_THREADS_AT_MOST = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def auto_send_threads(cpus: int, workers: int) -> int:
    """``RELAY_SEND_THREADS=auto``: each worker's share of the CPUs, 1 to 4.

    A broadcast reaches every worker at once, so workers that each wrote
    with every CPU would only take turns on them.
    """
    return max(1, min(AUTO_SEND_THREADS_AT_MOST, cpus // workers))


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


class ProviderKind(enum.Enum):
    """Who answers "is this key licensed?" (``RELAY_LICENSE_PROVIDER``)."""

    STATIC = "static"
    """The keys file (``RELAY_KEYS_FILE``)."""
    WHOP = "whop"
    HYPER = "hyper"


class WhopApi(enum.Enum):
    """Which Whop endpoint answers (``RELAY_WHOP_API``)."""

    V1 = "v1"
    """``GET /memberships/{key}``; validity from ``status``."""
    V2 = "v2"
    """The older ``POST /v2/memberships/{key}/validate_license``; validity
    from the ``valid`` flag."""


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """One signing secret. The key bytes never appear in a repr."""

    name: str
    key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"WebhookSecret(name={self.name!r}, key=<hidden>)"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A provider API key; ``value`` is the only way to the text."""

    value: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return "<hidden>" if self.value else "<unset>"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


WHOP_BASE_URLS = {
    WhopApi.V1: "https://api.whop.com/api/v1",
    WhopApi.V2: "https://api.whop.com/api",
}
HYPER_BASE_URL = "https://api.hyper.co/v6"


@dataclass(frozen=True, slots=True)
class LicensingSettings:
    """Which provider checks keys, and how its answers are cached.

    Times are seconds. ``whop_base_url`` left empty means the public base of
    the chosen ``whop_api``.
    """

    provider: ProviderKind = ProviderKind.STATIC
    timeout: float = 3.0
    ttl: float = 600.0
    negative_ttl: float = 60.0
    grace: float = 86400.0
    recheck: float = 900.0
    whop_api: WhopApi = WhopApi.V1
    whop_base_url: str = ""
    whop_api_key: ApiKey = ApiKey()
    whop_active_statuses: frozenset[str] = frozenset(
        {"trialing", "active", "past_due", "canceling"}
    )
    hyper_base_url: str = HYPER_BASE_URL
    hyper_api_key: ApiKey = ApiKey()
    hyper_active_statuses: frozenset[str] = frozenset(
        {"active", "trialing", "past_due"}
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LicensingSettings:
        """The ``RELAY_LICENSE_*``, ``RELAY_WHOP_*`` and ``RELAY_HYPER_*``
        variables; an API key is required for the provider that needs it."""
        reader = _Reader(environ)
        defaults = cls()
        provider = reader.choice(
            "RELAY_LICENSE_PROVIDER", ProviderKind, defaults.provider
        )
        whop_api = reader.choice("RELAY_WHOP_API", WhopApi, defaults.whop_api)
        settings = cls(
            provider=provider,
            timeout=reader.number("RELAY_LICENSE_TIMEOUT", defaults.timeout, low=0.1),
            ttl=reader.number("RELAY_LICENSE_TTL", defaults.ttl, low=0),
            negative_ttl=reader.number(
                "RELAY_LICENSE_NEGATIVE_TTL", defaults.negative_ttl, low=0
            ),
            grace=reader.number("RELAY_LICENSE_GRACE", defaults.grace, low=0),
            recheck=reader.number("RELAY_LICENSE_RECHECK", defaults.recheck, low=0.1),
            whop_api=whop_api,
            whop_base_url=reader.url("RELAY_WHOP_BASE_URL", WHOP_BASE_URLS[whop_api]),
            whop_api_key=ApiKey(reader.raw("RELAY_WHOP_API_KEY")),
            whop_active_statuses=reader.words(
                "RELAY_WHOP_ACTIVE_STATUSES", defaults.whop_active_statuses
            ),
            hyper_base_url=reader.url("RELAY_HYPER_BASE_URL", defaults.hyper_base_url),
            hyper_api_key=ApiKey(reader.raw("RELAY_HYPER_API_KEY")),
            hyper_active_statuses=reader.words(
                "RELAY_HYPER_ACTIVE_STATUSES", defaults.hyper_active_statuses
            ),
        )
        settings._require_api_key()

        return settings

    def _require_api_key(self) -> None:
        needed = {
            ProviderKind.WHOP: ("RELAY_WHOP_API_KEY", self.whop_api_key),
            ProviderKind.HYPER: ("RELAY_HYPER_API_KEY", self.hyper_api_key),
        }.get(self.provider)
        if needed is not None and not needed[1]:
            raise ConfigError(
                needed[0],
                f"required when RELAY_LICENSE_PROVIDER={self.provider.value}",
            )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay can be told. Build it with :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8080
    keys_file: Path = Path("keys.txt")
    webhook_secrets: tuple[WebhookSecret, ...] = ()
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT
    ping_interval: float = 10.0
    max_client_message: int = 4096
    client_buffer: int = 1024 * 1024
    backlog: int = 4096
    log_level: str = "info"
    log_format: LogFormat = LogFormat.AUTO
    proxies_count: int = 0
    """Reverse proxies in front of the relay; 0 trusts no forwarding header."""
    forwarded_for_header: str = "X-Forwarded-For"
    licensing: LicensingSettings = LicensingSettings()
    redis_url: str = field(default="", repr=False)
    """Empty: keys and restocks live in this process. May hold a password,
    so it is left out of the repr; log :attr:`redis_location` instead."""
    redis_prefix: str = "stellar-relay"
    lease_seconds: float = 30.0
    workers: int = 1
    send_threads: int = field(
        default_factory=lambda: auto_send_threads(available_cpus(), workers=1)
    )
    """Threads that write one restock to this worker's clients at once."""

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, need_webhook_secrets: bool = True
    ) -> Settings:
        """Read every ``RELAY_*`` variable; unset ones keep their default.

        ``need_webhook_secrets=False`` is for commands that never take a
        webhook (``check-key``): a missing ``RELAY_WEBHOOK_SECRETS`` is fine.
        """
        reader = _Reader(environ)
        defaults = cls()
        secrets_text = reader.raw("RELAY_WEBHOOK_SECRETS")
        if not secrets_text and need_webhook_secrets:
            raise ConfigError(
                "RELAY_WEBHOOK_SECRETS",
                "required: a comma-separated list of name=whsec_... entries",
            )
        shared_state = _read_shared_state(reader, defaults)

        return cls(
            host=reader.text("RELAY_HOST", defaults.host),
            port=reader.integer("RELAY_PORT", defaults.port, low=0, high=65535),
            keys_file=Path(reader.text("RELAY_KEYS_FILE", str(defaults.keys_file))),
            webhook_secrets=(
                _parse_secrets("RELAY_WEBHOOK_SECRETS", secrets_text)
                if secrets_text
                else ()
            ),
            duplicate_policy=reader.choice(
                "RELAY_DUPLICATE_POLICY", DuplicatePolicy, defaults.duplicate_policy
            ),
            ping_interval=reader.number(
                "RELAY_PING_INTERVAL", defaults.ping_interval, low=0.1
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
            proxies_count=reader.integer(
                "RELAY_PROXIES_COUNT", defaults.proxies_count, low=0, high=10
            ),
            forwarded_for_header=reader.header_name(
                "RELAY_FORWARDED_FOR_HEADER", defaults.forwarded_for_header
            ),
            licensing=LicensingSettings.from_env(environ),
            send_threads=_read_send_threads(reader, shared_state["workers"]),
            **shared_state,
        )

    @property
    def dead_client_window(self) -> float:
        """Longest time a silent, half-open client is still counted as live.

        A client is pinged every interval and dropped at the next ping if it
        sent nothing (not even the pong) since the last one.
        """
        return 2 * self.ping_interval

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


def _read_send_threads(reader: _Reader, workers: int) -> int:
    if reader.raw("RELAY_SEND_THREADS").lower() in ("", "auto"):
        return auto_send_threads(available_cpus(), workers)

    return reader.integer("RELAY_SEND_THREADS", 1, low=1, high=MAX_SEND_THREADS)


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

    def header_name(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        if not HEADER_NAME.fullmatch(value):
            raise ConfigError(
                name,
                f"expected an HTTP header name (letters, digits, -), got {value!r}",
            )

        return value

    def url(self, name: str, default: str) -> str:
        """An absolute http(s) base URL, without its trailing ``/``."""
        value = self.raw(name) or default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(name, f"expected an http(s) URL, got {value!r}")

        return value.rstrip("/")

    def words(self, name: str, default: frozenset[str]) -> frozenset[str]:
        """A comma-separated set of lower-case words."""
        value = self.raw(name)
        if not value:
            return default
        words = frozenset(w.strip().lower() for w in value.split(",") if w.strip())
        if not words:
            raise ConfigError(name, "expected a comma-separated list, got none")

        return words

    def choice_text(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(name).lower() or default
        if value not in choices:
            raise ConfigError(
                name, f"expected one of {', '.join(choices)}, got {value!r}"
            )

        return value
