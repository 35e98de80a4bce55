"""A person's identity: the identifiers they are known by, normalised, checked, hashed and sealed.

* :func:`normalise` turns a raw identifier into its canonical form (trimmed, lower-cased e-mail, E.164
  phone) and checks it against its type's pattern;
* :class:`IdentityCodec` keeps identifiers out of the tracking store in clear: ``digest`` is a keyed
  HMAC-SHA256 of ``type:value`` (what holds, duplicates and searches match on), ``seal``/``unseal``
  encrypt a value with AES-256-GCM (the type is the associated data, so a sealed e-mail cannot be
  passed off as a customer id);
* :func:`check_graph` validates a catalog's identity graph: every identifier type a target is erased by
  must be reachable, through the catalog's resolvers, from each identifier type a request may carry.

The keys come from secret files (``keys init``) or, in Airflow, from the ``erasure_identity``
connection; never from code. See docs/identity.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from erasure.pseudonym import PREFIX

if TYPE_CHECKING:
    from erasure.catalog import Catalog, IdentifierType
    from erasure.settings import Settings

NONCE_BYTES = 12
_E164_NOISE = re.compile(r"[\s\-.()/]")

Identifiers = dict[str, list[str]]
"""Identifier type -> values (normalised), e.g. ``{"email": ["ann@example.com"]}``."""


class IdentityError(ValueError):
    """An identifier that cannot be used; the message names the type and the problem, never the value."""


def normalise(id_type: IdentifierType, raw: str) -> str:
    """The canonical form of ``raw`` for ``id_type``; :class:`IdentityError` if it does not match the
    type's pattern afterwards."""
    value = raw.strip()
    if id_type.normalize in ("lower", "email"):
        value = value.lower()
    elif id_type.normalize == "e164":
        value = _E164_NOISE.sub("", value)
        if value.startswith("00"):
            value = "+" + value[2:]
    if not value:
        raise IdentityError(f"{id_type.name}: must not be empty")
    if not id_type.regex.fullmatch(value):
        raise IdentityError(
            f"{id_type.name}: does not match the identifier type's pattern ({id_type.pattern})"
        )
    return value


class IdentityCodec:
    """Hashes and seals identifiers with two keys: ``encryption_key`` (32 bytes, AES-256-GCM) and
    ``hmac_key`` (the identifier HMAC key, also used by receipts)."""

    def __init__(self, encryption_key: bytes, hmac_key: bytes) -> None:
        if len(encryption_key) < 32:
            raise IdentityError("identity encryption key: 32 bytes are required")
        self._aead = AESGCM(encryption_key[:32])
        self._mac = hmac.new(hmac_key, digestmod=hashlib.sha256)

    @classmethod
    def from_settings(cls, settings: Settings, encryption_key: bytes | None = None) -> IdentityCodec:
        """The codec of the key files the settings name (``encryption_key`` overrides the file: the
        Airflow glue passes the ``erasure_identity`` connection's key)."""
        from erasure.evidence.keys import load_hex_key, load_hmac_key

        key = encryption_key or load_hex_key(
            settings.identity_key_path, what="identity encryption key", setting="ERASURE_IDENTITY_KEY_FILE"
        )
        return cls(key, load_hmac_key(settings.identifier_hmac_key_path))

    def digest(self, id_type: str, value: str) -> str:
        """``hmac-sha256:<hex>`` of ``type:value`` (:func:`erasure.pseudonym.keyed_hash`): equal for the
        same identifier, useless without the key."""
        mac = self._mac.copy()
        mac.update(f"{id_type}:{value}".encode())
        return PREFIX + mac.hexdigest()

    def seal(self, id_type: str, value: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode("utf-8"), id_type.encode("utf-8"))

    def unseal(self, id_type: str, blob: bytes | memoryview) -> str:
        data = bytes(blob)
        try:
            return self._aead.decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], id_type.encode("utf-8")
            ).decode()
        except InvalidTag:
            raise IdentityError(
                f"{id_type}: a sealed identifier does not open with this key (wrong or rotated identity key)"
            ) from None


def merge(into: Identifiers, more: Mapping[str, Iterable[str]]) -> Identifiers:
    """Add ``more`` to ``into`` (no duplicates, order kept)."""
    for t, values in more.items():
        have = into.setdefault(t, [])
        for v in values:
            if v not in have:
                have.append(v)
    return into


def keys_for(identifiers: Mapping[str, Sequence[str]], types: Sequence[str]) -> list[str]:
    """The values of ``identifiers`` whose type is one of ``types`` (a target's ``identity_keys``)."""
    out: list[str] = []
    for t in types:
        for v in identifiers.get(t, ()):
            if v not in out:
                out.append(v)
    return out


# -- the catalog's identity graph ------------------------------------------------------------------


def reachable(catalog: Catalog, subject_type: str, start: Iterable[str]) -> dict[str, list[str]]:
    """Identifier types reachable from ``start`` through the resolvers of ``subject_type``, each with
    the resolver path that reaches it (empty for a start type). Cycles are safe (each type once)."""
    paths: dict[str, list[str]] = {t: [] for t in start}
    queue = deque(paths)
    resolvers = catalog.resolvers_for(subject_type)
    while queue:
        t = queue.popleft()
        for r in resolvers:
            if r.from_type != t:
                continue
            for nxt in r.to:
                if nxt not in paths:
                    paths[nxt] = [*paths[t], r.name]
                    queue.append(nxt)
    return paths


def _applies(catalog: Catalog, id_type: str, subject_type: str) -> bool:
    it = catalog.identifier_type(id_type)
    return it is not None and it.applies_to(subject_type)


def check_graph(catalog: Catalog) -> None:
    """Validate the identity declarations of ``catalog`` (``ValueError`` naming what is wrong)."""
    from erasure.targets.registry import adapter_for

    names = [t.name for t in catalog.identifier_types]
    if len(set(names)) != len(names):
        raise ValueError(f"identifier_types: duplicate names in {names}")
    declared = set(names)
    stypes = {s.name for s in catalog.subject_types}
    for it in catalog.identifier_types:
        for name in it.subject_types:
            if name not in stypes:
                raise ValueError(f"identifier type '{it.name}': unknown subject type '{name}'")
    for st in catalog.subject_types:
        own = {t.name for t in catalog.identifier_types_of(st.name)}
        id_type = catalog.id_type_of(st.name)
        if st.id_type and st.id_type not in own:
            raise ValueError(
                f"subject type '{st.name}': id_type '{st.id_type}' is not an identifier type of it "
                f"(known: {sorted(own)})"
            )
        for rt in st.request_identifiers or []:
            if rt not in own:
                raise ValueError(
                    f"subject type '{st.name}': request_identifiers: '{rt}' is not an identifier type of it "
                    f"(known: {sorted(own)})"
                )
        if id_type is None and catalog.targets_for(st.name):
            raise ValueError(f"subject type '{st.name}': no identifier type applies to it")
    rnames = [r.name for r in catalog.resolvers]
    if len(set(rnames)) != len(rnames):
        raise ValueError(f"resolvers: duplicate names in {rnames}")
    targets = {t.name: t for t in catalog.targets}
    for r in catalog.resolvers:
        where = f"resolver '{r.name}'"
        if r.target not in targets:
            raise ValueError(f"{where}: unknown target '{r.target}'")
        for rt in (r.from_type, *r.to):
            if rt not in declared:
                raise ValueError(f"{where}: unknown identifier type '{rt}' (known: {sorted(declared)})")
        if r.from_type in r.to:
            raise ValueError(f"{where}: maps '{r.from_type}' to itself")
        target = targets[r.target]
        adapter = adapter_for(target)
        if not adapter.can_resolve:
            raise ValueError(
                f"{where}: target '{target.name}' is of kind '{target.kind}', which cannot resolve"
            )
        try:
            adapter.check_resolver(target, r)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    for t in catalog.targets:
        for k in t.identity_keys:
            if k not in declared:
                raise ValueError(
                    f"target '{t.name}': identity_key '{k}' is not a declared identifier type "
                    f"(known: {sorted(declared)})"
                )
    for st in catalog.subject_types:
        for start in catalog.request_identifier_types(st.name):
            paths = reachable(catalog, st.name, [start])
            for t in catalog.targets_for(st.name):
                keys = [k for k in t.identity_keys if _applies(catalog, k, st.name)]
                if not keys:
                    raise ValueError(
                        f"target '{t.name}': none of its identity_key types {t.identity_keys} applies to "
                        f"subject type '{st.name}'"
                    )
                if not any(k in paths for k in keys):
                    via = ", ".join(
                        f"{r.name}: {r.from_type} -> {'/'.join(r.to)}" for r in catalog.resolvers_for(st.name)
                    )
                    raise ValueError(
                        f"target '{t.name}' is erased by {keys}, which a {st.name} request carrying only "
                        f"'{start}' cannot reach: no resolver path from '{start}' to {' or '.join(keys)} "
                        f"(resolvers: {via or 'none'}); add a resolver or narrow the subject type's "
                        "request_identifiers"
                    )
