"""The data catalog: where personal data lives, how each target is erased, and who owns it.

A catalog is one or more YAML files (a file or a directory of ``*.yaml``). Every target names its
kind (``sync_api``, ``kafka``, ``warehouse_delta``, ``postgres_table``), its owner team, the alert
channel of that team, the SLA and the identity key it is erased by. A bad catalog raises
``CatalogError`` naming the file, the target and the field.

Values may reference the environment as ``${NAME}`` or ``${NAME:-default}`` (e.g. partner URLs), so
the same catalog serves the demo, tests and production without secrets in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

if TYPE_CHECKING:
    from erasure.targets.base import Spec

NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"
MAX_RETRY_DELAY = timedelta(days=1)
_S = TypeVar("_S", bound="Spec")
_ENV_RE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or invalid; the message names file, target and field."""


def _valid_regex(v: str) -> str:
    """A catalog pattern: it must compile (the error names the problem)."""
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubjectType(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$"
    description: str = ""
    id_type: Annotated[str, Field(pattern=NAME_RE)] | None = None
    """The identifier type a request's ``subject_id`` is (catalogs with ``identifier_types``; default:
    ``<name>_id`` if declared, else the subject type's first identifier type)."""
    request_identifiers: list[str] | None = None
    """Identifier types a request may carry (default: every identifier type of the subject type); the
    catalog is checked so that every target is reachable from each of them."""

    _compiles = field_validator("id_pattern")(classmethod(lambda cls, v: _valid_regex(v)))

    @cached_property
    def id_regex(self) -> re.Pattern[str]:
        return re.compile(self.id_pattern)


class IdentifierType(_Model):
    """One kind of identifier a person may be known by (``customer_id``, ``email``, ``phone``, ...):
    how a value is normalised before it is compared or stored (:func:`erasure.identity.normalise`) and
    the pattern the normalised value must match."""

    name: Annotated[str, Field(pattern=NAME_RE)]
    pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$"
    normalize: Literal["trim", "lower", "email", "e164"] = "trim"
    """``trim``: surrounding blanks removed; ``lower``: and lower-cased; ``email``: trimmed and
    lower-cased; ``e164``: spaces, dashes, dots and brackets removed, a leading ``00`` becomes ``+``."""
    subject_types: list[str] = Field(default_factory=list)
    """Subject types that may have it (empty: every subject type)."""
    description: str = ""

    _compiles = field_validator("pattern")(classmethod(lambda cls, v: _valid_regex(v)))

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)

    def applies_to(self, subject_type: str) -> bool:
        return not self.subject_types or subject_type in self.subject_types


class Resolver(_Model):
    """A lookup that maps identifiers of one type to others (``email`` -> ``customer_id``, ``phone``),
    answered by a catalog target's system through its adapter's ``resolve`` (erasure.resolution)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: Annotated[str, Field(pattern=NAME_RE)]
    target: str
    """The catalog target whose system is asked (its owner is alerted when it is down)."""
    from_type: Annotated[str, Field(alias="from")]
    to: list[str] = Field(min_length=1)
    optional: bool = False
    """``true``: a request may go on without this resolver's answer once it escalated."""
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 500
    options: dict[str, str] = Field(default_factory=dict)
    """Kind-specific settings, checked by the target's adapter (``path`` of a ``sync_api`` lookup;
    ``table`` and ``columns.<type>`` of a ``postgres_table`` lookup)."""


class Team(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    channel: Annotated[str, Field(pattern=r"^(log|webhook|email):.*$")] = "log:"
    """``log:``, ``webhook:<url>`` or ``email:<address>``."""


class Target(_Model):
    """One place personal data lives. ``kind`` names its adapter (``erasure.targets``), and the section
    of the same name (``sync_api: {...}``) holds the kind's own settings, validated by the adapter's
    ``spec_model`` and available as :attr:`spec`."""

    name: Annotated[str, Field(pattern=NAME_RE)]
    kind: str
    owner: str
    description: str = ""
    subject_types: list[str] = Field(min_length=1)
    identity_key: Annotated[str, Field(pattern=NAME_RE)]
    """The (first) identifier type the target is erased by; a YAML list gives several (``identity_keys``)."""
    identity_keys: list[Annotated[str, Field(pattern=NAME_RE)]] = Field(default_factory=list)
    """Every identifier type the target is erased by (catalogs with ``identifier_types`` check them)."""
    personal_data: list[str] = Field(default_factory=list)
    sla_days: Annotated[int, Field(ge=1, le=365)] | None = None
    """The target's own deadline, counted from the request's receipt; past it while the target's task
    is not done, reconcile alerts the owner team (``target_sla_breached``)."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    retry_backoff_minutes: Annotated[float, Field(gt=0)] = 1.0
    """Wait after the first failure (doubling after each further one, see :meth:`retry_delay`): a
    one-minute default lets a short partner outage heal within minutes; with the default
    ``max_attempts`` a target keeps trying for about a quarter of an hour before it escalates."""
    enabled: bool = True
    verifiable: bool = True
    """Whether the target can be asked, after its erasure, that the subject is gone (its adapter's
    ``verify``). ``false``: every task's evidence says ``not_verifiable`` with ``verification_note``."""
    verification_note: str = ""
    """Why the target cannot be asked (required when ``verifiable`` is false)."""
    spec: Any = None
    """The kind's section (a ``Spec`` model); set from the section named after ``kind``."""

    @model_validator(mode="before")
    @classmethod
    def _section_to_spec(cls, data: Any) -> Any:
        from erasure.targets.registry import kinds

        if not isinstance(data, dict) or "spec" in data:
            return data
        keys = data.get("identity_key")
        if isinstance(keys, list):  # identity_key: [customer_id, device_id]
            if not keys:
                raise ValueError("identity_key: an empty list; name at least one identifier type")
            data = {**data, "identity_key": keys[0], "identity_keys": keys}
        elif isinstance(keys, str) and not data.get("identity_keys"):
            data = {**data, "identity_keys": [keys]}
        kind = data.get("kind")
        known = kinds()
        if not isinstance(kind, str) or kind not in known:
            raise ValueError(f"kind: unknown target kind {kind!r} (known: {known})")
        data = dict(data)
        if data.get(kind) is None:
            raise ValueError(f"kind '{kind}' needs a '{kind}' section")
        extra = [k for k in known if k != kind and k in data]
        if extra:
            raise ValueError(f"kind '{kind}' must not have section(s) {extra}")
        data["spec"] = data.pop(kind)
        return data

    @field_validator("spec", mode="wrap")
    @classmethod
    def _validate_spec(cls, value: Any, handler: Any, info: Any) -> Any:
        from erasure.targets.registry import spec_model

        kind = info.data.get("kind")
        if kind is None:
            return value
        model = spec_model(kind)
        return value if isinstance(value, model) else model.model_validate(value)

    @model_serializer(mode="wrap")
    def _spec_as_section(self, handler: Any) -> Any:
        """Dump the kind's section under its own name, as in the YAML (so a dump loads again)."""
        data = handler(self)
        if isinstance(data, dict) and "spec" in data:
            data[self.kind] = data.pop("spec")
        if isinstance(data, dict) and data.get("identity_keys") == [data.get("identity_key")]:
            data.pop("identity_keys")
        return data

    @model_validator(mode="after")
    def _spec_checks(self) -> Target:
        self.spec.validate_for(self.name)
        if not self.verifiable and not self.verification_note.strip():
            raise ValueError("verifiable: false needs a verification_note saying why it cannot be asked")
        return self

    def spec_as(self, model: type[_S]) -> _S:
        """The kind's section as ``model`` (a ``ValueError`` if this target is of another kind)."""
        if not isinstance(self.spec, model):
            from erasure.targets.registry import kind_of_spec

            raise ValueError(f"target '{self.name}' is of kind '{self.kind}', not '{kind_of_spec(model)}'")
        return self.spec

    @property
    def pool(self) -> str:
        """The Airflow pool that bounds this target's concurrent task instances."""
        return f"erasure_{self.name}"

    def retry_delay(self, attempts: int) -> timedelta:
        """The one retry policy: wait after the ``attempts``-th failed attempt before the next one,
        ``retry_backoff_minutes * 2**(attempts - 1)``, capped at :data:`MAX_RETRY_DELAY`. Used by dispatch,
        reconcile and the warehouse job alike."""
        minutes = self.retry_backoff_minutes * (2 ** max(0, min(attempts - 1, 20)))
        return min(timedelta(minutes=minutes), MAX_RETRY_DELAY)


class Review(_Model):
    """Which requests a person approves before anything is erased (the ``erasure_review`` DAG's
    human-in-the-loop task): any request of one of ``subject_types`` or ``jurisdictions``."""

    subject_types: list[str] = Field(default_factory=list)
    jurisdictions: list[str] = Field(default_factory=list)

    def rule_for(self, subject_type: str, jurisdiction: str | None) -> str | None:
        """Why a request needs review (the matching rule), or None."""
        if subject_type in self.subject_types:
            return f"subject type {subject_type}"
        if jurisdiction and jurisdiction in self.jurisdictions:
            return f"jurisdiction {jurisdiction}"
        return None


class Catalog(_Model):
    version: Literal[1] = 1
    sla_days: Annotated[int, Field(ge=1, le=365)] = 30
    jurisdiction_sla_days: dict[str, Annotated[int, Field(ge=1, le=365)]] = Field(default_factory=dict)
    pipeline_owner: str = "privacy"
    subject_types: list[SubjectType] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
    review: Review = Field(default_factory=Review)
    identifier_types: list[IdentifierType] = Field(default_factory=list)
    """Declared: requests may carry any of them, targets are erased by their own (``identity_key``), and
    ``resolvers`` map one to others (docs/identity.md). Empty: every target is erased by the request's
    ``subject_id`` (the catalog's ``identity_key`` is then documentation)."""
    resolvers: list[Resolver] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        _unique("subject_types", [s.name for s in self.subject_types])
        _unique("teams", [t.name for t in self.teams])
        _unique("targets", [t.name for t in self.targets])
        teams = {t.name for t in self.teams}
        stypes = {s.name for s in self.subject_types}
        if self.pipeline_owner not in teams:
            raise ValueError(f"pipeline_owner: unknown team '{self.pipeline_owner}'")
        for st in self.review.subject_types:
            if st not in stypes:
                raise ValueError(
                    f"review.subject_types: unknown subject type '{st}' (known: {sorted(stypes)})"
                )
        for i, t in enumerate(self.targets):
            if t.owner not in teams:
                raise ValueError(
                    f"targets.{i} ({t.name}).owner: unknown team '{t.owner}' (known: {sorted(teams)})"
                )
            for st in t.subject_types:
                if st not in stypes:
                    raise ValueError(
                        f"targets.{i} ({t.name}).subject_types: unknown subject type '{st}' (known: {sorted(stypes)})"
                    )
        if self.resolvers and not self.identifier_types:
            raise ValueError("resolvers: need identifier_types (the types they map between)")
        if self.identifier_types:
            from erasure.identity import check_graph

            check_graph(self)
        return self

    # -- identity (docs/identity.md) -----------------------------------------------------------
    @property
    def has_identity(self) -> bool:
        """Whether the catalog declares identifier types (else every target gets the ``subject_id``)."""
        return bool(self.identifier_types)

    def identifier_type(self, name: str) -> IdentifierType | None:
        return next((t for t in self.identifier_types if t.name == name), None)

    def identifier_types_of(self, subject_type: str) -> list[IdentifierType]:
        return [t for t in self.identifier_types if t.applies_to(subject_type)]

    def id_type_of(self, subject_type: str) -> str | None:
        """The identifier type of a request's ``subject_id`` for ``subject_type`` (None without
        identifier types)."""
        st = self.subject_type(subject_type)
        if st is None or not self.identifier_types:
            return None
        if st.id_type:
            return st.id_type
        own = [t.name for t in self.identifier_types_of(subject_type)]
        return f"{subject_type}_id" if f"{subject_type}_id" in own else (own[0] if own else None)

    def request_identifier_types(self, subject_type: str) -> list[str]:
        st = self.subject_type(subject_type)
        if st is not None and st.request_identifiers is not None:
            return list(st.request_identifiers)
        return [t.name for t in self.identifier_types_of(subject_type)]

    def resolvers_for(self, subject_type: str) -> list[Resolver]:
        """Enabled resolvers that may expand the identity of a ``subject_type`` request (their target
        holds that subject type)."""
        out = []
        for r in self.resolvers:
            t = next((x for x in self.targets if x.name == r.target), None)
            if t is not None and t.enabled and subject_type in t.subject_types:
                out.append(r)
        return out

    def resolver(self, name: str) -> Resolver:
        for r in self.resolvers:
            if r.name == name:
                return r
        raise KeyError(f"unknown resolver '{name}'")

    # -- lookups -----------------------------------------------------------------------------
    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"unknown catalog target '{name}'")

    def team(self, name: str) -> Team:
        for t in self.teams:
            if t.name == name:
                return t
        raise KeyError(f"unknown team '{name}'")

    def subject_type(self, name: str) -> SubjectType | None:
        return next((s for s in self.subject_types if s.name == name), None)

    def targets_for(self, subject_type: str) -> list[Target]:
        """Enabled targets that hold data of ``subject_type``."""
        return [t for t in self.targets if t.enabled and subject_type in t.subject_types]

    def of_kind(self, kind: str, names: Iterable[str] | None = None) -> list[Target]:
        """Enabled targets of ``kind``; with ``names`` only those, and a ValueError naming any that is
        not an enabled target of that kind."""
        found = [t for t in self.targets if t.enabled and t.kind == kind]
        if names is None:
            return found
        wanted = set(names)
        unknown = sorted(wanted - {t.name for t in found})
        if unknown:
            raise ValueError(
                f"targets: {unknown} are not enabled {kind} targets (known: {sorted(t.name for t in found)})"
            )
        return [t for t in found if t.name in wanted]

    def sla_for(self, jurisdiction: str | None) -> int:
        if jurisdiction and jurisdiction in self.jurisdiction_sla_days:
            return self.jurisdiction_sla_days[jurisdiction]
        return self.sla_days


def _unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{field}: duplicate name '{n}'")
        seen.add(n)


def _expand_env(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            v = env.get(name)
            if v is None or v == "":
                if default is None:
                    raise KeyError(name)
                return default
            return v

        return _ENV_RE.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, env) for k, v in value.items()}
    return value


def _loc_name(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as 'target <name>, field <a.b>'."""
    kinds = {
        "targets": "target",
        "teams": "team",
        "subject_types": "subject type",
        "identifier_types": "identifier type",
        "resolvers": "resolver",
    }
    if len(loc) >= 2 and loc[0] in kinds and isinstance(loc[1], int):
        try:
            name = data[loc[0]][loc[1]].get("name", f"#{loc[1]}")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = f"#{loc[1]}"
        kind = kinds[loc[0]]
        parts = [str(p) for p in loc[2:]]
        if loc[0] == "targets" and parts[:1] == ["spec"]:  # the kind's section, named as in the YAML
            try:
                parts[0] = str(data[loc[0]][loc[1]]["kind"])
            except (KeyError, IndexError, TypeError):
                pass
        rest = ".".join(parts) or "(whole entry)"
        return f"{kind} '{name}', field '{rest}'"
    return f"field '{'.'.join(str(p) for p in loc) or '(top level)'}'"


def _merge(files: list[Path], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Merge several YAML files: lists are concatenated, scalars must agree. Returns data and origin."""
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for f in files:
        try:
            raw = yaml.safe_load(f.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CatalogError(f"{f}: cannot read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise CatalogError(f"{f}: not valid YAML: {exc}") from exc
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise CatalogError(f"{f}: top level must be a mapping, got {type(raw).__name__}")
        try:
            raw = _expand_env(raw, env)
        except KeyError as exc:
            raise CatalogError(f"{f}: environment variable {exc.args[0]} is referenced but not set") from exc
        for key, value in raw.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
                for item in value:
                    if isinstance(item, dict) and "name" in item:
                        origin[f"{key}:{item['name']}"] = f
            elif key in merged and merged[key] != value:
                raise CatalogError(f"{f}: '{key}' is {value!r} here but {merged[key]!r} in {origin.get(key)}")
            else:
                merged[key] = value
                origin[key] = f
    return merged, origin


def load_catalog(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Catalog:
    """Load and validate a catalog file or directory (default: the ``catalog`` setting,
    ``ERASURE_CATALOG``). ``${NAME}`` references are expanded from ``env`` (default: the process
    environment)."""
    from erasure.settings import environ, get_settings

    p = Path(path or get_settings().catalog_path)
    if p.is_dir():
        files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        if not files:
            raise CatalogError(f"{p}: no *.yaml catalog files in this directory")
    elif p.is_file():
        files = [p]
    else:
        raise CatalogError(f"{p}: catalog path does not exist")
    data, origin = _merge(files, environ() if env is None else env)
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            src = files[0] if len(files) == 1 else origin.get(_origin_key(data, loc), files[0])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{src}: {_loc_name(data, loc)}: {msg}")
        raise CatalogError("invalid catalog:\n  " + "\n  ".join(lines)) from None


def _origin_key(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and isinstance(loc[1], int):
        try:
            return f"{loc[0]}:{data[loc[0]][loc[1]]['name']}"
        except (KeyError, IndexError, TypeError):
            return ""
    return str(loc[0]) if loc else ""
