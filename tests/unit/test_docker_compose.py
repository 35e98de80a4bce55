"""docker-compose.yaml cannot run here (no Docker engine): check it against the Compose specification's
JSON schema (vendored, see tests/unit/data/README.md) and against the code: the settings and catalog
references the Airflow services need, the pools the init service creates, the versions the set-up uses."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).parent / "data" / "compose-spec.schema.json"
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
CELERY_WORKERS = ("airflow-worker-1", "airflow-worker-2")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[=]", d)[0].lower(): d.split("==")[1] for d in deps}


def _default(value: str) -> str:
    """``${NAME:-default}`` -> ``default`` (what Compose substitutes when NAME is unset)."""
    return INTERPOLATION.sub(lambda m: m.group(0).split(":-", 1)[1][:-1] if ":-" in m.group(0) else "", value)


def test_valid_against_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_file(compose):
    """The schema check is not vacuous: an unknown service key and a bad depends_on condition fail it."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["postgres"]["restart_policy"] = "always"
    broken["services"]["airflow-scheduler"]["depends_on"]["postgres"]["condition"] = "when_ready"
    assert len(list(jsonschema.Draft201909Validator(schema).iter_errors(broken))) >= 2


def test_services_and_profiles(compose):
    services = compose["services"]
    assert {"postgres", "kafka", "spark-master", "spark-worker", *AIRFLOW_SERVICES} <= set(services)
    # the default `docker compose up` starts the product only; partners and Celery are opt-in
    for name in ("postgres", "kafka", *AIRFLOW_SERVICES):
        assert "profiles" not in services[name], name
    assert services["partners"]["profiles"] == ["demo"]
    for name in ("redis", *CELERY_WORKERS):
        assert services[name]["profiles"] == ["celery"], name


def test_airflow_services_share_config_and_mount_the_code(compose):
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for name in (*AIRFLOW_SERVICES, *CELERY_WORKERS):
        svc = compose["services"][name]
        env = svc["environment"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET"), name
        assert _default(env["AIRFLOW__CORE__EXECUTOR"]) == "LocalExecutor", name
        mounts = {m.split(":")[0]: m.split(":")[1] for m in svc["volumes"] if m.startswith("./")}
        assert mounts["./dags"] == env["AIRFLOW__CORE__DAGS_FOLDER"]
        assert mounts["./plugins"] == env["AIRFLOW__CORE__PLUGINS_FOLDER"]
        assert "./spark_jobs" in mounts
        # the package is installed editable from the mounted include/erasure folder (not include/erasure_demo)
        assert "./include/erasure_demo" not in mounts, name
        assert mounts["./include/catalog"] == env["ERASURE_CATALOG"]
        assert f"COPY --chown=airflow include/erasure {mounts['./include/erasure']}" in dockerfile
        assert env["ERASURE_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"


def test_connection_ids_match_the_code(compose):
    from erasure.airflow.conn import KAFKA_CONN_ID, SPARK_CONN_ID, TRACKING_CONN_ID

    env = compose["services"]["airflow-scheduler"]["environment"]
    for conn_id in (TRACKING_CONN_ID, KAFKA_CONN_ID, SPARK_CONN_ID):
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env
    kafka = json.loads(_default(env[f"AIRFLOW_CONN_{KAFKA_CONN_ID.upper()}"]))
    assert kafka["extra"]["bootstrap.servers"] == env["ERASURE_KAFKA_BOOTSTRAP"]
    spark = json.loads(_default(env[f"AIRFLOW_CONN_{SPARK_CONN_ID.upper()}"]))
    assert spark["conn_type"] == "spark" and spark["host"] == _default(env["ERASURE_SPARK_MASTER"])


def test_every_setting_and_catalog_reference_is_defined(compose):
    """Every ``ERASURE_*`` variable the services set is a setting (or a catalog reference), the
    settings parse from them, and every variable the catalog reads (``${NAME}``, ``dsn_env``,
    ``token_env``, the Kafka targets' ack keys) is defined for the Airflow services."""
    from erasure.catalog import load_catalog
    from erasure.settings import ACK_KEY_PREFIX, Settings

    env = {k: _default(str(v)) for k, v in compose["services"]["airflow-scheduler"]["environment"].items()}
    catalog_text = "".join(p.read_text() for p in sorted((ROOT / "include" / "catalog").glob("*.yaml")))
    referenced = set(re.findall(r"\$\{(ERASURE_[A-Z0-9_]+)", catalog_text))
    referenced |= set(re.findall(r"(?:dsn_env|token_env):\s*'?(ERASURE_[A-Z0-9_]+)", catalog_text))
    alert_channels = {v for v in referenced if v.startswith("ERASURE_ALERT_")}  # optional, default log
    missing = sorted(v for v in referenced - alert_channels if v not in env)
    assert not missing, f"the catalog reads {missing}, not set for the Airflow services"
    assert "ERASURE_HR_DSN" in env

    fields = {f"ERASURE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("ERASURE_") and k not in fields | referenced)
    assert not unknown, f"not a setting nor read by the catalog: {unknown}"
    settings = Settings(**{k.removeprefix("ERASURE_").lower(): v for k, v in env.items() if k in fields})
    assert settings.kafka_replication_factor == 1 and settings.kafka_min_insync_replicas == 1

    catalog = load_catalog(ROOT / "include" / "catalog")
    for t in catalog.of_kind("kafka"):  # the erasure_acks DAG verifies acks with erasure_ack_<target>
        assert f"AIRFLOW_CONN_ERASURE_ACK_{t.name.upper()}" in env, t.name
        assert f"{ACK_KEY_PREFIX}{t.name.upper()}" in compose["services"]["partners"]["environment"]


def test_init_migrates_and_creates_topics_and_pools(compose):
    """Without the per-target pools every delete_<target> task would wait forever: the init service
    creates them from the catalog, as scripts/stack.sh does."""
    script = "\n".join(compose["services"]["airflow-init"]["command"])
    steps = [
        "airflow db migrate",
        "python -m erasure.cli db upgrade",
        "python -m erasure.cli kafka-topics",
        "python -m erasure.cli pools > /tmp/erasure-pools.json",
        "airflow pools import /tmp/erasure-pools.json",
    ]
    positions = [script.index(s) for s in steps]
    assert positions == sorted(positions)
    assert "set -e" in script
    for name in AIRFLOW_SERVICES[1:] + CELERY_WORKERS + ("partners",):
        cond = compose["services"][name]["depends_on"]["airflow-init"]["condition"]
        assert cond == "service_completed_successfully", name

    # the pools the DAGs use are the ones `erasure.cli pools` prints
    from erasure.catalog import load_catalog
    from erasure.dispatch import pool_specs

    catalog = load_catalog(ROOT / "include" / "catalog")
    pools = pool_specs(catalog)
    assert {t.pool for t in catalog.targets if t.enabled} == set(pools)


def test_postgres_creates_every_database(compose):
    pg = compose["services"]["postgres"]
    assert pg["environment"]["POSTGRES_DB"] == "airflow"
    init = (ROOT / "docker" / "postgres-init.sql").read_text()
    env = compose["services"]["airflow-scheduler"]["environment"]
    for var in ("ERASURE_TRACKING_DSN", "ERASURE_HR_DSN"):
        db = env[var].rsplit("/", 1)[1]
        assert f"CREATE DATABASE {db};" in init, var
    assert "CREATE TABLE IF NOT EXISTS hr.directory" in init


def test_celery_profile(compose):
    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    hostnames = set()
    for name in CELERY_WORKERS:
        svc = services[name]
        assert svc["command"].startswith("celery worker"), name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        hostnames.add(svc["command"].split("--celery-hostname")[1].split()[0])
    assert len(hostnames) == len(CELERY_WORKERS)
    assert "apache-airflow-providers-celery" in _pins()


def test_demo_partners_serve_the_catalog_urls(compose):
    svc = compose["services"]["partners"]
    assert svc["entrypoint"][:3] == ["python", "-m", "erasure_demo.partners.run"]
    # the demo package comes from the demo image (never mounted: test_package_boundaries)
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.demo"
    demo_dockerfile = (ROOT / "docker" / "Dockerfile.demo").read_text()
    assert "FROM " + compose["services"]["airflow-scheduler"]["image"] in demo_dockerfile
    assert "COPY --chown=airflow include/erasure_demo /opt/erasure/demo/erasure_demo" in demo_dockerfile
    assert "ENV PYTHONPATH=/opt/erasure/demo" in demo_dockerfile
    env = svc["environment"]
    for var in ("CRM", "BILLING", "SUPPORT", "MARKETING", "RECOMMENDATIONS"):
        assert _default(env[f"ERASURE_PARTNER_{var}_URL"]).startswith("http://partners:"), var


def test_versions_match_the_set_up(compose):
    pins = _pins()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"apache/airflow:{pins['apache-airflow']}-python3.11" in dockerfile
    spark_image = compose["services"]["spark-master"]["image"]
    assert spark_image.endswith(f"apache/spark:{pins['pyspark']}}}") or spark_image.endswith(pins["pyspark"])
    kafka_pom = (ROOT / "tools" / "maven" / "kafka-pom.xml").read_text()
    kafka_version = re.search(r"<kafka.version>([^<]+)</kafka.version>", kafka_pom)
    assert kafka_version, "tools/maven/kafka-pom.xml names no kafka.version"
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version.group(1)}"
    jars = sorted(p.name for p in (ROOT / ".local" / "jars").glob("delta-spark_*.jar"))
    if jars:  # the Delta version in the image is the one the set-up fetched
        assert f"DELTA_VERSION={jars[0].split('-')[-1].removesuffix('.jar')}" in dockerfile


def test_kafka_is_kraft_single_node(compose):
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    airflow = compose["services"]["airflow-init"]["environment"]
    assert airflow["ERASURE_KAFKA_REPLICATION_FACTOR"] == "1"  # one broker: topics at RF 1


def test_no_literal_secrets(compose):
    text = (ROOT / "docker-compose.yaml").read_text()
    for key in ("PASSWORD", "JWT_SECRET", "FERNET_KEY", "ACK_KEY", '"password"'):
        for line in text.splitlines():
            if key in line and ":" in line and "${" not in line and not line.strip().startswith("#"):
                pytest.fail(f"literal secret in docker-compose.yaml: {line.strip()}")


def test_dag_processor_settings_as_the_local_stack(compose):
    """The dag-processor's parse timeout and stale-DAG threshold are the local stack's (scripts/env.sh):
    with Airflow's 50 s defaults one slow parse under load marks a DAG stale (REST API 404, issue 20)."""
    env_sh = (ROOT / "scripts" / "env.sh").read_text()
    env = compose["x-airflow-common"]["environment"]
    for name in ("DAG_FILE_PROCESSOR_TIMEOUT", "STALE_DAG_THRESHOLD"):
        key = f"AIRFLOW__DAG_PROCESSOR__{name}"
        m = re.search(rf'^export {key}="\$\{{{key}:-(\d+)\}}"$', env_sh, re.M)
        assert m, f"scripts/env.sh sets no default for {key}"
        assert env[key] == m.group(1), key
    assert int(env["AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD"]) > int(
        env["AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT"]
    )
