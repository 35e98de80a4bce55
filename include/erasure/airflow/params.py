"""Airflow ``Param``s of the erasure DAGs, and reading a number from a Param or a Variable.

:func:`intake_params` declares the conf of ``erasure_intake`` (one request, or a batch under
``requests``) from the JSON schemas of :mod:`erasure.intake`, which come from the catalog (subject
types, jurisdictions, id patterns). Airflow checks a triggered run's conf against them and refuses a
bad one with HTTP 400 before any task runs; the UI renders them as the trigger form.
``erasure.intake`` validates again when registering (per-type id patterns, payload size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Param

if TYPE_CHECKING:
    from erasure.catalog import Catalog

# (title, description) of each single-request field, in the order the trigger form shows them.
_INTAKE_FIELDS: dict[str, tuple[str, str]] = {
    "subject_type": ("Subject type", "Kind of data subject."),
    "subject_id": ("Subject id", "The subject's id, e.g. cus_8f3k2j."),
    "requested_by": ("Requested by", "Who submits the request (user or system)."),
    "external_id": ("External request id", "Your ticket id / idempotency key; generated when empty."),
    "reason": ("Reason", "Free text (optional)."),
    "jurisdiction": ("Jurisdiction", "Sets the SLA; default GDPR (30 days)."),
    "identifiers": (
        "Identifiers",
        'Instead of (or with) the subject id: {"email": "ann@example.com"}; types from the catalog.',
    ),
}


def _nullable(schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``schema`` that also accepts null (the field may stay empty when a batch is given)."""
    out = {**schema, **extra, "type": ["null", schema["type"]]}
    if "enum" in out:
        out["enum"] = [None, *out["enum"]]
    return out


def form_defaults(catalog: Catalog) -> dict[str, str]:
    """What the trigger form's selects start at (not "null"): the catalog's first subject type and the
    default jurisdiction, so the single-request form is usable without touching them."""
    from erasure.intake import DEFAULT_JURISDICTION, allowed_jurisdictions

    out: dict[str, str] = {}
    if catalog.subject_types:
        out["subject_type"] = catalog.subject_types[0].name
    jurisdictions = allowed_jurisdictions(catalog)
    out["jurisdiction"] = DEFAULT_JURISDICTION if DEFAULT_JURISDICTION in jurisdictions else jurisdictions[0]
    return out


def conf_without_form_defaults(conf: dict[str, Any], defaults: dict[str, str]) -> dict[str, Any]:
    """A batch submitted through the trigger form also carries the selects' defaults (and empty single
    fields): drop those when no single request is given (no ``subject_id``), so the batch is not taken
    for a mix of batch and single request. Any other conf is returned as it is."""
    if not conf.get("requests") or conf.get("subject_id") or conf.get("identifiers"):
        return conf
    return {
        k: v
        for k, v in conf.items()
        if k == "requests" or not (v is None or v == "" or (k in defaults and v == defaults[k]))
    }


def intake_params(catalog: Catalog) -> dict[str, Param]:
    """The ``params`` of ``erasure_intake``: the single-request fields (nullable; the selects start at
    :func:`form_defaults`) and ``requests``."""
    from erasure.intake import MAX_BATCH, field_schemas, request_item_schema

    fields = field_schemas(catalog)
    defaults = form_defaults(catalog)
    params = {
        name: Param(defaults.get(name), **_nullable(fields[name], title=title, description=description))
        for name, (title, description) in _INTAKE_FIELDS.items()
        if name != "identifiers" or catalog.has_identity
    }
    params["requests"] = Param(
        None,
        type=["null", "array"],
        items=request_item_schema(catalog),
        minItems=1,
        maxItems=MAX_BATCH,
        title="Batch of requests",
        description="A list of request objects (same fields as above); leave the single fields empty.",
    )
    return params


def minutes(params: dict[str, Any], name: str, *, variable: str, default: int) -> int:
    """A number of minutes: Param ``name`` if set, else the Airflow Variable ``variable``, else ``default``.

    Raises ``ValueError`` naming the Param when the value is not a whole number >= 0.
    """
    from airflow.sdk import Variable

    value = params.get(name)
    if value is None:
        value = Variable.get(variable, default=default)
    try:
        value = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be an integer number of minutes, got {value!r}") from exc
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value
