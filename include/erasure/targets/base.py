"""The interface every target kind implements, and the types its operations exchange.

A *target kind* (``sync_api``, ``postgres_table``, ``kafka``, ``warehouse_delta``, ...) is one module
in this package that defines

* its catalog section, a pydantic model (``spec_model``) validated under the section named after the
  kind (``sync_api: {base_url: ...}``);
* one :class:`TargetAdapter` subclass, registered with :func:`erasure.targets.registry.register`.

Stages of the pipeline never branch on the kind: they ask the registry for the target's adapter and
call its operations. ``tests/unit/test_targets.py`` checks that every registered kind implements
every operation below.

Operations
----------
``erase_batch``        erase the subjects of a batch of claimed tasks (``runner`` says which stage calls it)
``verify``             look a subject up: gone (``pass``), still there (``fail``) or cannot tell (``error``)
``seed_test_subjects`` put recognisable synthetic data for canary subjects into the target
``check_test_subject`` after erasure, check a canary's synthetic data is gone
``evidence_summary``   one line of a task's evidence for reports
``ack_timeout``        how long an asynchronous erasure may wait for its acknowledgement (``None``: not acked)
``cannot_verify``      why the target cannot be asked after an erasure (``None``: it can, through ``verify``)
``resolve``            (kinds with ``can_resolve``) map identifiers of one type to others: the catalog's
                       ``resolvers`` (erasure.resolution); ``check_resolver`` validates one at load time

Verification (proof of erasure): after a target reports success, the stage that erased it looks the
subject up through ``verify`` and keeps the answer as the task's ``evidence.verification``
(:func:`verification`): ``verified`` (gone), ``failed`` (still there: the task fails and is retried or
escalated) or ``not_verifiable`` (``cannot_verify`` gave a reason). A task succeeds only once verified
or not verifiable; a lookup that could not be made (``error``) leaves the task retryable.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from erasure.vocab import CheckOutcome, Runner, VerificationOutcome, WarehouseStage

if TYPE_CHECKING:
    import httpx
    from pyspark.sql import SparkSession

    from erasure.catalog import Catalog, Resolver, Target
    from erasure.settings import Settings


class TargetError(RuntimeError):
    """A target could not be used as configured (a missing secret, a missing table); names the target."""


class Spec(BaseModel):
    """Base of every kind's catalog section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def validate_for(self, target_name: str) -> None:  # noqa: B027 - optional hook
        """Cross-field checks that need the target (raise ``ValueError``); default: none."""


@dataclass(frozen=True)
class Claimed:
    """One erasure task claimed by a batch: what an adapter needs to erase one subject."""

    task_id: int
    request_id: int
    subject_id: str
    """The value to erase: the request's ``subject_id``, or one of the identifiers the target is erased
    by (a task with several is claimed once per identifier, ``key_index`` 0, 1, ...)."""
    attempts: int
    key_index: int = 0
    id_type: str | None = None
    """The identifier type of ``subject_id`` (None: the request's own ``subject_id``)."""

    @property
    def attempt(self) -> int:
        """The number of this attempt (1-based)."""
        return self.attempts + 1

    @property
    def idempotency_key(self) -> str:
        """Stable per erasure task (and identifier): every retry and replay carries the same key."""
        base = f"erasure-{self.request_id}-{self.task_id}"
        return base if self.key_index == 0 else f"{base}-{self.key_index}"


@dataclass
class Outcome:
    """What erasing one claimed subject came to, with the evidence to keep."""

    item: Claimed
    ok: bool
    evidence: dict[str, Any]
    error: str | None = None
    permanent: bool = False
    stage: WarehouseStage | None = None
    pending: bool = False
    """Accepted but not yet confirmed gone (e.g. HTTP 202): the task waits (``awaiting_ack``, not
    terminal) and is looked up again by a later run; ``ok`` is then false."""


@dataclass
class CheckResult:
    """One look at one target for one subject."""

    target: str
    kind: str
    outcome: CheckOutcome
    detail: str

    @property
    def passed(self) -> bool | None:
        return {CheckOutcome.PASS: True, CheckOutcome.FAIL: False}.get(self.outcome)


@dataclass
class Context:
    """What an operation may use besides the target: settings, the tracking store, the catalog and the
    clients the caller owns (it also closes them)."""

    settings: Settings
    dsn: str | None = None
    """The tracking store (kinds whose erasure writes there, e.g. the Kafka outbox)."""
    catalog: Catalog | None = None
    http: httpx.Client | None = None
    spark: SparkSession | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def require_spark(self, target: Target) -> SparkSession:
        if self.spark is None:
            raise TargetError(f"target '{target.name}': kind '{target.kind}' needs a Spark session")
        return self.spark

    def require_dsn(self) -> str:
        if self.dsn is None:
            raise TargetError("this operation needs the tracking store's DSN in its context")
        return self.dsn

    def require_http(self) -> httpx.Client:
        if self.http is None:
            raise TargetError("an HTTP client is needed for this operation")
        return self.http


def verification(outcome: VerificationOutcome, method: str, answer: str) -> dict[str, Any]:
    """The ``evidence.verification`` of a task: outcome, when, how the target was asked, its answer."""
    return {
        "outcome": VerificationOutcome(outcome).value,
        "verified_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "method": method,
        "answer": answer[:500],
    }


def verification_of(check: CheckResult, method: str) -> dict[str, Any] | None:
    """A lookup's result as verification evidence: pass -> verified, fail -> failed; ``None`` for an
    error (the target could not be asked now: try again later, never a pass)."""
    if check.outcome == CheckOutcome.PASS:
        return verification(VerificationOutcome.VERIFIED, method, check.detail)
    if check.outcome == CheckOutcome.FAIL:
        return verification(VerificationOutcome.FAILED, method, check.detail)
    return None


OutcomeSink = Callable[[Outcome], None]
"""Receives each outcome as soon as it is known (the dispatch writer records it)."""


# -- synthetic test data (canary) -------------------------------------------------------------------
def marker(subject_id: str, column: str) -> str:
    """The recognisable value a canary stores in a text column."""
    return f"canary-{column}-{subject_id}"


def marker_date(subject_id: str, column: str) -> date:
    """The recognisable value a canary stores in a date column."""
    return date(1950, 1, 1) + timedelta(days=zlib.crc32(f"{subject_id}:{column}".encode()) % 18000)


def generic_summary(evidence: dict[str, Any]) -> str:
    """The first few non-empty evidence fields, for evidence an adapter has no special line for."""
    keep = {k: v for k, v in evidence.items() if v not in (None, "", [], {}) and k not in ("claim", "path")}
    return "; ".join(f"{k}={v}" for k, v in list(keep.items())[:5])


class TargetAdapter(ABC):
    """One target kind. Stateless: every call gets the target (its catalog entry) and a context."""

    kind: ClassVar[str]
    """The catalog's ``kind`` value, and the name of the target's catalog section."""
    spec_model: ClassVar[type[Spec]]
    runner: ClassVar[Runner]
    """Which stage erases targets of this kind."""
    needs_spark: ClassVar[bool] = False
    """Whether seeding and checking test subjects needs a Spark session (done by a Spark task)."""
    default_batch_size: ClassVar[int] = 1000
    can_resolve: ClassVar[bool] = False
    """Whether targets of this kind can answer identity lookups (the catalog's ``resolvers``)."""

    # -- catalog --------------------------------------------------------------------------------
    def batch_size(self, target: Target) -> int:
        """Subjects per mapped batch (dispatch)."""
        return self.default_batch_size

    def pool_slots(self, target: Target) -> int:
        """Concurrent task instances allowed against the target (its Airflow pool's slots)."""
        return 1

    # -- erasure --------------------------------------------------------------------------------
    @abstractmethod
    def erase_batch(
        self, ctx: Context, target: Target, items: Sequence[Claimed], sink: OutcomeSink
    ) -> list[Outcome]:
        """Erase the subjects of ``items`` at ``target``; report each outcome to ``sink`` as it is
        known and return them all. A configuration problem that concerns the whole batch raises
        :class:`TargetError` after the outcomes were reported."""

    # -- looking a subject up -------------------------------------------------------------------
    @abstractmethod
    def verify(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        """Whether ``subject_id`` is gone from ``target``: ``pass`` gone, ``fail`` still there,
        ``error`` the target could not be asked."""

    # -- synthetic test subjects ----------------------------------------------------------------
    @abstractmethod
    def seed_test_subjects(
        self, ctx: Context, target: Target, subjects: Sequence[tuple[str, str]]
    ) -> dict[str, str]:
        """Store recognisable synthetic data for each ``(subject_id, subject_type)``; refuse an id
        that already exists there. Returns a detail line per subject seeded; raises
        :class:`TargetError` naming the target when it cannot seed."""

    def check_test_subject(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        """After erasure: the seeded data is gone. Default: :meth:`verify`."""
        return self.verify(ctx, target, subject_id)

    def ack_timeout(self, target: Target) -> timedelta | None:
        """How long an erasure handed to the target may wait for its acknowledgement before it is
        re-sent; ``None`` for kinds whose erasure is not acknowledged asynchronously."""
        return None

    def cannot_verify(self, target: Target) -> str | None:
        """Why ``target`` cannot be asked whether a subject is gone (evidence ``not_verifiable`` with
        this reason), or ``None`` when :meth:`verify` can ask it. Default: the catalog's
        ``verifiable: false`` (with its ``verification_note``)."""
        if not target.verifiable:
            return f"catalog: verifiable: false ({target.verification_note})"
        return None

    def not_verifiable(self, target: Target) -> dict[str, Any] | None:
        """``evidence.verification`` for a target that cannot be asked, else ``None``."""
        reason = self.cannot_verify(target)
        if reason is None:
            return None
        return verification(VerificationOutcome.NOT_VERIFIABLE, "none", reason)

    # -- identity resolution (docs/identity.md) ---------------------------------------------------
    def check_resolver(self, target: Target, resolver: Resolver) -> None:
        """Validate a resolver answered by ``target`` (``ValueError`` naming the problem)."""
        if not self.can_resolve:
            raise ValueError(f"kind '{self.kind}' cannot resolve identifiers")

    def resolve(
        self, ctx: Context, target: Target, resolver: Resolver, values: Sequence[str]
    ) -> dict[str, dict[str, list[str]]]:
        """Look ``values`` (of type ``resolver.from_type``) up: ``{value: {type: [found, ...]}}`` for the
        types in ``resolver.to``; a value the system does not know is absent or maps to nothing. Raise
        (any exception) when the system cannot be asked: the resolution is retried."""
        raise TargetError(f"target '{target.name}': kind '{self.kind}' cannot resolve identifiers")

    # -- reports --------------------------------------------------------------------------------
    @abstractmethod
    def evidence_summary(self, evidence: dict[str, Any]) -> str:
        """A short human-readable line of a task's evidence (demo report, status views)."""

    # -- helpers for subclasses -----------------------------------------------------------------
    def check(self, target: Target, outcome: CheckOutcome, detail: str) -> CheckResult:
        return CheckResult(target.name, target.kind, outcome, detail)


OPERATIONS: tuple[str, ...] = (
    "erase_batch",
    "verify",
    "seed_test_subjects",
    "check_test_subject",
    "evidence_summary",
    "ack_timeout",
    "cannot_verify",
    "batch_size",
    "pool_slots",
    "check_resolver",
    "resolve",
)
"""Every operation a kind must provide (checked by ``tests/unit/test_targets.py``)."""
