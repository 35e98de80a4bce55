"""Target kinds: one adapter module per kind behind one interface (``base``), found by ``registry``."""

from erasure.targets.base import CheckResult, Claimed, Context, Outcome, Spec, TargetAdapter, TargetError
from erasure.targets.registry import adapter, adapter_for, kinds, kinds_run_by, register, spec_model

__all__ = [
    "CheckResult",
    "Claimed",
    "Context",
    "Outcome",
    "Spec",
    "TargetAdapter",
    "TargetError",
    "adapter",
    "adapter_for",
    "kinds",
    "kinds_run_by",
    "register",
    "spec_model",
]
