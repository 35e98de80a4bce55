"""Shared fixtures. Integration tests use the real stack started by scripts/stack.sh (Postgres, Kafka,
Airflow, Spark with the fetched Delta jars); nothing is mocked.

Isolation: each pytest session works in its own tracking database (``erasure_test_<id>``, migrated
from scratch and dropped at the end), so parallel sessions and the demo never see each other's rows.
``tracking_db`` empties it before a test. Tests that go through the running Airflow scheduler use the
stack's own tracking database with unique ids instead (the scheduler's environment is fixed).
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_stack_env() -> None:
    """Load scripts/env.sh into os.environ when pytest was not started from a sourced shell."""
    if os.environ.get("ERASURE_ROOT") and os.environ.get("AIRFLOW_CONN_ERASURE_TRACKING"):
        return
    out = subprocess.run(
        ["bash", "-c", f". {ROOT}/scripts/env.sh && env -0"], check=True, capture_output=True
    ).stdout
    for item in out.split(b"\0"):
        if b"=" in item:
            k, v = item.decode().split("=", 1)
            os.environ.setdefault(k, v)


_load_stack_env()
logging.getLogger("py4j").setLevel(logging.WARNING)
os.environ.setdefault("ERASURE_SPARK_MASTER", "local[2]")

MAIN_TRACKING_DSN = os.environ["ERASURE_TRACKING_DSN"]


def _admin_connect():
    import psycopg2

    conn = psycopg2.connect(MAIN_TRACKING_DSN.rpartition("/")[0] + "/postgres")
    conn.autocommit = True
    return conn


def _private_airflow_db() -> str | None:
    """Give this pytest session an Airflow metadata DB of its own.

    ``dag.test()`` writes serialized DAGs (built from whatever catalog a test points at), runs and
    deadlines into the metadata DB; in the stack's DB that would change what the running scheduler
    and REST API see (e.g. the intake DAG's Params) while other tests use them. The private DB is a
    copy of a migrated template (fast), created once per Airflow version. REST tests still talk to
    the running api-server, which keeps the stack's own DB.
    """
    if os.environ.get("ERASURE_TEST_SHARED_AIRFLOW_DB") == "1":
        return None
    from importlib.metadata import version

    url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    base = url.rpartition("/")[0]
    template = "airflow_tmpl_" + version("apache-airflow").replace(".", "_")
    name = f"airflow_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = _admin_connect()
    except Exception:  # the stack is down: unit tests still run, integration fixtures will say why
        return None
    with admin.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(4242)")  # one session builds the template at a time
        try:
            cur.execute("SELECT datname FROM pg_database WHERE datname = %s", (template,))
            if cur.fetchone() is None:
                # a build killed half-way leaves this behind; the advisory lock says nobody is building it
                cur.execute(f'DROP DATABASE IF EXISTS "{template}_building" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{template}_building"')
                env = dict(os.environ, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"{base}/{template}_building")
                subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
                cur.execute(f'ALTER DATABASE "{template}_building" RENAME TO "{template}"')
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            cur.execute("SELECT pg_advisory_unlock(4242)")
    admin.close()
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"{base}/{name}"
    # the retention tasks reach the metadata DB through this connection (docs/personal-data.md)
    os.environ["AIRFLOW_CONN_ERASURE_AIRFLOW_DB"] = f"{base}/{name}".replace(
        "postgresql+psycopg2://", "postgresql://"
    )
    return name


_AIRFLOW_TEST_DB = _private_airflow_db()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _AIRFLOW_TEST_DB:
        try:
            from airflow import settings

            settings.dispose_orm()
        except Exception:
            pass
        admin = _admin_connect()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{_AIRFLOW_TEST_DB}" WITH (FORCE)')
        admin.close()


def _admin_dsn(db: str) -> str:
    base, _, _ = MAIN_TRACKING_DSN.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh, migrated tracking database for this pytest session; exported as the tracking DSN."""
    import psycopg2

    from erasure.tracking import upgrade

    name = f"erasure_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(_admin_dsn("postgres"))
    except psycopg2.OperationalError as exc:
        raise RuntimeError(
            f"Postgres of the stack is not reachable ({exc}); run scripts/stack.sh up"
        ) from exc
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    dsn = _admin_dsn(name)
    upgrade(dsn)
    saved = {k: os.environ.get(k) for k in ("ERASURE_TRACKING_DSN", "AIRFLOW_CONN_ERASURE_TRACKING")}
    os.environ["ERASURE_TRACKING_DSN"] = dsn
    os.environ["AIRFLOW_CONN_ERASURE_TRACKING"] = dsn
    try:
        yield dsn
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


TRACKING_TABLES = (
    "canary_check, canary_subject, alert, legal_hold, intake, receipt, event_log, ack_log, outbox, task, "
    "rejected_request, request, operator_action, tombstone, restore"
)


@pytest.fixture
def tracking_db(pg_dsn: str) -> str:
    """The session's tracking database, emptied before the test. Returns its DSN."""
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    with conn, conn.cursor() as cur:
        # the audit log and receipts refuse TRUNCATE but on this documented maintenance path (docs/evidence.md)
        cur.execute("SET LOCAL erasure.audit_maintenance = 'truncate'")
        cur.execute(
            "TRUNCATE "
            + ", ".join(f"erasure.{t.strip()}" for t in TRACKING_TABLES.split(","))
            + " RESTART IDENTITY CASCADE"
        )
    conn.close()
    return pg_dsn


def _without_identity(cat):
    """``cat`` as a catalog without ``identifier_types`` (and so without resolvers): every target is
    erased by the request's ``subject_id`` and a request goes straight to its targets."""
    return cat.model_copy(update={"resolvers": [], "identifier_types": []})


@pytest.fixture(scope="session")
def catalog():
    """The demo catalog without its identity declarations (see :func:`_without_identity`): the tests of
    intake, dispatch, reconcile... run the pipeline as a catalog without resolvers does. Identity
    resolution has its own tests (test_identity.py) and runs in the demo."""
    from erasure.catalog import load_catalog

    return _without_identity(load_catalog(ROOT / "include" / "catalog"))


@pytest.fixture
def catalog_env(catalog, tmp_path, monkeypatch):
    """``ERASURE_CATALOG`` pointing at :func:`catalog` written out (for DAGs and the CLI, which read
    the setting); returns its path."""
    import yaml

    path = tmp_path / "catalog-without-identity.yaml"
    path.write_text(yaml.safe_dump(catalog.model_dump(mode="json", by_alias=True), sort_keys=False))
    monkeypatch.setenv("ERASURE_CATALOG", str(path))
    return path


@pytest.fixture(scope="session")
def identity_catalog():
    """The demo catalog as shipped, resolvers included (docs/identity.md)."""
    from erasure.catalog import load_catalog

    return load_catalog(ROOT / "include" / "catalog")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from confluent_kafka.admin import AdminClient

    bootstrap = os.environ["ERASURE_KAFKA_BOOTSTRAP"]
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    except Exception as exc:
        raise RuntimeError(
            f"Kafka of the stack is not reachable at {bootstrap} ({exc}); run scripts/stack.sh up"
        ) from exc
    return bootstrap


@pytest.fixture
def unique_topic(kafka_bootstrap: str):
    """Factory: creates a fresh topic with a unique name (so tests never read each other's messages)."""
    from erasure.kafka_admin import TopicSpec, ensure_topics

    def make(prefix: str = "test", partitions: int = 3) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, 3600 * 1000, "test")])
        return name

    return make


@pytest.fixture(scope="session")
def spark():
    """One Delta-enabled Spark session per test session (start-up costs ~10 s)."""
    from erasure.settings import get_settings
    from erasure.spark import get_spark

    session = get_spark(
        "erasure-tests", settings=get_settings(), master=os.environ.get("ERASURE_SPARK_MASTER", "local[2]")
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def airflow_api():
    """A client of the running Airflow REST API v2, authenticated with a JWT from /auth/token."""
    from tests.helpers.airflow_api import AirflowApi

    return AirflowApi.from_env()
