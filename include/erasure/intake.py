"""Intake: validate, register and deduplicate erasure requests (core; no Airflow).

One public entry point per source:

* :func:`register_requests` — a list of request dicts (REST/UI conf, the CLI, the canary);
* :func:`ingest_pending` — rows that upstream systems inserted into ``erasure.intake`` (see docs/intake.md).

Every request is written whole: either the ``erasure.request`` row and one ``erasure.task`` row per
enabled catalog target are written together, or nothing is (a rejection is then recorded in
``erasure.rejected_request``). :func:`register_requests` registers in chunks (one transaction and a few
statements per chunk of :data:`REGISTER_CHUNK` requests); :func:`ingest_pending` one row at a time.
Duplicates (the same ``external_id``, or the same subject while it has an open request) are detected by
the unique indexes with
``INSERT ... ON CONFLICT DO NOTHING``, so concurrent intakes are safe; they are reported with the id
of the existing request. A subject under an active legal hold is registered as ``held``.

The counts always satisfy ``received == registered + duplicates + rejected``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2.extras

from erasure.catalog import Catalog
from erasure.db import connect
from erasure.identity import Identifiers, IdentityCodec, IdentityError, normalise
from erasure.vocab import IntakeStatus, RequestSource, RequestStatus

log = logging.getLogger(__name__)

FIELDS = (
    "external_id",
    "subject_type",
    "subject_id",
    "requested_by",
    "reason",
    "jurisdiction",
    "identifiers",
)
REQUIRED = ("subject_type", "requested_by")
"""Also required: ``subject_id`` or ``identifiers`` (a catalog with ``identifier_types`` takes either)."""
TEXT_FIELDS = ("external_id", "subject_type", "subject_id", "requested_by", "reason", "jurisdiction")
MAX_IDENTIFIERS = 20
"""Most identifier values one request may carry (all types together)."""
DEFAULT_JURISDICTION = "GDPR"

MAX_BATCH = 1000
"""Most requests accepted in one call (one DAG run's ``requests`` list)."""
MAX_PAYLOAD_BYTES = 4096
"""Largest accepted request (its JSON encoding, UTF-8)."""
MAX_LEN = {
    "external_id": 128,
    "subject_type": 63,
    "subject_id": 256,
    "requested_by": 200,
    "reason": 1000,
    "jurisdiction": 32,
}
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,127}$"
REQUESTED_BY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.@:+/-]{0,199}$"
_EXTERNAL_ID_RE = re.compile(EXTERNAL_ID_PATTERN)
_REQUESTED_BY_RE = re.compile(REQUESTED_BY_PATTERN)
# C0/C1 control characters and DEL; the free-text ``reason`` may hold tab and newlines.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_TEXT_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Bidirectional overrides/isolates ("trojan source") and other invisible format characters.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")

_REJECTED_PAYLOAD_MAX_STR = 256
_REJECTED_PAYLOAD_MAX_KEYS = 20


class IntakeError(ValueError):
    """A programming error in how intake was called (unknown source, bad argument), not bad input."""


@dataclass(frozen=True)
class FieldError:
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclass(frozen=True)
class ValidRequest:
    external_id: str
    subject_type: str
    subject_id: str
    requested_by: str
    reason: str | None
    jurisdiction: str
    external_id_generated: bool = False
    identifiers: Identifiers = field(default_factory=dict)
    """Normalised identifiers by type (catalogs with ``identifier_types``; includes the ``subject_id``)."""


@dataclass
class Outcome:
    """What happened to one received request (``index`` is its position in the input)."""

    index: int
    status: IntakeStatus  # registered | duplicate | rejected
    request_id: int | None = None
    external_id: str | None = None
    held: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    message: str = ""
    intake_id: int | None = None


@dataclass
class IntakeResult:
    received: int = 0
    registered: int = 0
    duplicates: int = 0
    rejected: int = 0
    held: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.received += 1
        if outcome.status == IntakeStatus.REGISTERED:
            self.registered += 1
            self.held += int(outcome.held)
        elif outcome.status == IntakeStatus.DUPLICATE:
            self.duplicates += 1
        elif outcome.status == IntakeStatus.REJECTED:
            self.rejected += 1
        else:  # pragma: no cover - programming error
            raise IntakeError(f"unknown outcome status {outcome.status!r}")
        self.outcomes.append(outcome)

    def merge(self, other: IntakeResult) -> None:
        for o in other.outcomes:
            self.add(o)

    @property
    def consistent(self) -> bool:
        return self.received == self.registered + self.duplicates + self.rejected == len(self.outcomes)

    def summary(self) -> str:
        return (
            f"received={self.received} registered={self.registered} (held={self.held}) "
            f"duplicates={self.duplicates} rejected={self.rejected}"
        )

    def to_dict(self, max_outcomes: int | None = None) -> dict[str, Any]:
        """Plain data (for XCom). ``max_outcomes`` keeps the first N outcomes, rejections first."""
        outcomes = self.outcomes
        if max_outcomes is not None and len(outcomes) > max_outcomes:
            outcomes = sorted(outcomes, key=lambda o: (o.status == IntakeStatus.REGISTERED, o.index))[
                :max_outcomes
            ]
        return {
            "received": self.received,
            "registered": self.registered,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "held": self.held,
            "outcomes": [{**asdict(o), "status": str(o.status)} for o in outcomes],
            "outcomes_truncated": len(outcomes) < len(self.outcomes),
        }


# -- validation --------------------------------------------------------------------------------


def allowed_jurisdictions(catalog: Catalog) -> list[str]:
    return sorted(catalog.jurisdiction_sla_days) or [DEFAULT_JURISDICTION]


def text_problem(name: str, value: str) -> str | None:
    """Checks shared by every string field: encodable, no control or invisible format characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (lone surrogate)"
    ctl = (_CONTROL_TEXT_RE if name == "reason" else _CONTROL_RE).search(value)
    if ctl:
        return f"contains control character U+{ord(ctl.group()):04X} at position {ctl.start()}"
    bidi = next((i for i, ch in enumerate(value) if ch in _BIDI), None)
    if bidi is not None:
        return f"contains invisible bidirectional character U+{ord(value[bidi]):04X} at position {bidi}"
    if name != "reason" and any(unicodedata.category(ch) == "Cf" for ch in value):
        return "contains an invisible format character"
    if len(value) > MAX_LEN[name]:
        return f"is {len(value)} characters long, more than the maximum of {MAX_LEN[name]}"
    return None


def _identifiers(
    catalog: Catalog, subject_type: str | None, value: Any, errors: list[FieldError]
) -> Identifiers:
    """The ``identifiers`` object, normalised (``{"email": "A@x.org"}`` or ``{"device_id": [..]}``)."""
    if value is None:
        return {}
    if not catalog.has_identity:
        errors.append(FieldError("identifiers", "this catalog declares no identifier_types: give subject_id"))
        return {}
    if not isinstance(value, dict) or not value:
        errors.append(FieldError("identifiers", f"must be a non-empty object, got {_type_name(value)}"))
        return {}
    allowed = catalog.request_identifier_types(subject_type) if subject_type else []
    out: Identifiers = {}
    count = 0
    for key, raw in value.items():
        name = f"identifiers.{_safe_key(key)}"
        it = catalog.identifier_type(key) if isinstance(key, str) else None
        if it is None or (subject_type and key not in allowed):
            errors.append(
                FieldError(name, f"unknown identifier type for this subject type (known: {allowed})")
            )
            continue
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            errors.append(FieldError(name, "must not be an empty list"))
        for i, v in enumerate(values):
            where = name if not isinstance(raw, list) else f"{name}[{i}]"
            if not isinstance(v, str):
                errors.append(FieldError(where, f"must be a string, got {_type_name(v)}"))
                continue
            problem = text_problem("subject_id", v)
            if problem:
                errors.append(FieldError(where, problem))
                continue
            try:
                norm = normalise(it, v)
            except IdentityError as exc:
                errors.append(FieldError(where, str(exc).split(": ", 1)[-1]))
                continue
            if norm not in out.setdefault(key, []):
                out[key].append(norm)
                count += 1
    if count > MAX_IDENTIFIERS:
        errors.append(
            FieldError("identifiers", f"{count} values, more than the maximum of {MAX_IDENTIFIERS}")
        )
    return out


def validate_request(
    catalog: Catalog, payload: Any, codec: IdentityCodec | None = None
) -> tuple[ValidRequest | None, list[FieldError]]:
    """Validate one request; returns the normalised request or the list of field errors (never both).

    With a catalog that declares ``identifier_types`` a request gives ``subject_id`` (an identifier of
    the subject type's ``id_type``), ``identifiers`` or both; a request without ``subject_id`` gets the
    keyed digest of its first identifier as its ``subject_id`` (``codec`` needed), so no identifier is
    kept in clear in the request row."""
    if not isinstance(payload, dict):
        return None, [FieldError("(request)", f"must be a JSON object, got {_type_name(payload)}")]
    errors: list[FieldError] = []
    try:
        size = len(json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError) as exc:
        size = 0
        errors.append(FieldError("(request)", f"is not JSON-serialisable: {exc}"))
    if size > MAX_PAYLOAD_BYTES:
        errors.append(
            FieldError("(request)", f"payload is {size} bytes, more than the maximum of {MAX_PAYLOAD_BYTES}")
        )
    for key in payload:
        if key not in FIELDS:
            errors.append(FieldError(_safe_key(key), f"unknown field (allowed: {', '.join(FIELDS)})"))
    for path in _non_finite(payload):
        errors.append(
            FieldError(path, "holds a non-finite number (NaN or Infinity), which JSON cannot carry")
        )

    values: dict[str, str | None] = {}
    for name in TEXT_FIELDS:
        value = payload.get(name)
        if value is None:
            if name in REQUIRED or (
                name == "subject_id" and payload.get("identifiers") is None and "subject_id" not in payload
            ):
                errors.append(FieldError(name, "is required" if name not in payload else "must not be null"))
            values[name] = None
            continue
        if not isinstance(value, str):
            errors.append(FieldError(name, f"must be a string, got {_type_name(value)}"))
            continue
        if value == "" or (name != "reason" and value.strip() == ""):
            if name == "reason" and value == "":
                values[name] = None
                continue
            errors.append(
                FieldError(
                    name,
                    "must not be empty" + (" (omit it to generate one)" if name == "external_id" else ""),
                )
            )
            continue
        problem = text_problem(name, value)
        if problem:
            errors.append(FieldError(name, problem))
            continue
        values[name] = value

    st_name = values.get("subject_type")
    if st_name is not None:
        stype = catalog.subject_type(st_name)
        if stype is None:
            known = ", ".join(s.name for s in catalog.subject_types)
            errors.append(
                FieldError("subject_type", f"unknown subject type {_quote(st_name)} (known: {known})")
            )
        elif values.get("subject_id") is not None and not stype.id_regex.fullmatch(
            values["subject_id"] or ""
        ):
            errors.append(
                FieldError(
                    "subject_id",
                    f"does not match the id pattern of subject type '{stype.name}' ({stype.id_pattern})",
                )
            )
    if values.get("external_id") is not None and not _EXTERNAL_ID_RE.fullmatch(values["external_id"] or ""):
        errors.append(FieldError("external_id", f"must match {EXTERNAL_ID_PATTERN}"))
    if values.get("requested_by") is not None and not _REQUESTED_BY_RE.fullmatch(
        values["requested_by"] or ""
    ):
        errors.append(FieldError("requested_by", f"must match {REQUESTED_BY_PATTERN}"))
    identifiers = _identifiers(
        catalog, st_name if catalog.subject_type(st_name or "") else None, payload.get("identifiers"), errors
    )
    subject_id = values.get("subject_id")
    if catalog.has_identity and st_name and catalog.subject_type(st_name) and not errors:
        id_type = catalog.id_type_of(st_name)
        if subject_id is not None and id_type:
            identifiers = {id_type: [subject_id], **identifiers}
            if subject_id not in identifiers[id_type]:
                identifiers[id_type] = [subject_id, *identifiers[id_type]]
        elif subject_id is None and identifiers:
            if codec is None:
                raise IntakeError("a request by identifiers needs the identity codec (keys)")
            first = next(iter(identifiers))
            subject_id = codec.digest(first, identifiers[first][0])
    jur = values.get("jurisdiction")
    allowed = allowed_jurisdictions(catalog)
    if jur is not None and jur not in allowed:
        errors.append(
            FieldError("jurisdiction", f"unknown jurisdiction {_quote(jur)} (known: {', '.join(allowed)})")
        )

    if errors:
        return None, errors
    ext = values["external_id"]
    return (
        ValidRequest(
            external_id=ext or str(uuid.uuid4()),
            subject_type=values["subject_type"] or "",
            subject_id=subject_id or "",
            requested_by=values["requested_by"] or "",
            reason=values["reason"],
            jurisdiction=jur or (DEFAULT_JURISDICTION if DEFAULT_JURISDICTION in allowed else allowed[0]),
            external_id_generated=ext is None,
            identifiers=identifiers,
        ),
        [],
    )


def _non_finite(value: Any, path: str = "", depth: int = 0) -> list[str]:
    """Paths (``field`` or ``field.key[0]``) of NaN/Infinity floats anywhere in a payload."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "(request)"]
    if depth > 32:
        return []
    if isinstance(value, dict):
        return [
            p
            for k, v in value.items()
            for p in _non_finite(v, f"{path}.{_safe_key(k)}" if path else _safe_key(k), depth + 1)
        ]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}[{i}]", depth + 1)]
    return []


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _quote(value: str, limit: int = 64) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _safe_key(key: Any) -> str:
    """A payload key as a printable field name (an empty key is named, never an empty string)."""
    return _sanitise_str(str(key), 64) or "(empty field name)"


def _sanitise_str(value: str, limit: int = _REJECTED_PAYLOAD_MAX_STR) -> str:
    """Printable, storable (no NUL, no lone surrogates) and truncated copy of untrusted text."""
    out = []
    for ch in value[:limit]:
        cp = ord(ch)
        if cp < 0x20 or 0x7F <= cp <= 0x9F or ch in _BIDI or 0xD800 <= cp <= 0xDFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    s = "".join(out)
    if len(value) > limit:
        s += f"...(+{len(value) - limit} chars)"
    return s


def sanitise_payload(payload: Any, depth: int = 0) -> Any:
    """A bounded, storable copy of an untrusted payload for ``erasure.rejected_request``."""
    if isinstance(payload, str):
        return _sanitise_str(payload)
    if isinstance(payload, float) and not math.isfinite(payload):
        return f"<{payload!r}>"  # jsonb cannot hold NaN/Infinity
    if payload is None or isinstance(payload, bool | int | float):
        return payload
    if depth >= 2:
        return f"<{_type_name(payload)}>"
    if isinstance(payload, dict):
        items = list(payload.items())
        out = {_safe_key(k): sanitise_payload(v, depth + 1) for k, v in items[:_REJECTED_PAYLOAD_MAX_KEYS]}
        if len(items) > _REJECTED_PAYLOAD_MAX_KEYS:
            out["..."] = f"{len(items) - _REJECTED_PAYLOAD_MAX_KEYS} more keys"
        return out
    if isinstance(payload, list | tuple):
        out_l = [sanitise_payload(v, depth + 1) for v in payload[:_REJECTED_PAYLOAD_MAX_KEYS]]
        if len(payload) > _REJECTED_PAYLOAD_MAX_KEYS:
            out_l.append(f"... {len(payload) - _REJECTED_PAYLOAD_MAX_KEYS} more items")
        return out_l
    return _sanitise_str(repr(payload))


# -- JSON schema (Airflow Params) ---------------------------------------------------------------


def field_schemas(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """JSON schema of every request field, generated from the catalog (for Airflow ``Param``s).

    Mirrors :func:`validate_request` as far as JSON schema can (the per-type id pattern of a single
    request is checked as "matches some subject type's pattern"; the batch form checks it per type).
    """
    id_patterns = "|".join(f"(?:{s.id_pattern})" for s in catalog.subject_types) or "^$"
    # Python's `$` also matches before a final newline: refuse control characters explicitly.
    no_ctl = {"not": {"type": "string", "pattern": r"[\u0000-\u001f\u007f-\u009f]"}}
    return {
        "subject_type": {"type": "string", "enum": [s.name for s in catalog.subject_types]},
        "subject_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_LEN["subject_id"],
            "pattern": id_patterns,
            **no_ctl,
        },
        "external_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_LEN["external_id"],
            "pattern": EXTERNAL_ID_PATTERN,
            **no_ctl,
        },
        "requested_by": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_LEN["requested_by"],
            "pattern": REQUESTED_BY_PATTERN,
            **no_ctl,
        },
        "reason": {
            "type": "string",
            "maxLength": MAX_LEN["reason"],
            "pattern": r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]*$",
        },
        "jurisdiction": {"type": "string", "enum": allowed_jurisdictions(catalog)},
        "identifiers": {
            "type": "object",
            "description": "identifier type -> value or list of values (catalogs with identifier_types)",
            "propertyNames": {"enum": [t.name for t in catalog.identifier_types]},
            "minProperties": 1,
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_LEN["subject_id"]},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_IDENTIFIERS,
                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_LEN["subject_id"]},
                    },
                ]
            },
        },
    }


def request_item_schema(catalog: Catalog) -> dict[str, Any]:
    """JSON schema of one element of the batch ``requests`` list (strict: unknown keys are refused)."""
    fields = field_schemas(catalog)
    per_type = [
        {
            "if": {"properties": {"subject_type": {"const": s.name}}, "required": ["subject_type"]},
            "then": {"properties": {"subject_id": {"pattern": s.id_pattern}}},
        }
        for s in catalog.subject_types
    ]
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": list(REQUIRED),
        "properties": {k: fields[k] for k in FIELDS},
        "anyOf": [{"required": ["subject_id"]}, {"required": ["identifiers"]}],
    }
    if per_type:
        schema["allOf"] = per_type
    return schema


# -- registration ------------------------------------------------------------------------------

_INSERT_REQUEST = """
INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, reason, jurisdiction,
                             source, is_canary, status, status_reason, received_at, due_at, airflow_run_id)
VALUES (%(external_id)s, %(subject_type)s, %(subject_id)s, %(requested_by)s, %(reason)s, %(jurisdiction)s,
        %(source)s, %(is_canary)s, %(status)s, %(status_reason)s, now(),
        now() + make_interval(days => %(sla_days)s), %(run_id)s)
ON CONFLICT DO NOTHING
RETURNING id
"""

_FIND_EXISTING = """
SELECT id, external_id, subject_type, subject_id, status, 'external_id' AS matched_by
  FROM erasure.request WHERE external_id = %(external_id)s
UNION ALL
SELECT id, external_id, subject_type, subject_id, status, 'open_subject'
  FROM erasure.request
 WHERE subject_type = %(subject_type)s AND subject_id = %(subject_id)s AND status = ANY(%(open)s)
LIMIT 1
"""


def lock_subject(cur: Any, subject_type: str, subject_id: str) -> None:
    """Serialise intake and hold changes of one subject until the end of the transaction."""
    cur.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"erasure.subject:{subject_type}:{subject_id}",),
    )


def active_hold(
    cur: Any, subject_type: str, subject_id: str, digests: list[str] | None = None
) -> dict[str, Any] | None:
    """The subject's first active hold: on its ``subject_id``, or on any of ``digests`` (its identifiers)."""
    cur.execute(
        """SELECT id, reason FROM erasure.legal_hold
            WHERE released_at IS NULL
              AND ((subject_type = %s AND subject_id = %s) OR digest = ANY(%s))
            ORDER BY id LIMIT 1""",
        (subject_type, subject_id, digests or []),
    )
    return cur.fetchone()


def _digests(codec: IdentityCodec | None, req: ValidRequest) -> list[str]:
    if codec is None:
        return []
    return [codec.digest(t, v) for t, vs in req.identifiers.items() for v in vs]


def write_identities(
    cur: Any, codec: IdentityCodec | None, rows: list[tuple[int, Identifiers]], source: str = "request"
) -> int:
    """Store the identifiers the requests came with (sealed, digested; depth 0). Returns rows written."""
    values = [
        (request_id, t, codec.digest(t, v), psycopg2.Binary(codec.seal(t, v)), source)
        for request_id, identifiers in rows
        for t, vs in identifiers.items()
        for v in vs
        if codec is not None
    ]
    if not values:
        return 0
    psycopg2.extras.execute_values(
        cur,
        """INSERT INTO erasure.identity (request_id, id_type, digest, sealed, source) VALUES %s
           ON CONFLICT (request_id, id_type, digest) DO NOTHING""",
        values,
        page_size=max(len(values), 1),
    )
    return len(values)


def initial_status(
    catalog: Catalog, req: ValidRequest, hold: dict[str, Any] | None
) -> tuple[str, str | None]:
    """A new request's status and reason: ``resolving`` when the catalog has resolvers for its subject
    type (the rest is decided after resolution), ``held`` under a legal hold, ``in_review`` when the
    catalog's ``review`` rules match (a person approves it first), else ``in_progress``."""
    if catalog.has_identity and catalog.resolvers_for(req.subject_type):
        # holds, review and duplicates are decided once the identity is resolved (erasure.resolution)
        return RequestStatus.RESOLVING, "resolving identity"
    if hold:
        return RequestStatus.HELD, f"legal hold {hold['id']}: {hold['reason']}"[:1000]
    rule = catalog.review.rule_for(req.subject_type, req.jurisdiction)
    if rule:
        return RequestStatus.IN_REVIEW, f"review: {rule}"
    return RequestStatus.IN_PROGRESS, None


def _register_one(
    cur: Any,
    catalog: Catalog,
    req: ValidRequest,
    source: RequestSource,
    is_canary: bool,
    run_id: str | None,
    index: int,
    codec: IdentityCodec | None = None,
) -> Outcome:
    """Register one validated request inside the caller's transaction (which commits or rolls back)."""
    lock_subject(cur, req.subject_type, req.subject_id)
    hold = active_hold(cur, req.subject_type, req.subject_id, _digests(codec, req))
    status, status_reason = initial_status(catalog, req, hold)
    params = {
        **asdict(req),
        "source": source,
        "is_canary": is_canary,
        "status": status,
        "status_reason": status_reason,
        "sla_days": catalog.sla_for(req.jurisdiction),
        "run_id": run_id,
        "open": list(RequestStatus.open()),
    }
    for _ in range(3):
        cur.execute(_INSERT_REQUEST, params)
        row = cur.fetchone()
        if row is not None:
            request_id = int(row["id"])
            targets = catalog.targets_for(req.subject_type)
            if targets:
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO erasure.task (request_id, target, kind) VALUES %s",
                    [(request_id, t.name, t.kind) for t in targets],
                )
            else:
                log.warning("no enabled catalog target applies to subject type %s", req.subject_type)
            write_identities(cur, codec, [(request_id, req.identifiers)])
            return Outcome(
                index=index,
                status=IntakeStatus.REGISTERED,
                request_id=request_id,
                external_id=req.external_id,
                held=hold is not None,
                message=(params["status_reason"] or f"registered with {len(targets)} task(s)"),
            )
        cur.execute(_FIND_EXISTING, params)
        existing = cur.fetchone()
        if existing is None:
            continue  # the conflicting row closed meanwhile: insert again
        same_subject = (existing["subject_type"], existing["subject_id"]) == (
            req.subject_type,
            req.subject_id,
        )
        if existing["matched_by"] == "external_id" and not same_subject:
            return Outcome(
                index=index,
                status=IntakeStatus.REJECTED,
                external_id=req.external_id,
                errors=[
                    asdict(
                        FieldError(
                            "external_id",
                            f"already used by request {existing['id']} for a different subject",
                        )
                    )
                ],
            )
        how = (
            "external_id"
            if existing["matched_by"] == "external_id"
            else "an open request for the same subject"
        )
        return Outcome(
            index=index,
            status=IntakeStatus.DUPLICATE,
            request_id=int(existing["id"]),
            external_id=req.external_id,
            message=f"duplicate of request {existing['id']} ({existing['status']}) by {how}",
        )
    raise RuntimeError(f"request {req.external_id}: conflict did not resolve after 3 attempts")


def _record_rejection(
    cur: Any, source: RequestSource, payload: Any, errors: list[dict[str, str]], run_id: str | None
) -> None:
    ext = payload.get("external_id") if isinstance(payload, dict) else None
    cur.execute(
        """INSERT INTO erasure.rejected_request (source, external_id, payload, errors, airflow_run_id)
           VALUES (%s, %s, %s::jsonb, %s::jsonb, %s)""",
        (
            source,
            _sanitise_str(ext, MAX_LEN["external_id"]) if isinstance(ext, str) else None,
            json.dumps(sanitise_payload(payload), allow_nan=False),
            json.dumps(errors, allow_nan=False),
            run_id,
        ),
    )


def _message(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['problem']}" for e in errors)


def _check_source(source: RequestSource | str) -> RequestSource:
    try:
        return RequestSource(source)
    except ValueError:
        known = tuple(s.value for s in RequestSource)
        raise IntakeError(f"source must be one of {known}, got {source!r}") from None


def _process(
    conn: Any,
    catalog: Catalog,
    payload: Any,
    source: RequestSource,
    is_canary: bool,
    run_id: str | None,
    index: int,
    intake_id: int | None = None,
    codec: IdentityCodec | None = None,
) -> Outcome:
    """Validate + register (or reject) one payload; the caller commits."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        req, errs = validate_request(catalog, payload, codec)
        if req is not None:
            cur.execute("SAVEPOINT intake_item")
            outcome = _register_one(cur, catalog, req, source, is_canary, run_id, index, codec)
            if outcome.status == IntakeStatus.REJECTED:
                cur.execute("ROLLBACK TO SAVEPOINT intake_item")
            else:
                cur.execute("RELEASE SAVEPOINT intake_item")
        else:
            outcome = Outcome(index=index, status=IntakeStatus.REJECTED, errors=[asdict(e) for e in errs])
            ext = payload.get("external_id") if isinstance(payload, dict) else None
            outcome.external_id = _sanitise_str(ext, MAX_LEN["external_id"]) if isinstance(ext, str) else None
        if outcome.status == IntakeStatus.REJECTED:
            outcome.message = _message(outcome.errors)
            _record_rejection(cur, source, payload, outcome.errors, run_id)
            log.warning("request #%s rejected (%s): %s", index, source, outcome.message)
        else:
            log.info("request #%s %s: %s", index, outcome.status, outcome.message)
        outcome.intake_id = intake_id
        if intake_id is not None:
            cur.execute(
                """UPDATE erasure.intake SET status = %s, processed_at = now(), request_id = %s, error = %s
                    WHERE id = %s""",
                (
                    outcome.status,
                    outcome.request_id,
                    outcome.message[:2000] if outcome.status == IntakeStatus.REJECTED else None,
                    intake_id,
                ),
            )
    return outcome


_INSERT_REQUESTS = """
INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, reason, jurisdiction,
                             source, is_canary, status, status_reason, received_at, due_at, airflow_run_id)
VALUES %s
ON CONFLICT DO NOTHING
RETURNING id, subject_type, subject_id
"""
_INSERT_REQUESTS_TEMPLATE = (
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), now() + make_interval(days => %s), %s)"
)

REGISTER_CHUNK = 500
"""Requests registered per transaction and statement by :func:`register_requests`."""


def _subject_lock_key(subject_type: str, subject_id: str) -> str:
    return f"erasure.subject:{subject_type}:{subject_id}"


def _register_item(
    cur: Any,
    catalog: Catalog,
    req: ValidRequest,
    source: RequestSource,
    is_canary: bool,
    run_id: str | None,
    index: int,
    codec: IdentityCodec | None = None,
) -> Outcome:
    """One request the bulk statement could not insert (a duplicate, a conflict), in its own savepoint."""
    cur.execute("SAVEPOINT intake_item")
    outcome = _register_one(cur, catalog, req, source, is_canary, run_id, index, codec)
    if outcome.status == IntakeStatus.REJECTED:
        cur.execute("ROLLBACK TO SAVEPOINT intake_item")
    else:
        cur.execute("RELEASE SAVEPOINT intake_item")
    return outcome


def _register_chunk(
    conn: Any,
    catalog: Catalog,
    items: list[tuple[int, Any]],
    source: RequestSource,
    is_canary: bool,
    run_id: str | None,
    codec: IdentityCodec | None = None,
) -> list[Outcome]:
    """Validate and register ``(index, payload)`` items in the caller's transaction, in bulk: the
    subjects' locks in one statement (sorted: a stable order), their active holds in one query, every new
    request in one ``INSERT ... ON CONFLICT DO NOTHING`` and their tasks in one more (the event log by
    the statement-level triggers). What the bulk insert did not take — a second request for the same
    subject or external id in the batch, one that already exists — goes through the one-request path
    (:func:`_register_one`), which reports it as a duplicate or rejects it. Outcomes in input order."""
    outcomes: dict[int, Outcome] = {}
    valid: list[tuple[int, ValidRequest]] = []
    payloads = dict(items)
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        for index, payload in items:
            req, errs = validate_request(catalog, payload, codec)
            if req is not None:
                valid.append((index, req))
                continue
            o = Outcome(index=index, status=IntakeStatus.REJECTED, errors=[asdict(e) for e in errs])
            ext = payload.get("external_id") if isinstance(payload, dict) else None
            o.external_id = _sanitise_str(ext, MAX_LEN["external_id"]) if isinstance(ext, str) else None
            o.message = _message(o.errors)
            _record_rejection(cur, source, payload, o.errors, run_id)
            log.warning("request #%s rejected (%s): %s", index, source, o.message)
            outcomes[index] = o
        first: list[tuple[int, ValidRequest]] = []
        later: list[tuple[int, ValidRequest]] = []
        seen_ext: set[str] = set()
        seen_subject: set[tuple[str, str]] = set()
        for index, req in valid:
            subject = (req.subject_type, req.subject_id)
            if req.external_id in seen_ext or subject in seen_subject:
                later.append((index, req))
                continue
            seen_ext.add(req.external_id)
            seen_subject.add(subject)
            first.append((index, req))
        if valid:
            keys = sorted({_subject_lock_key(r.subject_type, r.subject_id) for _, r in valid})
            cur.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) AS n"
                " FROM (SELECT k FROM unnest(%s::text[]) AS k ORDER BY k) s",
                (keys,),
            )
        holds: dict[tuple[str, str], dict[str, Any]] = {}
        if first:
            cur.execute(
                """SELECT DISTINCT ON (h.subject_type, h.subject_id) h.subject_type, h.subject_id, h.id, h.reason
                     FROM erasure.legal_hold h
                     JOIN unnest(%s::text[], %s::text[]) AS s(subject_type, subject_id)
                       ON s.subject_type = h.subject_type AND s.subject_id = h.subject_id
                    WHERE h.released_at IS NULL
                    ORDER BY h.subject_type, h.subject_id, h.id""",
                ([r.subject_type for _, r in first], [r.subject_id for _, r in first]),
            )
            holds = {(h["subject_type"], h["subject_id"]): h for h in cur.fetchall()}
            if codec is not None:  # a hold may name any identifier of the person
                by_digest: dict[str, tuple[str, str]] = {
                    d: (r.subject_type, r.subject_id) for _, r in first for d in _digests(codec, r)
                }
                if by_digest:
                    cur.execute(
                        """SELECT digest, id, reason FROM erasure.legal_hold
                            WHERE released_at IS NULL AND digest = ANY(%s) ORDER BY id""",
                        (list(by_digest),),
                    )
                    for h in cur.fetchall():
                        holds.setdefault(by_digest[h["digest"]], h)
        rows = []
        reasons: dict[int, str | None] = {}
        for index, req in first:
            status, reasons[index] = initial_status(
                catalog, req, holds.get((req.subject_type, req.subject_id))
            )
            rows.append(
                (
                    req.external_id, req.subject_type, req.subject_id, req.requested_by, req.reason,
                    req.jurisdiction, source, is_canary, status, reasons[index],
                    catalog.sla_for(req.jurisdiction), run_id,
                )
            )  # fmt: skip
        inserted: dict[tuple[str, str], int] = {}
        if rows:
            out = psycopg2.extras.execute_values(
                cur,
                _INSERT_REQUESTS,
                rows,
                template=_INSERT_REQUESTS_TEMPLATE,
                page_size=len(rows),
                fetch=True,
            )
            inserted = {(r["subject_type"], r["subject_id"]): int(r["id"]) for r in out}
        task_rows: list[tuple[int, str, str]] = []
        for index, req in first:
            request_id = inserted.get((req.subject_type, req.subject_id))
            if request_id is None:
                later.append((index, req))  # not inserted: an existing request conflicts
                continue
            targets = catalog.targets_for(req.subject_type)
            if not targets:
                log.warning("no enabled catalog target applies to subject type %s", req.subject_type)
            task_rows.extend((request_id, t.name, t.kind) for t in targets)
            hold = holds.get((req.subject_type, req.subject_id))
            outcomes[index] = Outcome(
                index=index,
                status=IntakeStatus.REGISTERED,
                request_id=request_id,
                external_id=req.external_id,
                held=hold is not None,
                message=reasons[index] or f"registered with {len(targets)} task(s)",
            )
        if task_rows:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO erasure.task (request_id, target, kind) VALUES %s",
                task_rows,
                page_size=len(task_rows),
            )
        write_identities(
            cur,
            codec,
            [
                (inserted[(r.subject_type, r.subject_id)], r.identifiers)
                for _, r in first
                if (r.subject_type, r.subject_id) in inserted
            ],
        )
        for index, req in sorted(later, key=lambda x: x[0]):
            o = _register_item(cur, catalog, req, source, is_canary, run_id, index, codec)
            if o.status == IntakeStatus.REJECTED:
                o.message = _message(o.errors)
                _record_rejection(cur, source, payloads[index], o.errors, run_id)
                log.warning("request #%s rejected (%s): %s", index, source, o.message)
            outcomes[index] = o
    return [outcomes[i] for i in sorted(outcomes)]


def register_requests(
    dsn: str,
    catalog: Catalog,
    requests: list[Any],
    source: RequestSource | str,
    run_id: str | None = None,
    *,
    is_canary: bool = False,
    codec: IdentityCodec | None = None,
) -> IntakeResult:
    """Validate and register ``requests`` (dicts with the fields in :data:`FIELDS`).

    Registered in chunks of :data:`REGISTER_CHUNK` (one transaction and a few statements per chunk,
    :func:`_register_chunk`): each request gets its row plus its task rows, or a rejection row. If a
    chunk's transaction fails (a database error), it leaves nothing and its requests are registered
    again one per transaction, so those before the failing one are kept and the error is raised.
    A batch longer than :data:`MAX_BATCH` is rejected as a whole (one ``rejected_request`` row naming
    the field ``requests``; every item counts as rejected) and nothing else is written.
    """
    source = _check_source(source)
    codec = identity_codec(catalog, codec)
    if not isinstance(requests, list | tuple):
        raise IntakeError(f"requests must be a list, got {_type_name(requests)}")
    result = IntakeResult()
    conn = connect(dsn)
    try:
        if len(requests) > MAX_BATCH:
            err = {
                "field": "requests",
                "problem": f"batch of {len(requests)} requests exceeds the maximum of {MAX_BATCH}",
            }
            with conn, conn.cursor() as cur:
                _record_rejection(
                    cur, source, {"batch_size": len(requests), "first": requests[:1]}, [err], run_id
                )
            log.warning("batch rejected (%s): %s", source, err["problem"])
            for i in range(len(requests)):
                result.add(
                    Outcome(index=i, status=IntakeStatus.REJECTED, errors=[err], message=_message([err]))
                )
            return result
        items = list(enumerate(requests))
        for start in range(0, len(items), REGISTER_CHUNK):
            chunk = items[start : start + REGISTER_CHUNK]
            try:
                with conn:  # one transaction per chunk: its requests and tasks, or nothing
                    outcomes = _register_chunk(conn, catalog, chunk, source, is_canary, run_id, codec)
            except psycopg2.Error as exc:
                # the chunk left nothing behind; each request again in its own transaction, so the
                # ones before a failing request are registered and the failure names its request
                log.warning(
                    "bulk registration failed (%s); registering the chunk one by one", type(exc).__name__
                )
                for i, payload in chunk:
                    with conn:
                        result.add(
                            _process(conn, catalog, payload, source, is_canary, run_id, i, None, codec)
                        )
                continue
            for o in outcomes:
                result.add(o)
    finally:
        conn.close()
    log.info("intake (%s): %s", source, result.summary())
    return result


def ingest_pending(
    dsn: str,
    catalog: Catalog,
    run_id: str | None = None,
    *,
    limit: int = 5000,
    chunk: int = 500,
    codec: IdentityCodec | None = None,
) -> IntakeResult:
    """Register up to ``limit`` ``pending`` rows of ``erasure.intake`` (oldest first).

    Each row is locked (``FOR UPDATE SKIP LOCKED``) and, in the same transaction as its registration,
    set to ``registered``, ``duplicate`` (``request_id`` = the existing request) or ``rejected``
    (``error`` = the reason). Concurrent runs never process a row twice.
    """
    result = IntakeResult()
    codec = identity_codec(catalog, codec)
    last_id = 0
    conn = connect(dsn)
    try:
        while result.received < limit:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT id FROM erasure.intake WHERE status = 'pending' AND id > %s ORDER BY id LIMIT %s",
                    (last_id, min(chunk, limit - result.received)),
                )
                ids = [r[0] for r in cur.fetchall()]
            if not ids:
                break
            last_id = ids[-1]
            for intake_id in ids:
                with conn:
                    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                        cur.execute(
                            f"""SELECT {", ".join(FIELDS)} FROM erasure.intake
                                 WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED""",  # noqa: S608
                            (intake_id,),
                        )
                        row = cur.fetchone()
                    if row is None:
                        continue  # taken by a concurrent run
                    payload = {k: v for k, v in row.items() if v is not None}
                    result.add(
                        _process(
                            conn,
                            catalog,
                            payload,
                            RequestSource.INTAKE_TABLE,
                            False,
                            run_id,
                            result.received,
                            intake_id,
                            codec,
                        )
                    )
            if len(ids) < chunk:
                break
    finally:
        conn.close()
    log.info("intake table: %s", result.summary())
    return result


def identity_codec(catalog: Catalog, codec: IdentityCodec | None = None) -> IdentityCodec | None:
    """``codec``, or for a catalog with ``identifier_types`` the one of the default settings' key files
    (None for a catalog without: identifiers are then only the ``subject_id``)."""
    if codec is not None or not catalog.has_identity:
        return codec
    from erasure.settings import get_settings

    return IdentityCodec.from_settings(get_settings())


# -- helpers for the DAGs (plain data in, plain data out) ----------------------------------------


def requests_from_conf(conf: dict[str, Any], declared: list[str]) -> list[Any]:
    """The request list of one ``erasure_intake`` run: the ``requests`` batch or the single request.

    ``conf`` is the run's trigger conf (already validated against the Params by Airflow), ``declared``
    the param names. In single mode, undeclared conf keys become part of the request (and get it
    rejected as an unknown field). Raises ``ValueError`` (nothing is written) when the conf has no
    request, or mixes the batch with single-request fields.
    """
    batch = conf.get("requests")
    single = {k: conf[k] for k in FIELDS if conf.get(k) is not None}
    extra = {k: v for k, v in conf.items() if k not in declared}
    if batch:
        if single or extra:
            keys = sorted([*single, *extra])
            raise ValueError(
                f"conf: give either 'requests' (a batch) or the single-request fields, not both (also got {keys})"
            )
        if not isinstance(batch, list):
            raise ValueError(f"conf.requests: must be a list, got {_type_name(batch)}")
        return list(batch)
    if not single and not extra:
        raise ValueError(
            "conf: no request given: set subject_type, subject_id and requested_by, or 'requests' (a list)"
        )
    return [{**single, **extra}]


def result_report(result: dict[str, Any], max_lines: int = 50) -> str:
    """A human-readable summary of :meth:`IntakeResult.to_dict` for task logs."""
    lines = [
        f"received={result['received']} registered={result['registered']} (held={result['held']}) "
        f"duplicates={result['duplicates']} rejected={result['rejected']}"
    ]
    shown = 0
    for o in result.get("outcomes", []):
        if o["status"] == IntakeStatus.REGISTERED and not o["held"]:
            continue
        if shown >= max_lines:
            lines.append("... (more outcomes in the XCom of task 'register')")
            break
        shown += 1
        ident = f"request #{o['index']}" + (
            f" (external_id {o['external_id']})" if o.get("external_id") else ""
        )
        if o["status"] == IntakeStatus.REJECTED:
            lines.append(f"REJECTED {ident}: {o['message']}")
        elif o["status"] == IntakeStatus.DUPLICATE:
            lines.append(f"DUPLICATE {ident}: {o['message']}")
        else:
            lines.append(f"HELD {ident} -> request {o['request_id']}: {o['message']}")
    return "\n".join(lines)
