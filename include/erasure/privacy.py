"""Keep raw identifiers out of what the pipeline records: evidence, errors and the audit log.

A target's answer may echo the identifier it was asked about (``GET /subjects/cus_123 -> 404``, an
HTTP client error naming the URL). Evidence and errors are written to ``erasure.task`` and copied by
the store's triggers into the hash-chained audit log, which is never rewritten, so they are scrubbed
*before* they are written: every occurrence of a value being erased is replaced by its masked form
(:func:`erasure.identifiers.mask`). The retention job (:mod:`erasure.retention`) scrubs again with
the same function, for rows written by older versions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from erasure.identifiers import mask

T = TypeVar("T")

MIN_SCRUB_LENGTH = 3
"""Values shorter than this are not scrubbed (a 1-2 character id would mangle every number)."""


Values = Iterable[str | None] | Mapping[str, str]
"""The values to scrub; a mapping gives each its replacement (default: its mask)."""


def _needles(values: Values) -> list[tuple[str, str]]:
    if isinstance(values, Mapping):
        out = {str(k): str(v) for k, v in values.items() if k is not None and len(str(k)) >= MIN_SCRUB_LENGTH}
    else:
        out = {str(v): mask(str(v)) for v in values if v is not None and len(str(v)) >= MIN_SCRUB_LENGTH}
    # longest first: a value that contains another is replaced whole
    return sorted(out.items(), key=lambda kv: -len(kv[0]))


def _pattern(needles: list[tuple[str, str]]) -> re.Pattern[str]:
    # one pass, longest first: a replacement is never scanned again, a value inside another is not split
    return re.compile("|".join(re.escape(raw) for raw, _ in needles))


def _replacer(needles: list[tuple[str, str]]) -> Callable[[str], str]:
    """A function replacing every needle in a string: ``str.replace`` for one needle (the usual case: one
    identifier per task), one compiled alternation for several, compiled only when a string holds one."""
    if len(needles) == 1:
        raw, rep = needles[0]
        return lambda s: s.replace(raw, rep) if raw in s else s
    table = dict(needles)
    raws = [raw for raw, _ in needles]
    pattern: re.Pattern[str] | None = None

    def sub(s: str) -> str:
        nonlocal pattern
        if not any(raw in s for raw in raws):
            return s
        if pattern is None:
            pattern = _pattern(needles)
        return pattern.sub(lambda m: table[m.group(0)], s)

    return sub


def scrub_text(text: str, values: Values) -> str:
    """``text`` with every value of ``values`` replaced by its mask (or its replacement)."""
    needles = _needles(values)
    if not needles:
        return text
    return _replacer(needles)(text)


def scrub(obj: T, values: Values) -> T:
    """A copy of ``obj`` (JSON-like: dicts, lists, strings, numbers) with every value of ``values``
    replaced by its mask (or its replacement, for a mapping) in every string, keys included."""
    needles = _needles(values)
    if not needles:
        return obj
    sub = _replacer(needles)

    def walk(o: Any) -> Any:
        if isinstance(o, str):
            return sub(o)
        if isinstance(o, dict):
            return {(sub(k) if isinstance(k, str) else k): walk(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [walk(v) for v in o]
        return o

    result: T = walk(obj)
    return result


def contains_any(obj: Any, values: Values) -> bool:
    """Whether any string in ``obj`` still holds one of ``values`` (checks and tests)."""
    needles = [raw for raw, _ in _needles(values)]
    if not needles:
        return False

    def walk(o: Any) -> bool:
        if isinstance(o, str):
            return any(n in o for n in needles)
        if isinstance(o, dict):
            return any(walk(k) or walk(v) for k, v in o.items())
        if isinstance(o, list | tuple):
            return any(walk(v) for v in o)
        return False

    return walk(obj)
