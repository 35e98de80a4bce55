"""Keyed pseudonyms: HMAC-SHA256 of a value, ``hmac-sha256:<hex>``, the same wherever it is computed.

The ``hash`` field strategy (warehouse and Postgres targets, :mod:`erasure.targets.fields`) replaces a
personal value by its keyed hash, so joins on the pseudonym still work across tables while the raw
value cannot be recovered without the key (and not guessed from a dictionary of e-mail addresses,
as a plain SHA-256 could be). The engines compute it without user code:

* Python: :func:`keyed_hash`;
* Spark SQL and PostgreSQL: HMAC written out with the engines' own SHA-256 (RFC 2104:
  ``H((K ^ opad) || H((K ^ ipad) || m))``); :func:`hmac_pads` gives the two padded keys, passed as
  binary literals or parameters. Tests check all three give the same bytes.

The key (at least 32 bytes, hex in a secret file, ``ERASURE_PSEUDONYM_KEY_FILE``; created by
``python -m erasure.cli keys init``) is separate from the receipts' identifier key: a pseudonym in
the warehouse must not be linkable to a receipt. Rotating it changes every future pseudonym (joins
between data pseudonymised before and after break), so rotate only with a re-keying plan.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

PREFIX = "hmac-sha256:"
"""Every pseudonym starts with it: a value already pseudonymised is recognised and never hashed twice."""
BLOCK = 64  # SHA-256 block size in bytes


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` (UTF-8) with ``key``: ``hmac-sha256:<64 hex digits>``."""
    return PREFIX + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """``(K ^ ipad, K ^ opad)``, each 64 bytes, for engines that have SHA-256 but no HMAC."""
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def is_pseudonym(value: object) -> bool:
    """Whether ``value`` is already a pseudonym (prefix + 64 lower-case hex digits)."""
    if not isinstance(value, str) or not value.startswith(PREFIX) or len(value) != len(PREFIX) + 64:
        return False
    return all(c in "0123456789abcdef" for c in value[len(PREFIX) :])


def load_key(path: Path) -> bytes:
    """The pseudonym key from its secret file (hex, at least 32 bytes); ``KeyFileError`` otherwise."""
    from erasure.evidence.keys import load_hex_key

    return load_hex_key(path, what="pseudonym key", setting="ERASURE_PSEUDONYM_KEY_FILE")
