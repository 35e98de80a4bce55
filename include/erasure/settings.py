"""Every ``ERASURE_*`` setting of the pipeline, read once from the environment (pydantic-settings).

This is the only module of the product that reads ``os.environ``. Core functions take what they need
(a DSN, a directory, a number) as arguments; the callers at the edge (the CLI, the Airflow glue, the
Spark entry points) build one :class:`Settings` with :func:`get_settings` and pass values on.

``scripts/env.sh`` sets these for the local stack; production sets them in the Airflow workers'
environment or, for secrets, through Airflow connections (``erasure.airflow.conn``).

Two kinds of value are read by *name* at run time, because the catalog names them:

* ``${NAME}`` / ``${NAME:-default}`` references inside catalog YAML (:func:`environ`);
* secrets a catalog target points to (``sync_api.token_env``, ``postgres_table.dsn_env``):
  :func:`secret_from_env`, which names the variable (never its value) when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[2]
"""The repository (or image) root: ``include/erasure/settings.py`` -> two levels up."""


class SettingsError(RuntimeError):
    """A required setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """The pipeline's settings. Field ``x`` is read from ``ERASURE_X``."""

    model_config = SettingsConfigDict(env_prefix="ERASURE_", extra="ignore", frozen=True)

    # -- locations ---------------------------------------------------------------------------------
    root: Path = ROOT
    local: Path | None = None
    """Project-local state (``.local``); defaults to ``<root>/.local``."""
    catalog: Path | None = None
    """Catalog file or directory; defaults to ``<root>/include/catalog``."""
    warehouse_dir: Path | None = None
    """Base of relative warehouse table paths; defaults to ``<local>/warehouse``."""
    dataset_dir: Path | None = None
    """Where the Delta event dataset lives; defaults to ``<local>/datasets``."""

    # -- services ----------------------------------------------------------------------------------
    tracking_dsn: str | None = None
    """PostgreSQL DSN of the tracking store (the Airflow glue prefers the ``erasure_tracking`` connection)."""
    kafka_bootstrap: str = "127.0.0.1:29092"
    kafka_replication_factor: Annotated[int, Field(ge=1)] = 1
    """Replicas of each pipeline topic (``kafka-topics``); 3 on a three-broker cluster."""
    kafka_min_insync_replicas: Annotated[int, Field(ge=1)] = 1
    """Topic ``min.insync.replicas``: with ``acks=all`` a write needs this many replicas (2 with RF 3);
    at most ``kafka_replication_factor``."""

    # -- Spark -------------------------------------------------------------------------------------
    spark_master: str = "local[*]"
    spark_jars_dir: Path | None = None
    """Delta and JDBC jars handed to Spark; defaults to ``<local>/jars``."""
    spark_shuffle_partitions: Annotated[int, Field(ge=1)] = 4
    spark_ui: bool = False
    spark_driver_memory: str = "2g"
    spark_metastore_database: str | None = None
    """Database on the tracking store's PostgreSQL server that holds a Hive metastore (schema created
    by ``scripts/stack.sh up postgres``): Spark sessions then keep tables by name (``db.table``) there,
    managed tables under ``warehouse_dir``. None: Spark's in-memory catalog (tables by path only)."""
    vacuum_listing_parallelism: Annotated[int, Field(ge=1)] | None = None

    # -- pipeline behaviour ------------------------------------------------------------------------
    dispatch_lease_minutes: Annotated[float, Field(gt=0)] = 15.0
    """How long a claimed task belongs to its batch before another run may take it."""
    dispatch_batch_timeout_minutes: Annotated[float, Field(gt=0)] = 10.0
    sla_warn_days: Annotated[float, Field(ge=0)] = 5.0
    """Alert the owner this many days before a request's due date."""
    dataset_retention_days: Annotated[int, Field(ge=1, le=3650)] = 90
    """Subject identifiers in the event dataset are removed after this many days."""
    canary_schedule: str = "17 * * * *"

    # -- retention and minimisation (erasure.retention, docs/personal-data.md) --------------------
    retention_raw_identifier_days: Annotated[int, Field(ge=0, le=3650)] = 30
    """Raw identifiers of a finished (completed or rejected) request are kept this many days after it
    finished, then replaced by keyed hashes in every table of the tracking store."""
    retention_rejected_days: Annotated[int, Field(ge=0, le=3650)] = 30
    """Rejected intake payloads (``erasure.rejected_request``, rejected intake rows) expire after it."""
    retention_request_days: Annotated[int, Field(ge=1, le=3650)] = 730
    """Request metadata and receipts are kept 24 months (CCPA §7101); older delivery records (sent
    alerts, ack log rows) are deleted. The audit log and the suppression ledger are kept."""
    retention_airflow_days: Annotated[int, Field(ge=1, le=3650)] = 30
    """Runs of the erasure DAGs are removed from Airflow's metadata DB (``airflow db clean``) after it."""

    # -- proof of erasure: receipts and their keys (docs/evidence.md) ------------------------------
    receipt_signing_key_file: Path | None = None
    """Ed25519 private key (PEM) that signs receipts; defaults to ``<local>/secrets/receipt-signing-key.pem``."""
    identifier_hmac_key_file: Path | None = None
    """Key (hex) of the HMAC-SHA256 that hides identifiers in receipts; defaults to ``<local>/secrets/identifier-hmac.key``."""
    receipt_jwks_file: Path | None = None
    """The published public keys (JWKS) receipts are verified with; defaults to ``<local>/secrets/receipt-keys.jwks.json``."""
    receipts_dir: Path | None = None
    """Where receipts are exported as files; defaults to ``<local>/receipts``."""
    pseudonym_key_file: Path | None = None
    """Key (hex) of the keyed pseudonyms of the ``hash`` field strategy (erasure.pseudonym); defaults to ``<local>/secrets/pseudonym-hmac.key``."""
    identity_key_file: Path | None = None
    """Key (hex, 32 bytes) that seals identifiers at rest in the tracking store (erasure.identity,
    AES-256-GCM); defaults to ``<local>/secrets/identity-encryption.key``. In Airflow the
    ``erasure_identity`` connection's password takes precedence."""
    resolution_max_depth: Annotated[int, Field(ge=1, le=10)] = 4
    """Most resolver hops from a request's own identifiers (erasure.resolution)."""

    # -- alert delivery by e-mail (else Airflow's email backend) -----------------------------------
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_from: str = "erasure-pipeline@localhost"

    # -- derived -----------------------------------------------------------------------------------
    @property
    def local_dir(self) -> Path:
        return self.local or self.root / ".local"

    @property
    def catalog_path(self) -> Path:
        return self.catalog or self.root / "include" / "catalog"

    @property
    def warehouse_path(self) -> Path:
        return self.warehouse_dir or self.local_dir / "warehouse"

    @property
    def dataset_path(self) -> Path:
        return self.dataset_dir or self.local_dir / "datasets"

    @property
    def secrets_dir(self) -> Path:
        return self.local_dir / "secrets"

    @property
    def receipt_signing_key_path(self) -> Path:
        return self.receipt_signing_key_file or self.secrets_dir / "receipt-signing-key.pem"

    @property
    def identifier_hmac_key_path(self) -> Path:
        return self.identifier_hmac_key_file or self.secrets_dir / "identifier-hmac.key"

    @property
    def receipt_jwks_path(self) -> Path:
        return self.receipt_jwks_file or self.secrets_dir / "receipt-keys.jwks.json"

    @property
    def pseudonym_key_path(self) -> Path:
        return self.pseudonym_key_file or self.secrets_dir / "pseudonym-hmac.key"

    @property
    def identity_key_path(self) -> Path:
        return self.identity_key_file or self.secrets_dir / "identity-encryption.key"

    @property
    def receipts_path(self) -> Path:
        return self.receipts_dir or self.local_dir / "receipts"

    @property
    def jars_path(self) -> Path:
        return self.spark_jars_dir or self.local_dir / "jars"

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> Settings:
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                f"kafka_min_insync_replicas ({self.kafka_min_insync_replicas}) exceeds "
                f"kafka_replication_factor ({self.kafka_replication_factor}): no write could succeed"
            )
        return self

    def require_tracking_dsn(self) -> str:
        """The tracking store's DSN, or a :class:`SettingsError` naming ``ERASURE_TRACKING_DSN``."""
        if not self.tracking_dsn:
            raise SettingsError(
                "environment variable ERASURE_TRACKING_DSN is not set (source scripts/env.sh or set it)"
            )
        return self.tracking_dsn


SECRET_FIELDS = frozenset({"tracking_dsn", "smtp_user", "smtp_password"})
"""Settings whose values never appear in an error message."""


def _invalid(exc: ValidationError) -> SettingsError:
    """One line per bad value, naming the environment variable (and the value, unless it is secret)."""
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        var = f"ERASURE_{name.upper()}" if name else "ERASURE_*"
        got = "" if name in SECRET_FIELDS else f" (got {err.get('input')!r})"
        problems.append(f"environment variable {var}: {err['msg']}{got}")
    return SettingsError("invalid setting: " + "; ".join(problems))


def get_settings() -> Settings:
    """The settings, read from the environment now (never at import time). Not cached: it costs well
    under a millisecond, and a changed environment (a test, a DAG file parsed again) is always seen;
    call it once at the edge and pass the object on."""
    try:
        return Settings()
    except ValidationError as exc:  # pydantic names the field; say which variable
        raise _invalid(exc) from None


def environ() -> Mapping[str, str]:
    """The process environment, for catalog ``${NAME}`` references and subprocess environments."""
    return os.environ


def secret_from_env(name: str, what: str) -> str:
    """The value of the environment variable ``name`` that a catalog field (``what``) points to.

    Raises :class:`SettingsError` naming the variable and the field (never a value) when it is unset.
    """
    value = os.environ.get(name)
    if not value:
        raise SettingsError(f"{what} names {name}, which is not set")
    return value


ACK_KEY_PREFIX = "ERASURE_ACK_KEY_"
"""``ERASURE_ACK_KEY_<TARGET>`` (and ``..._PREVIOUS`` during a rotation): a Kafka partner's ack key."""


def ack_keys_from_env(targets: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """The ack signing keys of ``targets`` from the environment (CLI, tests, demo partners):
    ``ERASURE_ACK_KEY_<TARGET>`` (current) and ``ERASURE_ACK_KEY_<TARGET>_PREVIOUS`` (accepted during a
    key rotation). A target without a key is left out: its acks are then refused as unauthenticated."""
    out: dict[str, list[str]] = {}
    for t in targets:
        var = ACK_KEY_PREFIX + t.upper()
        keys = [k for k in (os.environ.get(var), os.environ.get(var + "_PREVIOUS")) if k]
        if keys:
            out[t] = keys
    return out
