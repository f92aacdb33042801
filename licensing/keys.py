"""What a license key may look like, and how it is shown in logs."""

import hashlib
import re

MAX_KEY_LENGTH = 128
_KEY_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_KEY_LENGTH}}}")


def is_well_formed_key(key: str) -> bool:
    """Letters, digits, ``-`` and ``_``; 1 to 128 characters.

    Checked before any provider is asked, so that a key never reaches a
    provider URL (``../x``) or a log line in a shape we did not expect.
    """
    return _KEY_SHAPE.fullmatch(key) is not None


def redact_key(key: str) -> str:
    """A stable, non-reversible label for a key: first 4 characters + hash.

    ``ABCD-1234-...`` becomes ``ABCD~5e1f0c2a``. Two log lines about the same
    key carry the same label, and the key itself never appears.
    """
    digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8]
    prefix = key[:4] if is_well_formed_key(key) else "?"
    return f"{prefix}~{digest}"
