"""Rows keyed by the subject, and how each of their columns is erased: the catalog part that the
``warehouse_delta`` and ``postgres_table`` kinds share.

::

    key_columns: [buyer_id, seller_id]   # a row is the subject's when ANY of them holds its id
    mode: mask                           # delete: the rows go (delete_row); mask: rows stay, fields change
    fields:
      email: {strategy: hash}            # keyed pseudonym (erasure.pseudonym): joins still work
      full_name: {strategy: constant, value: "[erased]"}
      birth_date: {strategy: null}
      buyer_id: {strategy: hash}         # key columns too, where rows are kept
    mask_columns: [notes]                # shorthand: {strategy: mask} ('[erased]' / NULL)

``key_column`` (one column) still works; with ``key_columns`` it defaults to the first. Each engine
turns a :class:`FieldRule` into its own expression (Spark in :mod:`erasure.warehouse`, SQL in
:mod:`erasure.targets.postgres_table`); what a rule leaves behind is checked the same way by both
(:meth:`FieldRule.erased_form`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from erasure.pseudonym import is_pseudonym
from erasure.targets.base import Spec
from erasure.vocab import FieldStrategy

COLUMN_RE = r"^[a-z][a-z0-9_]{0,62}$"
MASK_STRING = "[erased]"
Column = Annotated[str, Field(pattern=COLUMN_RE)]


class FieldRule(BaseModel):
    """One column's strategy (``constant`` needs ``value``; no other strategy takes one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: FieldStrategy
    value: str | None = None

    @model_validator(mode="after")
    def _value_only_for_constant(self) -> FieldRule:
        if self.strategy == FieldStrategy.DELETE_ROW:
            raise ValueError("strategy 'delete_row' is the mode 'delete', not a field strategy")
        if self.strategy == FieldStrategy.CONSTANT and self.value is None:
            raise ValueError("strategy 'constant' needs a value")
        if self.strategy != FieldStrategy.CONSTANT and self.value is not None:
            raise ValueError(f"strategy '{self.strategy}' takes no value")
        return self

    def erased_form(self, value: Any, *, is_string: bool) -> bool:
        """Whether ``value`` is what this rule leaves behind (the verification of a kept row)."""
        if self.strategy == FieldStrategy.NULL:
            return value is None
        if self.strategy == FieldStrategy.CONSTANT:
            return value is not None and str(value) == self.value
        if self.strategy == FieldStrategy.HASH:
            return value is None or is_pseudonym(value)
        return value is None or (is_string and value == MASK_STRING)  # mask


class KeyedRowsSpec(Spec):
    """Key columns, mode and field rules (see the module docstring)."""

    key_column: Column
    key_columns: list[Column] = Field(default_factory=list)
    mode: Literal["delete", "mask"] = "delete"
    mask_columns: list[Column] = Field(default_factory=list)
    fields: dict[Column, FieldRule] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            keys, key = data.get("key_columns") or [], data.get("key_column")
            if not keys and not key:
                raise ValueError("key_column (or key_columns) is required")
            if keys and key and key not in keys:
                raise ValueError(f"key_column '{key}' must be one of key_columns {keys}")
            if keys and not key:
                data["key_column"] = keys[0]
            if not keys:
                data["key_columns"] = [key]
        return data

    @model_validator(mode="after")
    def _rules(self) -> KeyedRowsSpec:
        if len(set(self.key_columns)) != len(self.key_columns):
            raise ValueError(f"key_columns has duplicates: {self.key_columns}")
        if self.mode == "delete" and (self.fields or self.mask_columns):
            raise ValueError("fields/mask_columns apply only when rows are kept (mode: mask)")
        if self.mode == "mask":
            if not self.rules():
                raise ValueError("mode 'mask' needs fields or mask_columns")
            both = set(self.mask_columns) & set(self.fields)
            if both:
                raise ValueError(f"columns {sorted(both)} are in both mask_columns and fields")
            for c in self.key_columns:
                rule = self.rules().get(c)
                if rule is not None and rule.strategy == FieldStrategy.MASK:
                    raise ValueError(
                        f"key column '{c}': use strategy hash, null or constant (mask would leave "
                        "'[erased]' in a key)"
                    )
        return self

    def rules(self) -> dict[str, FieldRule]:
        """Every column's rule (``mask_columns`` as ``mask``), in catalog order."""
        out = {c: FieldRule(strategy=FieldStrategy.MASK) for c in self.mask_columns}
        out.update(self.fields)
        return out

    def strategies(self) -> dict[str, str]:
        """The evidence: the strategy per column (``{"*": "delete_row"}`` for mode delete)."""
        if self.mode == "delete":
            return {"*": FieldStrategy.DELETE_ROW.value}
        return {c: r.strategy.value for c, r in self.rules().items()}
