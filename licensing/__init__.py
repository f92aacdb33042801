"""License checks: is this Stellar key allowed to hold a connection?

Every provider answers one question, ``await provider.lookup(key)``, with a
small immutable :class:`LicenseResult`. The relay never sees how a provider
gets its answer (a keys file, an HTTP API); it only maps the result's status
to "let in" or a close code.

Modules: ``static`` (the keys file), ``whop`` and ``hyper`` (the remote
providers), ``http`` (their one HTTP adapter and error policy), ``cache``
(``CachedProvider``: TTLs, single flight, grace, 429 cooldown) and
``testing`` (local fakes of Whop and Hyper for tests).
"""

from licensing.base import LicenseProvider, LicenseResult, LicenseStatus
from licensing.keys import MAX_KEY_LENGTH, is_well_formed_key, redact_key
from licensing.static import KeysFileProvider

__all__ = [
    "MAX_KEY_LENGTH",
    "KeysFileProvider",
    "LicenseProvider",
    "LicenseResult",
    "LicenseStatus",
    "is_well_formed_key",
    "redact_key",
]
