"""How a subject identifier is shown to people (the Erasure view, review tasks): masked, never in clear."""

from __future__ import annotations


def mask(identifier: str | None) -> str:
    """``cus_8f3k2j9xq1`` -> ``cus_••••q1``: a type prefix (up to the first ``_`` in the first 6
    characters) and the last two characters of a long enough id; nothing else."""
    if not identifier:
        return ""
    s = str(identifier)
    cut = s.find("_")
    prefix = s[: cut + 1] if 0 <= cut < 6 else ""
    rest = s[len(prefix) :]
    tail = rest[-2:] if len(rest) >= 8 else ""
    return f"{prefix}{'•' * 4}{tail}"
