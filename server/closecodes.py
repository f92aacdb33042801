"""Every websocket close code the relay sends, in one place.

The README's table is written from this enum; keep them together.
"""

import enum


class CloseCode(enum.IntEnum):
    """Close codes with the short reason sent alongside each.

    Under the ``replace`` duplicate policy the connection pushed out by a
    newer one with the same key is closed with ``KEY_IN_USE`` too.
    """

    reason: str

    def __new__(cls, code: int, reason: str) -> "CloseCode":
        member = int.__new__(cls, code)
        member._value_ = code
        member.reason = reason
        return member

    GOING_AWAY = 1001, "server going away"
    MESSAGE_TOO_BIG = 1009, "message too big"
    PING_TIMEOUT = 1011, "keepalive ping timeout"
    SLOW_CONSUMER = 4008, "slow consumer"
    BAD_KEY = 4401, "unknown or malformed key"
    LICENSE_INACTIVE = 4403, "license not active"
    KEY_IN_USE = 4409, "key already connected"
    CHECK_UNAVAILABLE = 4503, "license check unavailable, try again"
