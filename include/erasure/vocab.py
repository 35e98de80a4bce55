"""The pipeline's one vocabulary: every status, stage, kind, event type and outcome as a ``StrEnum``.

Members compare equal to their string values (``TaskStatus.SUCCEEDED == "succeeded"``), so they go
into SQL parameters, JSON and the tracking store as they are. The tracking store's CHECK constraints
hold the same values; ``tests/unit/test_vocab.py`` compares the two so they cannot drift.

Target kinds are not a closed list here: a kind is whatever adapter is registered in
``erasure.targets`` (``TargetKind`` names the built-in ones).
"""

from __future__ import annotations

from enum import StrEnum


class RequestStatus(StrEnum):
    RECEIVED = "received"
    HELD = "held"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    IN_REVIEW = "in_review"
    """The catalog says a person approves it first (``review``): it waits in the ``erasure_review`` DAG's
    human-in-the-loop task; nothing is dispatched meanwhile, its SLA clock runs."""
    RESOLVING = "resolving"
    """Its identity is being expanded by the catalog's resolvers (erasure.resolution); nothing is
    dispatched meanwhile, its SLA clock runs."""

    @classmethod
    def open(cls) -> tuple[RequestStatus, ...]:
        """Statuses of a request that is not finished (at most one per subject)."""
        return (cls.RECEIVED, cls.HELD, cls.IN_PROGRESS, cls.IN_REVIEW, cls.RESOLVING)

    @classmethod
    def finished(cls) -> tuple[RequestStatus, ...]:
        return (cls.COMPLETED, cls.FAILED, cls.REJECTED)


class TaskStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    AWAITING_ACK = "awaiting_ack"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ESCALATED = "escalated"

    @classmethod
    def terminal(cls) -> tuple[TaskStatus, ...]:
        return (cls.SUCCEEDED, cls.ESCALATED)


class WarehouseStage(StrEnum):
    """How far a warehouse task got: rows deleted, then files purged, then old files vacuumed."""

    DELETED = "deleted"
    PURGED = "purged"
    VACUUMED = "vacuumed"


class WarehouseWrite(StrEnum):
    """How the batched delete step wrote a Delta table (evidence ``delete_write``)."""

    MERGE = "merge"  # MERGE with the keys as a broadcast source (one key column, a batch above PREDICATE_MAX_KEYS)
    PREDICATE = "predicate"  # DELETE / UPDATE by ``key IN (...)`` over the key columns (the row-level write)
    REWRITE = "one_pass_rewrite"  # copy-on-write, most files touched: the whole table rewritten in one pass
    NONE = "none"  # nothing of the subjects left to change: no commit


class TargetKind(StrEnum):
    """The built-in target kinds (one adapter module each in ``erasure.targets``)."""

    SYNC_API = "sync_api"
    KAFKA = "kafka"
    WAREHOUSE_DELTA = "warehouse_delta"
    POSTGRES_TABLE = "postgres_table"


class Runner(StrEnum):
    """Which stage of the pipeline carries out a target kind's erasure."""

    DISPATCH = "dispatch"
    """Mapped delete batches of the ``erasure_dispatch`` DAG (claim, erase, record per subject)."""
    OUTBOX = "outbox"
    """Events written to the outbox, published to Kafka, closed by acknowledgements."""
    SPARK = "spark"
    """The ``erasure_warehouse`` DAG's Spark job (one batched delete per table, purge, vacuum)."""


class RequestSource(StrEnum):
    API = "api"
    INTAKE_TABLE = "intake_table"
    CANARY = "canary"
    CLI = "cli"


class IntakeStatus(StrEnum):
    """Status of a row of ``erasure.intake`` and of one payload's outcome at intake."""

    PENDING = "pending"
    REGISTERED = "registered"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class AckStatus(StrEnum):
    """What became of an acknowledgement read from Kafka (``erasure.ack_log.status``)."""

    MATCHED = "matched"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    MALFORMED = "malformed"
    MISMATCH = "mismatch"
    UNAUTHENTICATED = "unauthenticated"
    """No valid signature of the ack's target (unsigned, wrong key, signed for another target): ignored."""


class AckOutcome(StrEnum):
    """What a partner says it did with an erasure event (``Ack.outcome``)."""

    ERASED = "erased"
    NOT_FOUND = "not_found"
    FAILED = "failed"

    @classmethod
    def successes(cls) -> tuple[AckOutcome, ...]:
        return (cls.ERASED, cls.NOT_FOUND)


class EventType(StrEnum):
    """``erasure.event_log.event_type``: every status change, written by the store's triggers."""

    REQUEST_RECEIVED = "request_received"
    REQUEST_HELD = "request_held"
    REQUEST_RELEASED = "request_released"
    REQUEST_COMPLETED = "request_completed"
    REQUEST_FAILED = "request_failed"
    TASK_CREATED = "task_created"
    TASK_DISPATCHED = "task_dispatched"
    EVENT_PUBLISHED = "event_published"
    ACK_RECEIVED = "ack_received"
    ROWS_DELETED = "rows_deleted"
    FILES_PURGED = "files_purged"
    VACUUMED = "vacuumed"
    TASK_SUCCEEDED = "task_succeeded"
    TASK_FAILED = "task_failed"
    TASK_ESCALATED = "task_escalated"
    TASK_RETRIED = "task_retried"
    EVENT_REPLAYED = "event_replayed"
    OPERATOR_ACTION = "operator_action"
    """A person's action from the Erasure view (details: action, actor, reason); see ``OperatorAction``."""
    IDENTITY_RESOLVED = "identity_resolved"
    """The request's identity set reached a fixed point (details: counts per type and per resolver)."""
    IDENTIFIERS_MINIMISED = "identifiers_minimised"
    """The retention job replaced the request's raw identifiers by keyed hashes (details: rows per table)."""
    ERASURE_REAPPLIED = "erasure_reapplied"
    """After a backup restore, ``reapply`` erased the request's subject again from a target (details:
    target, restore time, rows, or ``report`` for targets their owners re-run)."""


class ResolutionStatus(StrEnum):
    """``erasure.resolution.status``: one resolver's work for one request."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    """The last lookup failed; retried after ``next_attempt_at``."""
    ESCALATED = "escalated"
    """Failed ``max_attempts`` times: its owner is alerted; the request waits (or goes on without it
    when the resolver is ``optional``)."""


class OperatorAction(StrEnum):
    """``erasure.operator_action.action``: what an operator did in the Erasure view of the Airflow UI."""

    HOLD_PLACED = "hold_placed"
    HOLD_RELEASED = "hold_released"
    TASK_RERUN = "task_rerun"
    EVENT_REPLAY = "event_replay"
    REQUEST_WITHDRAWN = "request_withdrawn"
    REVIEW_APPROVED = "review_approved"
    REVIEW_REJECTED = "review_rejected"


class ReviewDecision(StrEnum):
    """``erasure.review.decision``: what the reviewer of a request in review decided."""

    APPROVED = "approved"
    REJECTED = "rejected"


class EventOutcome(StrEnum):
    """Coarse outcome class of an event in the Delta event dataset (column ``outcome``)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ESCALATED = "escalated"


class CheckOutcome(StrEnum):
    """A look at one target for one subject (canary checks, verification)."""

    PASS = "pass"  # the data is gone
    FAIL = "fail"  # the data is still there
    ERROR = "error"  # could not look: retried later


class VerificationOutcome(StrEnum):
    """A task's ``evidence.verification.outcome``: was the subject looked up after its erasure?"""

    VERIFIED = "verified"  # looked up: gone
    NOT_VERIFIABLE = "not_verifiable"  # the target cannot be asked (the catalog says so, with a reason)
    FAILED = "failed"  # looked up: still there (the partner's word was wrong)

    @classmethod
    def closing(cls) -> tuple[VerificationOutcome, ...]:
        """Outcomes that let a task succeed."""
        return (cls.VERIFIED, cls.NOT_VERIFIABLE)


class CanaryResult(StrEnum):
    PASS = "pass"
    FAIL = "fail"


class AlertKind(StrEnum):
    TASK_ESCALATED = "task_escalated"
    TASK_FAILED = "task_failed"
    SLA_APPROACHING = "sla_approaching"
    SLA_BREACHED = "sla_breached"
    TARGET_SLA_BREACHED = "target_sla_breached"
    DEADLINE_MISSED = "deadline_missed"
    CANARY_FAILED = "canary_failed"
    CANARY_REQUEST_INCOMPLETE = "canary_request_incomplete"
    DAG_RUN_FAILED = "dag_run_failed"
    BATCH_FAILED = "batch_failed"
    LEASE_EXPIRED = "lease_expired"
    RESOLVER_ESCALATED = "resolver_escalated"
    """A resolver failed its target's ``max_attempts`` times for a request (erasure.resolution)."""
    PII_DRIFT = "pii_drift"
    """A warehouse table holds personal data the catalog does not declare (erasure.drift)."""


class DeleteOutcome(StrEnum):
    """Per-subject outcome of one erase call, as written to a task's evidence (``outcome``)."""

    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    CONFLICT = "conflict"
    ACCEPTED = "accepted"
    """HTTP 202: the partner accepted the erasure but has not done it yet; not a success until verified."""
    RETRYABLE_FAILURE = "retryable_failure"
    PERMANENT_FAILURE = "permanent_failure"

    @classmethod
    def successes(cls) -> tuple[DeleteOutcome, ...]:
        """Outcomes that close the task: gone now, gone before, or gone per the partner (409)."""
        return (cls.DELETED, cls.ALREADY_GONE, cls.CONFLICT)


class FieldStrategy(StrEnum):
    """How a target erases one column of the subject's rows (catalog ``fields``; evidence ``strategies``)."""

    DELETE_ROW = "delete_row"  # the whole row goes (mode: delete)
    NULL = "null"  # the value becomes NULL
    CONSTANT = "constant"  # the value becomes the rule's constant
    HASH = "hash"  # the value becomes its keyed pseudonym (erasure.pseudonym): joins still work
    MASK = "mask"  # the type's blank: '[erased]' for strings, NULL otherwise (``mask_columns``)


class DriftFinding(StrEnum):
    """What PII drift detection found (erasure.drift; the ``pii_drift`` report's ``kind``)."""

    UNDECLARED_PERSONAL_COLUMN = "undeclared_personal_column"
    UNCATALOGUED_TABLE = "uncatalogued_table"
