"""Targets owned by other teams' services (sync delete APIs, Kafka consumers): the pipeline cannot
look into their restored data, so re-applying is a report to their owners: which requests (ids, no
identifier) were erased there after the restore point and must be re-run on their side."""

from __future__ import annotations

from erasure.catalog import Target
from erasure.reapply import ReapplyContext, TargetReapply, Tombstones, reapplier
from erasure.vocab import TargetKind


@reapplier(TargetKind.SYNC_API, TargetKind.KAFKA)
def report_to_owner(ctx: ReapplyContext, target: Target, tombs: Tombstones) -> TargetReapply:
    ids = sorted(r for r, ts in tombs.targets_of.items() if target.name in ts)
    return TargetReapply(
        target.name,
        target.kind,
        matched=dict.fromkeys(ids, 0),
        report_only=True,
        detail=(
            f"{len(ids)} request(s) erased after the restore point: owner '{target.owner}' re-runs them "
            f"on their side (the requests' erasure status shows them; `reconcile` replays the events)"
        ),
    )
