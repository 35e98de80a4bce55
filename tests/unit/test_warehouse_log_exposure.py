"""Identifiers in a warehouse table's ``_delta_log`` (issue 18's warehouse part, issue 21's files): the
per-table warnings of ``catalog validate --check-tables`` and of the warehouse job's preflight,
:func:`erasure.warehouse.log_exposure_warnings` (pure: no Spark; the integration test
tests/integration/test_warehouse_by_name.py sees them on a real table)."""

from __future__ import annotations

import pytest

from erasure.catalog import load_catalog
from erasure.targets.warehouse_delta import WarehouseDeltaSpec
from erasure.warehouse import (
    INDEXED_COLS_PROP,
    LOG_RETENTION_PROP,
    STATS_COLUMNS_PROP,
    interval_days,
    log_exposure_warnings,
    log_properties,
    sla_days_for,
    stats_columns,
)
from tests.conftest import ROOT

ORDERS_COLUMNS = ["order_id", "customer_id", "email", "shipping_address", "amount", "ordered_at"]


@pytest.fixture(scope="module")
def demo():
    return load_catalog(ROOT / "include" / "catalog")


@pytest.fixture(scope="module")
def orders(demo):
    t = demo.target("wh_orders")
    return t, t.spec_as(WarehouseDeltaSpec)


def _warnings(orders, properties, columns=ORDERS_COLUMNS, sla=30, partitions=()):
    target, spec = orders
    return log_exposure_warnings(
        target, spec, columns=columns, properties=properties, sla_days=sla, partition_columns=partitions
    )


def test_default_properties_warn_per_personal_column_naming_table_column_and_fix(orders):
    # a table as Spark creates it: no statistics settings (first 32 columns), default log retention 30 days
    w = _warnings(orders, {})
    assert len(w) == 3, w  # customer_id (key), shipping_address, email; 30 days is not longer than 30
    for column, line in zip(["customer_id", "shipping_address", "email"], w, strict=True):
        assert line.startswith(f"target 'wh_orders', table 'orders': personal/key column '{column}' "), line
        assert "min/max statistics in _delta_log" in line and f"{STATS_COLUMNS_PROP} unset" in line, line
        assert (
            "fix: ALTER TABLE delta.`orders` SET TBLPROPERTIES "
            "('delta.dataSkippingStatsColumns' = 'order_id,amount,ordered_at')" in line
        ), line


def test_compliant_table_is_silent(orders):
    target, spec = orders
    props = log_properties(target, spec, ORDERS_COLUMNS)  # what the job's harden_log sets
    assert props == {
        LOG_RETENTION_PROP: "interval 7 days",
        STATS_COLUMNS_PROP: "order_id,amount,ordered_at",
    }
    assert _warnings(orders, props) == []
    # statistics off entirely, retention at the SLA: silent too
    assert _warnings(orders, {INDEXED_COLS_PROP: "0", LOG_RETENTION_PROP: "interval 30 days"}) == []
    # personal columns past the first N indexed columns get no statistics
    assert _warnings(orders, {INDEXED_COLS_PROP: "1"}) == []


def test_listed_stats_column_and_long_log_retention_warn(orders):
    w = _warnings(orders, {STATS_COLUMNS_PROP: "order_id, email", LOG_RETENTION_PROP: "interval 8 weeks"})
    assert len(w) == 2, w
    assert "personal/key column 'email'" in w[0] and f"listed in {STATS_COLUMNS_PROP}" in w[0], w
    assert w[1] == (
        "target 'wh_orders', table 'orders': delta.logRetentionDuration is 'interval 8 weeks', longer than "
        "the erasure SLA of 30 days; fix: ALTER TABLE delta.`orders` SET TBLPROPERTIES "
        "('delta.logRetentionDuration' = 'interval 7 days')"
    ), w
    # the default retention (30 days) is longer than a 14-day SLA
    [line] = _warnings(orders, {INDEXED_COLS_PROP: "0"}, sla=14)
    assert "delta.logRetentionDuration is unset (default 30 days), longer than the erasure SLA of 14" in line
    # -1: every column has statistics; all three personal columns warn
    assert len(_warnings(orders, {INDEXED_COLS_PROP: "-1", LOG_RETENTION_PROP: "7 days"})) == 3


def test_nested_and_partition_columns(orders):
    # a struct's leaves count one by one; a personal struct column is exposed through any of its leaves
    cols = ["order_id", "shipping_address.street", "shipping_address.city", "amount"]
    w = _warnings(
        orders, {STATS_COLUMNS_PROP: "shipping_address", LOG_RETENTION_PROP: "interval 7 days"}, cols
    )
    assert [x.split(": ")[1] for x in w] == [
        "personal/key column 'shipping_address' has min/max statistics in _delta_log (listed in delta.dataSkippingStatsColumns); fix"
    ], w  # noqa: E501
    # a key column used as partition column is in every log entry's partitionValues
    w = _warnings(orders, {INDEXED_COLS_PROP: "0"}, ["order_id", "amount"], partitions=["customer_id"])
    assert len(w) == 1 and "'customer_id' is a partition column" in w[0], w


def test_stats_columns_and_intervals():
    cols = [f"c{i}" for i in range(40)]
    assert stats_columns(cols, {}) == cols[:32]
    assert stats_columns(cols, {INDEXED_COLS_PROP: "3"}) == ["c0", "c1", "c2"]
    assert stats_columns(cols, {STATS_COLUMNS_PROP: "c39,`c5`", INDEXED_COLS_PROP: "0"}) == ["c5", "c39"]
    assert interval_days("interval 30 days") == 30
    assert interval_days("720 hours") == 30
    assert interval_days("interval 1 week 2 days") == 9
    assert interval_days("interval 1 month") is None and interval_days("soon") is None


def test_sla_is_the_shortest_that_applies(demo, orders):
    assert sla_days_for(demo, orders[0]) == 30  # GDPR 30, CCPA 45, catalog 30
    assert sla_days_for(demo, orders[0].model_copy(update={"sla_days": 10})) == 10
