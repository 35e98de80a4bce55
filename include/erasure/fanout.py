"""Each target is erased by its own identifiers: one claimed task becomes one item per identifier.

A task of a request with a resolved identity (``erasure.identity``) is erased at its target by every
identifier of the types the target is erased by (``identity_key``); a request without one (a catalog
without ``identifier_types``) by its ``subject_id``, as before. :func:`expand` turns claimed tasks into
those items (``Claimed.key_index`` 0, 1, ... so every identifier has its own idempotency key), the
adapter erases them as it erases any batch, and :class:`Combiner` folds the items' outcomes back into
one outcome per task: succeeded only when every identifier is gone, its evidence naming each one by type
and masked value (:func:`erasure.identifiers.mask`), never in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from erasure.catalog import Target
from erasure.identifiers import mask
from erasure.identity import IdentityCodec, keys_for
from erasure.targets.base import Claimed, Outcome, OutcomeSink, verification
from erasure.vocab import DeleteOutcome, VerificationOutcome

_WORST = [
    DeleteOutcome.PERMANENT_FAILURE,
    DeleteOutcome.RETRYABLE_FAILURE,
    DeleteOutcome.ACCEPTED,
    DeleteOutcome.CONFLICT,
    DeleteOutcome.DELETED,
    DeleteOutcome.ALREADY_GONE,
]


NOT_FOUND = "not_found"
"""A task's ``evidence.outcome`` when the person's identity holds none of its target's identifier types."""


def not_found_evidence(target: Target, note: str, resolvers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The evidence of a task that succeeds without erasing: nothing of the target's identifier types
    was found (``note`` says what was looked for); ``resolvers``: their counts, when known."""
    ev: dict[str, Any] = {"kind": target.kind, "outcome": NOT_FOUND, "identity_keys": target.identity_keys}
    if resolvers is not None:
        ev["resolvers"] = resolvers
    ev["verification"] = verification(VerificationOutcome.NOT_VERIFIABLE, "identity resolution", note)
    return ev


def missing_note(target: Target) -> str:
    """Why a task has nothing to erase at its target (dispatch and outbox)."""
    return f"no identifier of type {' or '.join(target.identity_keys)} in the request's identity"


def expand(
    cur: Any, codec: IdentityCodec | None, target: Target, items: Sequence[Claimed]
) -> tuple[list[Claimed], list[Outcome]]:
    """The items to erase for ``items`` at ``target``, and outcomes for tasks with nothing to erase
    there (``not_found``: their request's identity holds none of the target's identifier types)."""
    if codec is None or not items:
        return list(items), []
    from erasure.resolution import identity_of

    identities = identity_of(cur, codec, sorted({c.request_id for c in items}))
    out: list[Claimed] = []
    none: list[Outcome] = []
    for c in items:
        ids = identities.get(c.request_id)
        if not ids:  # no identity stored: the request's subject_id, as before
            out.append(c)
            continue
        typed = [(t, v) for t in target.identity_keys for v in keys_for(ids, [t])]
        if not typed:
            none.append(Outcome(c, True, not_found_evidence(target, missing_note(target))))
            continue
        out.extend(replace(c, subject_id=v, key_index=i, id_type=t) for i, (t, v) in enumerate(typed))
    return out, none


class Combiner:
    """Collects the outcomes of a task's items and passes ONE outcome per task to ``sink`` once all
    its items are in. A task with one item passes through unchanged."""

    def __init__(self, items: Sequence[Claimed], sink: OutcomeSink) -> None:
        self.sink = sink
        self.expected: dict[int, int] = {}
        self.first: dict[int, Claimed] = {}
        for c in items:
            self.expected[c.task_id] = self.expected.get(c.task_id, 0) + 1
            self.first.setdefault(c.task_id, replace(c, key_index=0))
        self.parts: dict[int, list[Outcome]] = {}

    def __call__(self, o: Outcome) -> None:
        tid = o.item.task_id
        if self.expected.get(tid, 1) == 1:
            self.sink(o if o.item.key_index == 0 else replace(o, item=self.first.get(tid, o.item)))
            return
        parts = self.parts.setdefault(tid, [])
        parts.append(o)
        if len(parts) == self.expected[tid]:
            self.sink(combine(self.first[tid], parts))

    @property
    def incomplete(self) -> list[int]:
        """Tasks some of whose items reported no outcome (the batch raised before they did)."""
        return [t for t, parts in self.parts.items() if len(parts) < self.expected[t]]


def combine(item: Claimed, parts: Sequence[Outcome]) -> Outcome:
    """One task's outcome from its identifiers' outcomes."""
    parts = sorted(parts, key=lambda p: p.item.key_index)
    ok = all(p.ok for p in parts)
    pending = not ok and any(p.pending for p in parts) and all(p.ok or p.pending for p in parts)
    failed = [p for p in parts if not p.ok and not p.pending]
    per = []
    for p in parts:
        ev = {k: v for k, v in p.evidence.items() if k != "kind"}
        per.append({"id_type": p.item.id_type, "identifier": mask(p.item.subject_id), **ev})
    outcomes = [str(p.evidence.get("outcome", "")) for p in parts]
    worst = next((w.value for w in _WORST if w.value in outcomes), outcomes[0] if outcomes else "")
    evidence: dict[str, Any] = {
        "kind": parts[0].evidence.get("kind"),
        "outcome": worst,
        "attempt": item.attempt,
        "identifiers": len(parts),
        "per_identifier": per,
    }
    vers = [p.evidence.get("verification") for p in parts]
    if all(vers):
        kinds = [str(v["outcome"]) for v in vers if v]
        if VerificationOutcome.FAILED in kinds:
            outcome = VerificationOutcome.FAILED
        elif all(k == VerificationOutcome.NOT_VERIFIABLE for k in kinds):
            outcome = VerificationOutcome.NOT_VERIFIABLE
        else:
            outcome = VerificationOutcome.VERIFIED
        evidence["verification"] = verification(
            outcome,
            str(vers[0]["method"]) if vers[0] else "",
            "; ".join(f"{p.item.id_type}: {v['outcome']}" for p, v in zip(parts, vers, strict=True) if v),
        )
    error = None
    if not ok:
        bad = failed or [p for p in parts if not p.ok]
        error = "; ".join(f"{p.item.id_type} #{p.item.key_index}: {p.error}" for p in bad)[:2000]
    return Outcome(
        item,
        ok,
        evidence,
        error=error,
        permanent=any(p.permanent for p in failed),
        stage=parts[0].stage if ok else None,
        pending=pending,
    )
