"""Authenticated acknowledgements: an HMAC-SHA256 signature per partner target over the ack's bytes.

A partner signs the **exact bytes of the Kafka message value** it produces to the ack topic with its
target's key and sends the signature in the message header ``erasure-signature``::

    erasure-signature: v1=<hex of HMAC-SHA256(key, value bytes)>

The pipeline (:func:`erasure.outbox.consume_acks`) accepts an ack only when the header verifies with
a key of the target the ack names (``Ack.target``). An unsigned ack, one signed with a wrong key or
with another target's key is recorded in ``erasure.ack_log`` as ``unauthenticated`` and ignored: it
never changes a task. Several headers may be present (the last one with ``v1=`` counts).

Keys: one per target (at least 16 bytes), given to the core as a mapping ``target -> key`` or
``target -> [current, previous]`` (:data:`AckKeys`). During a key rotation both keys are accepted, so
partners can switch at their own pace; drop the previous key once every partner signs with the new one.
Where keys come from is the edge's business: Airflow connections ``erasure_ack_<target>`` (password =
current key, extra ``{"previous": "..."}``; ``erasure.airflow.kafka_tasks.ack_keys``) or the
environment for the CLI and tests (``ERASURE_ACK_KEY_<TARGET>`` and ``..._PREVIOUS``;
:func:`erasure.settings.ack_keys_from_env`). No Airflow and no environment here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SIGNATURE_HEADER = "erasure-signature"
SCHEME = "v1"
MIN_KEY_BYTES = 16

AckKeys = Mapping[str, "str | bytes | Sequence[str | bytes]"]
"""``target -> key`` or ``target -> [current key, previous key, ...]``."""


def _key_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8")


def signature(key: str | bytes, value: bytes) -> str:
    """The header value for ``value`` signed with ``key``: ``v1=<hex>``."""
    return f"{SCHEME}=" + hmac.new(_key_bytes(key), value, hashlib.sha256).hexdigest()


def sign_headers(key: str | bytes, value: bytes) -> list[tuple[str, bytes]]:
    """Kafka message headers carrying the signature of ``value`` (for ``Producer.produce(headers=...)``)."""
    return [(SIGNATURE_HEADER, signature(key, value).encode("ascii"))]


def normalise_keys(keys: AckKeys | None) -> dict[str, list[bytes]]:
    """``target -> [key bytes]``; refuses keys shorter than :data:`MIN_KEY_BYTES` (naming the target)."""
    out: dict[str, list[bytes]] = {}
    for target, k in (keys or {}).items():
        items: Iterable[str | bytes] = [k] if isinstance(k, str | bytes) else k
        ks = [_key_bytes(x) for x in items if x]
        for kb in ks:
            if len(kb) < MIN_KEY_BYTES:
                raise ValueError(f"ack key of target '{target}' is shorter than {MIN_KEY_BYTES} bytes")
        if ks:
            out[target] = ks
    return out


def header_signature(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    """The last ``erasure-signature`` header's value, or ``None``."""
    found = None
    for name, value in headers or []:
        if name.lower() == SIGNATURE_HEADER and value is not None:
            found = value.decode("ascii", errors="replace").strip()
    return found


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    reason: str
    key_index: int | None = None
    """Which of the target's keys verified it (0 = current, 1 = previous)."""


def authenticate(
    keys: Mapping[str, list[bytes]],
    target: str | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
) -> AuthResult:
    """Whether ``value`` carries a valid signature of ``target`` (constant-time comparison)."""
    sig = header_signature(headers)
    if sig is None:
        return AuthResult(False, f"unsigned: no '{SIGNATURE_HEADER}' header")
    if not sig.startswith(f"{SCHEME}="):
        return AuthResult(False, f"unknown signature scheme (expected '{SCHEME}=<hex>')")
    if target is None:
        return AuthResult(False, "the ack names no target")
    target_keys = keys.get(target)
    if not target_keys:
        return AuthResult(False, f"no ack key configured for target '{target}'")
    for i, k in enumerate(target_keys):
        if hmac.compare_digest(signature(k, value or b""), sig):
            return AuthResult(True, "signed" if i == 0 else "signed with the previous key", i)
    return AuthResult(False, f"bad signature: not signed with a key of target '{target}'")
