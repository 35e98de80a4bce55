"""Data quality of the erasure event dataset: a Great Expectations 1.x suite run BEFORE anything is written.

``validate_events(frame, ...)`` runs the suite on the extracted, enriched batch (a pandas DataFrame,
one row per event) in an ephemeral GX context (nothing is persisted, no ``gx/`` project directory).
It checks:

* **keys**: ``event_id`` unique and not null; request keys, subject keys, timestamps not null; task
  events carry ``task_id``, ``target`` and ``target_kind``;
* **enums**: ``event_type``, ``target_kind``, ``outcome``, ``owner_team`` (catalog teams + ``unknown``),
  ``status`` (request/task statuses; ack outcomes for ``ack_received``);
* **order**: ``occurred_at >= received_at`` and ``due_at >= received_at``; ``attempt >= 0``;
* **consistency with the tracking store**: the row count and the number of distinct requests equal
  what the tracking store reported for the same window *in the same snapshot*;
* **audit chain**: ``seq``, ``prev_hash``, ``hash`` not null, ``seq`` unique, hashes SHA-256 hex (docs/evidence.md);
* **schema**: exactly the dataset's columns.

A failed validation raises :class:`DataQualityError` carrying a readable summary (which expectation,
which column, how many rows, a few offending values - never subject identifiers) and the full GX
result as JSON; the caller then writes nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from erasure.targets.registry import kinds
from erasure.vocab import AckOutcome, EventOutcome, EventType, RequestStatus, TaskStatus

log = logging.getLogger("erasure.dq")

# Enumerations of the tracking store: the one vocabulary (erasure.vocab) and the registered kinds.
EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)
# events about a request as a whole (no task, no target): its status changes and its identity resolution
REQUEST_EVENT_TYPES: tuple[str, ...] = tuple(
    e
    for e in EVENT_TYPES
    if e.startswith("request_") or e in (EventType.IDENTITY_RESOLVED, EventType.IDENTIFIERS_MINIMISED)
)
TASK_EVENT_TYPES: tuple[str, ...] = tuple(e for e in EVENT_TYPES if e not in REQUEST_EVENT_TYPES)
REQUEST_STATUSES: tuple[str, ...] = tuple(s.value for s in RequestStatus)
TASK_STATUSES: tuple[str, ...] = tuple(s.value for s in TaskStatus)
ACK_OUTCOMES: tuple[str, ...] = tuple(o.value for o in AckOutcome)
"""Outcomes of a partner ack; the event log stores them as the status."""
OUTCOMES: tuple[str, ...] = tuple(o.value for o in EventOutcome)
UNKNOWN_TEAM = "unknown"
"""Owner team of a target that is no longer in the catalog (its history stays in the dataset)."""

KEY_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "event_date",
    "occurred_at",
    "request_id",
    "external_id",
    "subject_type",
    "subject_id",
    "received_at",
    "due_at",
    "owner_team",
    "outcome",
)
TASK_KEY_COLUMNS: tuple[str, ...] = ("task_id", "target", "target_kind")
CHAIN_COLUMNS: tuple[str, ...] = ("seq", "prev_hash", "hash")
"""The audit chain's columns (docs/evidence.md): present on every row, seq unique, hashes SHA-256 hex."""


class DataQualityError(RuntimeError):
    """The batch failed validation; nothing was written. ``summary`` has the details."""

    def __init__(self, summary: ValidationSummary) -> None:
        self.summary = summary
        super().__init__(summary.text())


@dataclass
class FailedExpectation:
    expectation: str
    columns: str
    unexpected_count: int | None = None
    observed: Any = None
    examples: list[Any] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        parts = [f"{self.expectation}({self.columns})"]
        if self.error:
            parts.append(f"raised: {self.error}")
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} unexpected row(s)")
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.examples:
            parts.append(f"e.g. {self.examples}")
        return ": ".join(parts[:1]) + (": " + ", ".join(parts[1:]) if parts[1:] else "")


@dataclass
class ValidationSummary:
    success: bool
    evaluated: int
    rows: int
    failed: list[FailedExpectation] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict, repr=False)
    """The full GX validation result (``to_json_dict()``)."""

    def text(self) -> str:
        if self.success:
            return f"event dataset batch passed {self.evaluated} expectations ({self.rows} rows)"
        lines = [
            f"event dataset batch FAILED data quality: {len(self.failed)} of {self.evaluated} expectations "
            f"failed on {self.rows} rows; nothing was written"
        ]
        lines += [f"  - {f.line()}" for f in self.failed]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "evaluated": self.evaluated,
            "rows": self.rows,
            "failed": [f.__dict__ for f in self.failed],
        }


def _gx() -> tuple[Any, Any]:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def build_expectations(
    *,
    columns: Sequence[str] | None = None,
    expected_rows: int | None = None,
    expected_requests: int | None = None,
    teams: Iterable[str] | None = None,
) -> list[Any]:
    """The expectations of the event dataset suite (GX 1.x Expectation objects)."""
    _, gxe = _gx()
    from great_expectations.expectations.row_conditions import Column

    task_rows = Column("event_type").is_in(list(TASK_EVENT_TYPES))
    exps: list[Any] = [gxe.ExpectColumnValuesToBeUnique(column="event_id")]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in KEY_COLUMNS]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c, row_condition=task_rows) for c in TASK_KEY_COLUMNS]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in CHAIN_COLUMNS]
    exps += [gxe.ExpectColumnValuesToBeUnique(column="seq")]
    exps += [
        gxe.ExpectColumnValuesToMatchRegex(column=c, regex="^[0-9a-f]{64}$") for c in ("prev_hash", "hash")
    ]
    exps += [
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="target_kind", value_set=[str(k) for k in kinds()]),
        gxe.ExpectColumnValuesToBeInSet(column="outcome", value_set=list(OUTCOMES)),
        gxe.ExpectColumnValuesToBeInSet(
            column="status",
            value_set=sorted(set(REQUEST_STATUSES) | set(TASK_STATUSES)),
            row_condition=Column("event_type") != "ack_received",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="status",
            value_set=list(ACK_OUTCOMES),
            row_condition=Column("event_type") == "ack_received",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="occurred_at",
            column_B="received_at",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="due_at", column_B="received_at", or_equal=True, ignore_row_if="either_value_is_missing"
        ),
        gxe.ExpectColumnValuesToBeBetween(column="attempt", min_value=0),
    ]
    if teams is not None:
        exps.append(
            gxe.ExpectColumnValuesToBeInSet(column="owner_team", value_set=sorted({*teams, UNKNOWN_TEAM}))
        )
    if columns is not None:
        exps.append(gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=True))
    if expected_rows is not None:
        exps.append(gxe.ExpectTableRowCountToEqual(value=int(expected_rows)))
    if expected_requests is not None:
        n = int(expected_requests)
        exps.append(
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="request_id", min_value=n, max_value=n)
        )
    return exps


def _columns_of(cfg_kwargs: dict[str, Any]) -> str:
    for keys in (("column",), ("column_A", "column_B"), ("column_list",), ("column_set",)):
        if all(k in cfg_kwargs for k in keys):
            vals = [cfg_kwargs[k] for k in keys]
            if keys in (("column_list",), ("column_set",)):
                return "table columns"
            return ", ".join(str(v) for v in vals)
    return "table"


def _safe_examples(column: str, values: list[Any] | None) -> list[Any]:
    """A few offending values for the report; never subject identifiers."""
    if not values or "subject" in column:
        return []
    out = []
    for v in values[:5]:
        out.append(str(v) if not isinstance(v, int | float | str | type(None)) else v)
    return out


def validate_events(
    frame: Any,
    *,
    expected_rows: int | None = None,
    expected_requests: int | None = None,
    teams: Iterable[str] | None = None,
    columns: Sequence[str] | None = None,
    raise_on_failure: bool = True,
) -> ValidationSummary:
    """Validate one batch (pandas DataFrame) with the event dataset suite; raise on failure."""
    gx, _ = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    name = f"erasure_events_{uuid.uuid4().hex[:8]}"
    batch_def = (
        ctx.data_sources.add_pandas(name)
        .add_dataframe_asset("event_batch")
        .add_batch_definition_whole_dataframe("whole_batch")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for exp in build_expectations(
        columns=columns, expected_rows=expected_rows, expected_requests=expected_requests, teams=teams
    ):
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite)
    )
    result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")

    failed: list[FailedExpectation] = []
    for res in result.results:
        if res.success:
            continue
        cfg = res.expectation_config
        kwargs = dict(cfg.kwargs)
        cols = _columns_of(kwargs)
        if kwargs.get("row_condition") is not None:
            cols += f" where {kwargs['row_condition']!r}"
        r = res.result or {}
        exc = (res.exception_info or {}) if isinstance(res.exception_info, dict) else {}
        failed.append(
            FailedExpectation(
                expectation=cfg.type,
                columns=cols,
                unexpected_count=r.get("unexpected_count"),
                observed=r.get("observed_value"),
                examples=_safe_examples(cols, r.get("partial_unexpected_list")),
                error=exc.get("exception_message") if exc.get("raised_exception") else None,
            )
        )
    stats = result.statistics or {}
    summary = ValidationSummary(
        success=bool(result.success),
        evaluated=int(stats.get("evaluated_expectations", len(result.results))),
        rows=len(frame),
        failed=failed,
        report=json.loads(json.dumps(result.to_json_dict(), default=str)),
    )
    if summary.success:
        log.info(summary.text())
    elif raise_on_failure:
        raise DataQualityError(summary)
    return summary
