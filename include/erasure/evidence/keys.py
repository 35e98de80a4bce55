"""Receipt keys: the Ed25519 signing key, the identifier HMAC key and the public JWKS.

Keys live in files named by settings (``ERASURE_RECEIPT_SIGNING_KEY_FILE``,
``ERASURE_IDENTIFIER_HMAC_KEY_FILE``, ``ERASURE_RECEIPT_JWKS_FILE``; by default under
``.local/secrets/``, created once by ``python -m erasure.cli keys init``, which ``scripts/stack.sh setup``
calls). Never in code, never in error messages: errors name the file, not its content.
The key id (``kid``) is the RFC 7638 thumbprint of the public key, so a receipt names its key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNING_KEY_FILE = "receipt-signing-key.pem"
HMAC_KEY_FILE = "identifier-hmac.key"
JWKS_FILE = "receipt-keys.jwks.json"
PSEUDONYM_KEY_FILE = "pseudonym-hmac.key"
IDENTITY_KEY_FILE = "identity-encryption.key"
"""The ``hash`` field strategy's key (erasure.pseudonym): created here too, kept apart from receipts'."""


class KeyFileError(RuntimeError):
    """A key file is missing or unreadable; the message names the file and how to create it."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Strict base64url (no padding): the text must be the canonical encoding of the bytes."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(_raw_public(public))}
    return b64url(
        hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    )


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(_raw_public(public)),
        "kid": key_id(public),
        "alg": "EdDSA",
        "use": "sig",
    }


def jwks(*publics: Ed25519PublicKey) -> dict[str, Any]:
    return {"keys": [public_jwk(p) for p in publics]}


def public_keys_from_jwks(doc: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    """kid -> public key for every Ed25519 key of a JWKS document."""
    out: dict[str, Ed25519PublicKey] = {}
    for k in doc.get("keys", []):
        if k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and "x" in k:
            pub = Ed25519PublicKey.from_public_bytes(b64url_decode(k["x"]))
            out[k.get("kid") or key_id(pub)] = pub
    return out


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init_keys(directory: Path) -> dict[str, Any]:
    """Create the signing key, the identifier HMAC key, the pseudonym key and the identity encryption
    key in ``directory`` if missing
    (never overwritten), and
    (re)write the public JWKS next to them. Returns the paths and the key id."""
    directory = Path(directory)
    sk_path, hk_path, jwks_path = (
        directory / SIGNING_KEY_FILE,
        directory / HMAC_KEY_FILE,
        directory / JWKS_FILE,
    )
    created = []
    if not sk_path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(sk_path, pem)
        created.append(str(sk_path))
    for path in (hk_path, directory / PSEUDONYM_KEY_FILE, directory / IDENTITY_KEY_FILE):
        if not path.exists():
            _write_private(path, secrets.token_hex(32).encode() + b"\n")
            created.append(str(path))
    public = load_signing_key(sk_path).public_key()
    jwks_path.write_text(json.dumps(jwks(public), indent=2) + "\n", encoding="utf-8")
    return {"created": created, "jwks": str(jwks_path), "kid": key_id(public)}


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyFileError(
            f"receipt signing key {path} is missing: run `python -m erasure.cli keys init` "
            "(or set ERASURE_RECEIPT_SIGNING_KEY_FILE)"
        ) from None
    except ValueError:
        raise KeyFileError(f"receipt signing key {path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"receipt signing key {path} is not an Ed25519 key")
    return key


def load_hex_key(path: Path, *, what: str, setting: str, min_bytes: int = 32) -> bytes:
    """A secret key kept as hex in a file (at least ``min_bytes``); errors name the file, ``what`` it
    is and the fix (``setting`` names its ``ERASURE_*`` variable), never its content."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(
            f"{what} {path} is missing: run `python -m erasure.cli keys init` (or set {setting})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{what} {path}: unreadable ({type(exc).__name__})") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{what} {path}: expected hex") from None
    if len(key) < min_bytes:
        raise KeyFileError(f"{what} {path}: at least {min_bytes} bytes are required")
    return key


def load_hmac_key(path: Path) -> bytes:
    return load_hex_key(path, what="identifier HMAC key", setting="ERASURE_IDENTIFIER_HMAC_KEY_FILE")


def load_jwks(path: Path) -> dict[str, Ed25519PublicKey]:
    try:
        return public_keys_from_jwks(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise KeyFileError(
            f"JWKS {path} is missing: run `python -m erasure.cli keys init` or pass --jwks"
        ) from None


@dataclass(frozen=True)
class ReceiptKeys:
    """What issuing needs: the signing key (and its kid) and the identifier HMAC key."""

    signing_key: Ed25519PrivateKey
    hmac_key: bytes

    @property
    def kid(self) -> str:
        return key_id(self.signing_key.public_key())

    @classmethod
    def from_files(cls, signing_key_file: Path, hmac_key_file: Path) -> ReceiptKeys:
        return cls(load_signing_key(signing_key_file), load_hmac_key(hmac_key_file))
