"""Simulators of the systems behind the catalog's targets: an HTTP partner per ``sync_api`` target
(:mod:`.http_service`, started by :mod:`.run`) and a consumer per ``kafka`` target (:mod:`.kafka_partner`),
each with its own store and admin endpoints (``/healthz``, ``/admin/seed``, ``/admin/stats``,
``/admin/faults``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from erasure.catalog import Target

# where each simulator serves HTTP: the field of the kind's catalog section holding its URL
_URL_FIELD = {"sync_api": "base_url", "kafka": "lookup_url"}


def partner_url(target: Target) -> str | None:
    """The URL (no trailing ``/``) at which the demo's simulator of ``target`` serves HTTP, or ``None``
    when no simulator plays the target (or a Kafka partner has no ``lookup_url``)."""
    field = _URL_FIELD.get(target.kind)
    url = getattr(target.spec, field, None) if field else None
    return url.rstrip("/") if url else None
