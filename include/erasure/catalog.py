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
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"
_ENV_RE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or invalid; the message names file, target and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubjectType(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$"
    description: str = ""

    @field_validator("id_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v

    @cached_property
    def id_regex(self) -> re.Pattern[str]:
        return re.compile(self.id_pattern)


class Team(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    channel: Annotated[str, Field(pattern=r"^(log|webhook|email):.*$")] = "log:"
    """``log:``, ``webhook:<url>`` or ``email:<address>``."""


class SyncApiSpec(_Model):
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    delete_path: str = "/subjects/{subject_id}"
    lookup_path: str = "/subjects/{subject_id}"
    create_path: str = "/test-subjects"
    token_env: str | None = None
    """Name of an environment variable holding a bearer token (never the token itself)."""
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    concurrency: Annotated[int, Field(ge=1, le=512)] = 16
    rate_limit_per_s: Annotated[float, Field(gt=0)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    pool_slots: Annotated[int, Field(ge=1, le=64)] = 2

    @field_validator("delete_path", "lookup_path", "create_path")
    @classmethod
    def _has_placeholder(cls, v: str, info: Any) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        if info.field_name != "create_path" and "{subject_id}" not in v:
            raise ValueError("must contain the placeholder {subject_id}")
        return v


class KafkaSpec(_Model):
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "erasure.events"
    ack_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "erasure.acks"
    ack_timeout_minutes: Annotated[int, Field(ge=1)] = 60
    consumer_group: str | None = None
    """The partner's consumer group (documentation; the partner owns it)."""
    lookup_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Optional HTTP lookup/test-data endpoint of the partner (used by the canary)."""


class WarehouseDeltaSpec(_Model):
    table: Annotated[str, Field(pattern=NAME_RE)]
    path: str
    """Table location; relative paths resolve against ERASURE_WAREHOUSE_DIR."""
    key_column: Annotated[str, Field(pattern=NAME_RE)]
    mode: Literal["delete", "mask"] = "delete"
    mask_columns: list[Annotated[str, Field(pattern=NAME_RE)]] = Field(default_factory=list)
    deletion_vectors: bool = False
    retention_hours: Annotated[int, Field(ge=0)] = 168
    """VACUUM retention; 0 purges old files at once (time travel to pre-erasure versions ends)."""

    @model_validator(mode="after")
    def _mask_needs_columns(self) -> WarehouseDeltaSpec:
        if self.mode == "mask" and not self.mask_columns:
            raise ValueError("mode 'mask' needs mask_columns")
        if self.key_column in self.mask_columns:
            raise ValueError("mask_columns must not contain key_column")
        return self

    def resolved_path(self, warehouse_dir: str | os.PathLike[str] | None = None) -> str:
        if "://" in self.path or os.path.isabs(self.path):
            return self.path
        base = warehouse_dir or os.environ.get("ERASURE_WAREHOUSE_DIR", ".local/warehouse")
        return str(Path(base) / self.path)


class PostgresTableSpec(_Model):
    dsn_env: str = "ERASURE_TRACKING_DSN"
    """Environment variable with the DSN (an Airflow connection URI in production)."""
    table: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")]
    key_column: Annotated[str, Field(pattern=NAME_RE)]


Kind = Literal["sync_api", "kafka", "warehouse_delta", "postgres_table"]


class Target(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    kind: Kind
    owner: str
    description: str = ""
    subject_types: list[str] = Field(min_length=1)
    identity_key: Annotated[str, Field(pattern=NAME_RE)]
    personal_data: list[str] = Field(default_factory=list)
    sla_days: Annotated[int, Field(ge=1, le=365)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    retry_backoff_minutes: Annotated[float, Field(gt=0)] = 5.0
    enabled: bool = True
    sync_api: SyncApiSpec | None = None
    kafka: KafkaSpec | None = None
    warehouse_delta: WarehouseDeltaSpec | None = None
    postgres_table: PostgresTableSpec | None = None

    @model_validator(mode="after")
    def _spec_matches_kind(self) -> Target:
        specs = {k: getattr(self, k) for k in ("sync_api", "kafka", "warehouse_delta", "postgres_table")}
        if specs[self.kind] is None:
            raise ValueError(f"kind '{self.kind}' needs a '{self.kind}' section")
        extra = [k for k, v in specs.items() if v is not None and k != self.kind]
        if extra:
            raise ValueError(f"kind '{self.kind}' must not have section(s) {extra}")
        return self

    @property
    def spec(self) -> SyncApiSpec | KafkaSpec | WarehouseDeltaSpec | PostgresTableSpec:
        return getattr(self, self.kind)

    @property
    def pool(self) -> str:
        """The Airflow pool that bounds this target's concurrent task instances."""
        return f"erasure_{self.name}"


class Catalog(_Model):
    version: Literal[1] = 1
    sla_days: Annotated[int, Field(ge=1, le=365)] = 30
    jurisdiction_sla_days: dict[str, Annotated[int, Field(ge=1, le=365)]] = Field(default_factory=dict)
    pipeline_owner: str = "privacy"
    subject_types: list[SubjectType] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        _unique("subject_types", [s.name for s in self.subject_types])
        _unique("teams", [t.name for t in self.teams])
        _unique("targets", [t.name for t in self.targets])
        teams = {t.name for t in self.teams}
        stypes = {s.name for s in self.subject_types}
        if self.pipeline_owner not in teams:
            raise ValueError(f"pipeline_owner: unknown team '{self.pipeline_owner}'")
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
        return self

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

    def targets_for(self, subject_type: str, kind: str | None = None) -> list[Target]:
        return [
            t
            for t in self.targets
            if t.enabled and subject_type in t.subject_types and (kind is None or t.kind == kind)
        ]

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


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            v = os.environ.get(name)
            if v is None or v == "":
                if default is None:
                    raise KeyError(name)
                return default
            return v

        return _ENV_RE.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    return value


def _loc_name(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as 'target <name>, field <a.b>'."""
    if len(loc) >= 2 and loc[0] in ("targets", "teams", "subject_types") and isinstance(loc[1], int):
        try:
            name = data[loc[0]][loc[1]].get("name", f"#{loc[1]}")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = f"#{loc[1]}"
        kind = {"targets": "target", "teams": "team", "subject_types": "subject type"}[loc[0]]
        rest = ".".join(str(p) for p in loc[2:]) or "(whole entry)"
        return f"{kind} '{name}', field '{rest}'"
    return f"field '{'.'.join(str(p) for p in loc) or '(top level)'}'"


def _merge(files: list[Path]) -> tuple[dict[str, Any], dict[str, Path]]:
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
            raw = _expand_env(raw)
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


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load and validate a catalog file or directory (default: ERASURE_CATALOG)."""
    p = Path(path or os.environ.get("ERASURE_CATALOG") or Path(__file__).resolve().parents[1] / "catalog")
    if p.is_dir():
        files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        if not files:
            raise CatalogError(f"{p}: no *.yaml catalog files in this directory")
    elif p.is_file():
        files = [p]
    else:
        raise CatalogError(f"{p}: catalog path does not exist")
    data, origin = _merge(files)
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
