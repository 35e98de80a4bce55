"""Kind ``kafka``: an asynchronous partner that consumes erasure events and acknowledges them.

* erase: an event per task written to the outbox in the same transaction that moves the task to
  ``awaiting_ack``; the publisher sends it (idempotent producer, ``acks=all``) and the partner's ack on
  the ack topic closes the task (``erasure.outbox``, ``erasure.events``). This kind is run by the
  outbox stage (``Runner.OUTBOX``), not by dispatch.
* verify and test subjects: through the partner's optional HTTP endpoint (``lookup_url``):
  ``GET <lookup_url>/subjects/{id}`` (404 = gone), ``POST <lookup_url>/test-subjects``. The partner's
  (authenticated) success ack is the confirmation; with a ``lookup_url`` the ack consumer also looks the
  subject up (``verified`` / ``failed``), without one the evidence says ``not_verifiable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from erasure.targets.base import (
    CheckResult,
    Claimed,
    Context,
    Outcome,
    OutcomeSink,
    Spec,
    TargetAdapter,
    TargetError,
    generic_summary,
)
from erasure.targets.registry import register
from erasure.targets.sync_api import http_seed, http_verify
from erasure.vocab import CheckOutcome, Runner, TargetKind

if TYPE_CHECKING:
    from erasure.catalog import Target

TOPIC_RE = r"^[A-Za-z0-9._-]{1,249}$"
TEST_PATH = "/test-subjects"
LOOKUP_PATH = "/subjects/{subject_id}"


class KafkaSpec(Spec):
    topic: Annotated[str, Field(pattern=TOPIC_RE)] = "erasure.events"
    ack_topic: Annotated[str, Field(pattern=TOPIC_RE)] = "erasure.acks"
    ack_timeout_minutes: Annotated[int, Field(ge=1)] = 60
    consumer_group: str | None = None
    """The partner's consumer group (documentation; the partner owns it)."""
    lookup_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Optional HTTP lookup/test-data endpoint of the partner (verification and the canary)."""


@register
class KafkaAdapter(TargetAdapter):
    kind: ClassVar[str] = TargetKind.KAFKA
    spec_model = KafkaSpec
    runner = Runner.OUTBOX
    default_batch_size = 10_000

    def _spec(self, target: Target) -> KafkaSpec:
        return target.spec_as(KafkaSpec)

    def erase_batch(
        self, ctx: Context, target: Target, items: Sequence[Claimed], sink: OutcomeSink
    ) -> list[Outcome]:
        """Enqueue an erasure event for each of ``items`` (pending tasks) and move them to
        ``awaiting_ack`` in one transaction. The outcome is *accepted*, not erased: the partner's ack
        closes the task, so nothing is reported to ``sink``."""
        from erasure.outbox import enqueue_due

        if ctx.catalog is None:
            raise TargetError(
                f"target '{target.name}': enqueueing erasure events needs the catalog in the context"
            )
        res = enqueue_due(
            ctx.require_dsn(),
            ctx.catalog,
            targets=[target.name],
            task_ids=[c.task_id for c in items],
            limit=max(1, len(items)),
        )
        enqueued = dict(zip(res.task_ids, res.event_ids, strict=True))
        return [
            Outcome(
                c,
                True,
                {"kind": self.kind, "event_id": enqueued[c.task_id], "topic": self._spec(target).topic},
            )
            for c in items
            if c.task_id in enqueued
        ]

    def ack_timeout(self, target: Target) -> timedelta | None:
        return timedelta(minutes=self._spec(target).ack_timeout_minutes)

    def _base(self, target: Target) -> str | None:
        url = self._spec(target).lookup_url
        return url.rstrip("/") if url else None

    def cannot_verify(self, target: Target) -> str | None:
        if not target.verifiable:
            return f"catalog: verifiable: false ({target.verification_note})"
        if self._base(target) is None:
            return "kafka.lookup_url is not set: the partner cannot be asked"
        return None

    def verify(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        base = self._base(target)
        if base is None:
            return self.check(
                target, CheckOutcome.ERROR, "kafka.lookup_url is not set: the partner cannot be asked"
            )
        return http_verify(self, ctx, target, base + LOOKUP_PATH.format(subject_id=subject_id), {})

    def seed_test_subjects(
        self, ctx: Context, target: Target, subjects: Sequence[tuple[str, str]]
    ) -> dict[str, str]:
        base = self._base(target)
        if base is None:
            raise TargetError(
                f"target '{target.name}': kafka.lookup_url is not set; the canary cannot seed or check it"
            )
        return http_seed(self, ctx, target, subjects, base + TEST_PATH, base + LOOKUP_PATH, {})

    def evidence_summary(self, evidence: dict[str, Any]) -> str:
        ack = evidence.get("ack")
        if not ack:
            return generic_summary(evidence)
        return (
            f"ack '{ack.get('outcome')}' at {str(ack.get('acked_at', ''))[11:19]} for event "
            f"{str(evidence.get('event_id'))[:8]} ({ack.get('topic')} p{ack.get('partition')}@{ack.get('offset')})"
        )
