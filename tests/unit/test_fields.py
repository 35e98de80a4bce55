"""Catalog rules shared by warehouse and Postgres targets: key columns, mode, field strategies; pseudonyms."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import ValidationError

from erasure.pseudonym import PREFIX, hmac_pads, is_pseudonym, keyed_hash
from erasure.targets.fields import FieldRule, KeyedRowsSpec


def spec(**kw):
    return KeyedRowsSpec.model_validate(kw)


def test_key_column_and_key_columns():
    assert spec(key_column="customer_id").key_columns == ["customer_id"]
    two = spec(key_columns=["buyer_id", "seller_id"])
    assert two.key_column == "buyer_id" and two.key_columns == ["buyer_id", "seller_id"]
    with pytest.raises(ValidationError, match="key_column 'x' must be one of key_columns"):
        spec(key_column="x", key_columns=["a", "b"])
    with pytest.raises(ValidationError, match="key_column .or key_columns. is required"):
        spec()
    with pytest.raises(ValidationError, match="duplicates"):
        spec(key_columns=["a", "a"])


def test_field_rules_and_their_evidence():
    s = spec(
        key_columns=["customer_id", "referrer_id"],
        mode="mask",
        mask_columns=["notes"],
        fields={
            "email": {"strategy": "hash"},
            "full_name": {"strategy": "constant", "value": "n/a"},
            "birth_date": {"strategy": "null"},
            "customer_id": {"strategy": "hash"},
        },
    )
    assert s.strategies() == {
        "notes": "mask",
        "email": "hash",
        "full_name": "constant",
        "birth_date": "null",
        "customer_id": "hash",
    }
    assert spec(key_column="k").strategies() == {"*": "delete_row"}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mode": "delete", "fields": {"a": {"strategy": "null"}}}, "apply only when rows are kept"),
        ({"mode": "mask"}, "needs fields or mask_columns"),
        ({"mode": "mask", "fields": {"a": {"strategy": "constant"}}}, "'constant' needs a value"),
        ({"mode": "mask", "fields": {"a": {"strategy": "null", "value": "x"}}}, "'null' takes no value"),
        ({"mode": "mask", "fields": {"a": {"strategy": "delete_row"}}}, "is the mode 'delete'"),
        ({"mode": "mask", "fields": {"a": {"strategy": "scramble"}}}, "strategy"),
        ({"mode": "mask", "mask_columns": ["k"]}, "key column 'k': use strategy hash, null or constant"),
        ({"mode": "mask", "mask_columns": ["a"], "fields": {"a": {"strategy": "null"}}}, "both"),
        ({"mode": "erase"}, "mode"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(kw, message):
    with pytest.raises(ValidationError, match=message):
        spec(key_column="k", **kw)


def test_erased_forms():
    assert FieldRule(strategy="null").erased_form(None, is_string=True)
    assert not FieldRule(strategy="null").erased_form("x", is_string=True)
    assert FieldRule(strategy="constant", value="0").erased_form(0, is_string=False)
    assert FieldRule(strategy="mask").erased_form("[erased]", is_string=True)
    assert not FieldRule(strategy="mask").erased_form("[erased]", is_string=False)
    assert FieldRule(strategy="hash").erased_form(keyed_hash(b"k" * 32, "a@b.c"), is_string=True)
    assert not FieldRule(strategy="hash").erased_form("a@b.c", is_string=True)


def test_pseudonym_pads_are_rfc2104_hmac():
    """The engines' formula (outer/inner padded keys and two SHA-256) is HMAC-SHA256, for any key length."""
    for key in (b"k" * 32, bytes(range(64)), b"x" * 100):
        inner, outer = hmac_pads(key)
        for value in ("cus_123", "é€😀", ""):
            manual = hashlib.sha256(outer + hashlib.sha256(inner + value.encode()).digest()).hexdigest()
            assert PREFIX + manual == keyed_hash(key, value)
            assert keyed_hash(key, value) == PREFIX + hmac.new(key, value.encode(), "sha256").hexdigest()
    assert is_pseudonym(keyed_hash(b"k" * 32, "x"))
    assert not is_pseudonym(PREFIX + "z" * 64) and not is_pseudonym("cus_1") and not is_pseudonym(None)


def test_warehouse_log_retention_is_between_7_and_30_days():
    from erasure.targets.warehouse_delta import WarehouseDeltaSpec

    base = {"table": "t", "path": "t", "key_column": "k"}
    assert WarehouseDeltaSpec.model_validate(base).log_retention_days == 7
    for bad in (5, 31):
        with pytest.raises(ValidationError, match="log_retention_days"):
            WarehouseDeltaSpec.model_validate({**base, "log_retention_days": bad})
