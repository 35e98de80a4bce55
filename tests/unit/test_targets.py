"""The target-kind registry: every kind implements every operation, and the catalog is built from it."""

from __future__ import annotations

import inspect
import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from erasure.catalog import CatalogError, load_catalog
from erasure.targets import TargetAdapter, adapter, kinds, kinds_run_by, register
from erasure.targets.base import OPERATIONS, Spec
from erasure.vocab import Runner, TargetKind

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_kinds_are_registered():
    assert set(kinds()) == {k.value for k in TargetKind}
    assert kinds_run_by(Runner.DISPATCH) == ["postgres_table", "sync_api"]
    assert kinds_run_by(Runner.OUTBOX) == ["kafka"]
    assert kinds_run_by(Runner.SPARK) == ["warehouse_delta"]


@pytest.mark.parametrize("kind", [k.value for k in TargetKind])
def test_every_kind_implements_every_operation(kind):
    a = adapter(kind)
    assert a.kind == kind
    assert issubclass(a.spec_model, Spec)
    assert isinstance(a.runner, Runner)
    assert not inspect.isabstract(type(a)), f"{kind}: abstract operations left"
    for op in OPERATIONS:
        method = getattr(type(a), op, None)
        assert callable(method), f"kind '{kind}' lacks operation {op}"
        # the operation's signature is the interface's (same parameter names)
        assert list(inspect.signature(method).parameters) == list(
            inspect.signature(getattr(TargetAdapter, op)).parameters
        ), f"kind '{kind}': {op} does not match the interface"


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown target kind 'ftp'.*sync_api"):
        adapter("ftp")


def test_a_second_adapter_for_a_kind_is_refused():
    class Twin(type(adapter("sync_api"))):  # type: ignore[misc]
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register(Twin)


def _catalog(tmp_path: Path, target: str) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(
        textwrap.dedent(
            """
            pipeline_owner: privacy
            subject_types: [{name: customer}]
            teams: [{name: privacy}]
            targets:
            """
        )
        + textwrap.indent(textwrap.dedent(target), "  "),
        encoding="utf-8",
    )
    return p


def test_section_is_validated_by_the_kinds_spec_model(tmp_path):
    cat = load_catalog(
        _catalog(
            tmp_path,
            """
            - name: hr
              kind: postgres_table
              owner: privacy
              subject_types: [customer]
              identity_key: employee_id
              postgres_table: {table: hr.directory, key_column: employee_id}
            """,
        )
    )
    t = cat.target("hr")
    spec = t.spec_as(adapter("postgres_table").spec_model)
    assert spec.table == "hr.directory"
    with pytest.raises(ValueError, match="is of kind 'postgres_table', not 'sync_api'"):
        t.spec_as(adapter("sync_api").spec_model)
    assert adapter("postgres_table").batch_size(t) == 1000 and adapter("postgres_table").pool_slots(t) == 1


def test_section_of_another_kind_is_refused(tmp_path):
    with pytest.raises(CatalogError, match="must not have section"):
        load_catalog(
            _catalog(
                tmp_path,
                """
                - name: hr
                  kind: postgres_table
                  owner: privacy
                  subject_types: [customer]
                  identity_key: employee_id
                  postgres_table: {table: hr.directory, key_column: employee_id}
                  sync_api: {base_url: "http://x"}
                """,
            )
        )


def test_kind_checks_run_on_the_section(tmp_path):
    with pytest.raises(
        CatalogError, match="field 'warehouse_delta'.*mode 'mask' needs mask_columns|mode 'mask' needs"
    ):
        load_catalog(
            _catalog(
                tmp_path,
                """
                - name: wh
                  kind: warehouse_delta
                  owner: privacy
                  subject_types: [customer]
                  identity_key: customer_id
                  warehouse_delta: {table: t, path: t, key_column: customer_id, mode: mask}
                """,
            )
        )


def test_ack_timeout_only_for_acknowledged_kinds():
    cat = load_catalog(ROOT / "include" / "catalog")
    kafka = next(t for t in cat.targets if t.kind == "kafka")
    assert adapter("kafka").ack_timeout(kafka) == timedelta(minutes=kafka.spec.ack_timeout_minutes)
    for t in cat.targets:
        if t.kind != "kafka":
            assert adapter(t.kind).ack_timeout(t) is None


def test_one_retry_policy_exponential_and_capped():
    cat = load_catalog(ROOT / "include" / "catalog")
    for t in cat.targets:
        b = t.retry_backoff_minutes
        assert [t.retry_delay(n) for n in (1, 2, 3)] == [timedelta(minutes=b * m) for m in (1, 2, 4)]
        assert t.retry_delay(0) == timedelta(minutes=b)
        assert t.retry_delay(60) == timedelta(days=1)


def test_evidence_summaries_name_what_happened():
    assert "HTTP 204 deleted" in adapter("sync_api").evidence_summary(
        {"http_status": 204, "outcome": "deleted", "response_id": "r1", "idempotency_key": "k"}
    )
    assert "3 row(s) from hr.directory" in adapter("postgres_table").evidence_summary(
        {"rows_deleted": 3, "outcome": "deleted", "table": "hr.directory"}
    )
    ack = {"outcome": "erased", "acked_at": "2026-12-01T10:11:12", "topic": "t", "partition": 0, "offset": 5}
    assert "ack 'erased' at 10:11:12" in adapter("kafka").evidence_summary(
        {"ack": ack, "event_id": "abcdefgh1"}
    )
    assert "deleted 7 rows" in adapter("warehouse_delta").evidence_summary(
        {"delete_version": 3, "num_deleted_rows": 7, "batch_subjects": 2, "purge": "reorg_purge"}
    )
    # evidence an adapter has no special line for: its first fields, never the claim
    assert adapter("kafka").evidence_summary({"claim": "x", "event_id": "e1"}) == "event_id=e1"


def test_no_branching_on_target_kind_outside_the_adapters():
    """Stages ask the registry; only erasure/targets/ knows what a kind does."""
    offenders = []
    for path in (ROOT / "include" / "erasure").rglob("*.py"):
        if "targets" in path.relative_to(ROOT / "include" / "erasure").parts:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"kind (==|!=|in \(|not in \()\s*[\x27\"(]", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
