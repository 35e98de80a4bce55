"""The versioned erasure event schema (Kafka ``erasure.events``) and its acknowledgement (``erasure.acks``).

Both are JSON objects validated with pydantic on the producing *and* the consuming side: the
pipeline validates every event before it is written to the outbox and again before it is produced;
partners validate what they consume; the pipeline validates every ack it consumes (a bad one is
recorded as ``malformed`` and skipped, never fatal).

Event (schema_version 1)::

    {"event_id": "<uuid4>",             # unique per (task, attempt); a replay re-sends the SAME id
     "type": "erasure.requested",
     "schema_version": 1,
     "subject": {"type": "customer", "id": "cus_8f3k2j"},
     "target": "marketing_events",      # catalog target name; partners keep only their own
     "request_id": 42,                  # tracking-store request id
     "issued_at": "2025-01-01T12:00:00+00:00",
     "attempt": 1}                      # task attempt that produced this event (1-based)

Event (schema_version 2) — the same, plus the identifiers the consuming target is erased by, when the
pipeline resolved the person's identity (docs/identity.md) and the target gets more than its one key::

     "identifiers": {"device_id": ["dev_01", "dev_02"], "email": ["ann@example.com"]}

``subject.id`` is then the first of them (an identifier of the target's first ``identity_key`` type),
so a consumer that erases by ``subject.id`` alone still erases by the target's key. A request with one
identifier for the target is still sent as version 1: consumers that know only version 1 keep working
for them; a version-1-only consumer rejects version 2 events (it must not act on half of a person), and
the pipeline replays, then escalates to the target's owner.

Kafka record: key = ``<subject type>:<subject id>`` (all events of a subject land in one partition,
in order); value = the JSON above (UTF-8); headers ``event_id``, ``type``, ``schema_version``.

Ack (schema_version 1, topic ``erasure.acks``, key = event id)::

    {"event_id": "<uuid>", "target": "marketing_events",
     "outcome": "erased" | "not_found" | "failed",
     "details": {...},                  # free-form evidence, e.g. rows erased or the error
     "acked_at": "2025-01-01T12:00:05+00:00",
     "schema_version": 1}               # optional in acks (absent means 1)

Versioning: ``schema_version`` is an integer bumped on every change of the envelope. A consumer
accepts only the versions in ``SUPPORTED_SCHEMA_VERSIONS`` and rejects others with an error naming
the field, so a partner never acts on an event it does not understand (the pipeline then replays
or escalates). Unknown fields are rejected (``extra="forbid"``): additions need a version bump.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from erasure.vocab import AckOutcome

SCHEMA_VERSION = 1
"""The version of an event without ``identifiers`` (and of acks)."""
IDENTIFIERS_SCHEMA_VERSION = 2
"""The version of an event that carries ``identifiers``."""
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
EVENT_TYPE = "erasure.requested"

_TARGET_RE = r"^[a-z][a-z0-9_]{0,62}$"


class SchemaError(ValueError):
    """An event or ack does not match its schema; the message names the field(s) and the problem."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"invalid {what}: " + "; ".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_M = TypeVar("_M", bound=_Model)


class Subject(_Model):
    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]{0,62}$")]
    id: Annotated[str, Field(min_length=1, max_length=256)]


class ErasureEvent(_Model):
    event_id: uuid.UUID
    type: Literal["erasure.requested"]
    schema_version: Annotated[int, Field(strict=True)]
    subject: Subject
    target: Annotated[str, Field(pattern=_TARGET_RE)]
    request_id: Annotated[int, Field(ge=1)]
    issued_at: AwareDatetime
    attempt: Annotated[int, Field(ge=1)]
    identifiers: (
        dict[
            Annotated[str, Field(pattern=_TARGET_RE)],
            Annotated[
                list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=1, max_length=20)
            ],
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _identifiers_need_v2(self) -> ErasureEvent:
        if self.identifiers is not None and self.schema_version < IDENTIFIERS_SCHEMA_VERSION:
            raise ValueError(f"identifiers: needs schema_version {IDENTIFIERS_SCHEMA_VERSION}")
        return self

    @property
    def key(self) -> str:
        """The Kafka message key: the subject, so a subject's events stay in order on one partition."""
        return message_key(self.subject.type, self.subject.id)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=self.identifiers is None)

    def to_bytes(self) -> bytes:
        return self.to_json().encode("utf-8")

    def values(self) -> list[str]:
        """Every identifier the event asks to erase (``subject.id`` first)."""
        out = [self.subject.id]
        for vs in (self.identifiers or {}).values():
            out.extend(v for v in vs if v not in out)
        return out

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("event_id", str(self.event_id).encode()),
            ("type", self.type.encode()),
            ("schema_version", str(self.schema_version).encode()),
        ]


class Ack(_Model):
    event_id: uuid.UUID
    target: Annotated[str, Field(pattern=_TARGET_RE)]
    outcome: AckOutcome
    details: dict[str, Any] = Field(default_factory=dict)
    acked_at: AwareDatetime
    schema_version: Annotated[int, Field(strict=True)] = SCHEMA_VERSION
    """Optional in the message (absent means 1)."""

    @property
    def succeeded(self) -> bool:
        return self.outcome in AckOutcome.successes()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


def message_key(subject_type: str, subject_id: str) -> str:
    return f"{subject_type}:{subject_id}"


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(whole message)"
        out.append(f"field '{loc}': {err['msg'].removeprefix('Value error, ')}")
    return out


def _load(raw: bytes | str | dict[str, Any] | None, what: str) -> dict[str, Any]:
    if raw is None:
        raise SchemaError(what, ["message has no value (null/tombstone)"])
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError(what, [f"not UTF-8 text: {exc}"]) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SchemaError(what, [f"not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise SchemaError(what, [f"top level must be a JSON object, got {type(data).__name__}"])
    return data


def _check_version(data: dict[str, Any], what: str) -> None:
    v = data.get("schema_version", SCHEMA_VERSION if what == "ack" else None)
    if v is None:
        raise SchemaError(what, ["field 'schema_version': missing"])
    if v not in SUPPORTED_SCHEMA_VERSIONS or isinstance(v, bool):
        raise SchemaError(
            what,
            [
                f"field 'schema_version': unsupported version {v!r} (supported: {list(SUPPORTED_SCHEMA_VERSIONS)})"
            ],
        )


def _parse(model: type[_M], raw: bytes | str | dict[str, Any] | None, what: str) -> _M:
    """Validate ``raw`` as ``model``; raises SchemaError naming the field(s)."""
    if isinstance(raw, bytes | str):
        try:  # fast path (pydantic-core parses the JSON); errors are re-derived below for the message
            obj = model.model_validate_json(raw)
        except ValidationError:
            pass
        else:
            if obj.schema_version in SUPPORTED_SCHEMA_VERSIONS:  # type: ignore[attr-defined]
                return obj
    data = _load(raw, what)
    _check_version(data, what)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(what, _problems(exc)) from None


def parse_event(raw: bytes | str | dict[str, Any] | None) -> ErasureEvent:
    """Validate a consumed (or about-to-be-produced) event; raises SchemaError naming the field."""
    return _parse(ErasureEvent, raw, "event")


def parse_ack(raw: bytes | str | dict[str, Any] | None) -> Ack:
    """Validate a consumed (or about-to-be-produced) ack; raises SchemaError naming the field."""
    return _parse(Ack, raw, "ack")


def new_event(
    *,
    subject_type: str,
    subject_id: str,
    target: str,
    request_id: int,
    attempt: int = 1,
    event_id: uuid.UUID | None = None,
    issued_at: datetime | None = None,
    identifiers: dict[str, list[str]] | None = None,
) -> ErasureEvent:
    """Build (and validate) a new event; raises SchemaError on bad input. With ``identifiers`` the
    event is version 2 (see the module docstring)."""
    extra: dict[str, Any] = {"identifiers": identifiers} if identifiers else {}
    return parse_event(
        {
            **extra,
            "event_id": str(event_id or uuid.uuid4()),
            "type": EVENT_TYPE,
            "schema_version": IDENTIFIERS_SCHEMA_VERSION if identifiers else SCHEMA_VERSION,
            "subject": {"type": subject_type, "id": subject_id},
            "target": target,
            "request_id": request_id,
            "issued_at": (issued_at or datetime.now(UTC)).isoformat(),
            "attempt": attempt,
        }
    )


def new_ack(
    event: ErasureEvent | uuid.UUID | str,
    target: str,
    outcome: AckOutcome | str,
    details: dict[str, Any] | None = None,
    acked_at: datetime | None = None,
) -> Ack:
    """Build (and validate) an ack for an event; raises SchemaError on bad input."""
    event_id = event.event_id if isinstance(event, ErasureEvent) else event
    return parse_ack(
        {
            "event_id": str(event_id),
            "target": target,
            "outcome": outcome,
            "details": details or {},
            "acked_at": (acked_at or datetime.now(UTC)).isoformat(),
        }
    )
