"""erasure.settings: defaults, environment overrides, derived paths, errors that name the variable, and
the rule that no other module of the product reads the environment."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from erasure.settings import ROOT, Settings, SettingsError, get_settings, secret_from_env

PACKAGE = ROOT / "include" / "erasure"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ERASURE_* variable set (scripts/env.sh sets many)."""
    for name in list(os.environ):
        if name.startswith("ERASURE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.root == ROOT
    assert s.tracking_dsn is None
    assert s.kafka_bootstrap == "127.0.0.1:29092"
    assert s.spark_master == "local[*]"
    assert s.spark_shuffle_partitions == 4 and s.spark_ui is False and s.spark_driver_memory == "2g"
    assert s.vacuum_listing_parallelism is None
    assert s.dispatch_lease_minutes == 15.0 and s.dispatch_batch_timeout_minutes == 10.0
    assert s.sla_warn_days == 5.0 and s.dataset_retention_days == 90
    assert s.canary_schedule == "17 * * * *"
    assert s.smtp_host is None and s.smtp_port == 25 and s.smtp_starttls is False
    assert s.smtp_from == "erasure-pipeline@localhost"


def test_environment_overrides(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ERASURE_TRACKING_DSN", "postgresql://u:p@h:1/db")
    clean_env.setenv("ERASURE_KAFKA_BOOTSTRAP", "broker:9092")
    clean_env.setenv("ERASURE_SPARK_MASTER", "local[3]")
    clean_env.setenv("ERASURE_SPARK_SHUFFLE_PARTITIONS", "8")
    clean_env.setenv("ERASURE_SPARK_UI", "true")
    clean_env.setenv("ERASURE_DATASET_RETENTION_DAYS", "30")
    clean_env.setenv("ERASURE_SMTP_PORT", "2525")
    clean_env.setenv("ERASURE_SMTP_STARTTLS", "1")
    s = get_settings()
    assert s.tracking_dsn == "postgresql://u:p@h:1/db" and s.require_tracking_dsn() == s.tracking_dsn
    assert s.kafka_bootstrap == "broker:9092" and s.spark_master == "local[3]"
    assert s.spark_shuffle_partitions == 8 and s.spark_ui is True
    assert s.dataset_retention_days == 30 and s.smtp_port == 2525 and s.smtp_starttls is True
    clean_env.setenv("ERASURE_SPARK_MASTER", "local[4]")
    assert s.spark_master == "local[3]"  # a Settings object does not change under its holder
    assert get_settings().spark_master == "local[4]"  # the environment as it is now


def test_derived_paths(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings()
    assert s.local_dir == ROOT / ".local"
    assert s.catalog_path == ROOT / "include" / "catalog"
    assert s.jars_path == ROOT / ".local" / "jars"
    clean_env.setenv("ERASURE_LOCAL", str(tmp_path))
    s = Settings()
    assert s.local_dir == tmp_path
    assert s.warehouse_path == tmp_path / "warehouse"
    assert s.dataset_path == tmp_path / "datasets"
    assert s.jars_path == tmp_path / "jars"
    clean_env.setenv("ERASURE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    clean_env.setenv("ERASURE_DATASET_DIR", str(tmp_path / "ds"))
    clean_env.setenv("ERASURE_SPARK_JARS_DIR", str(tmp_path / "j"))
    clean_env.setenv("ERASURE_CATALOG", str(tmp_path / "cat.yaml"))
    s = Settings()
    assert s.warehouse_path == tmp_path / "wh" and s.dataset_path == tmp_path / "ds"
    assert s.jars_path == tmp_path / "j" and s.catalog_path == tmp_path / "cat.yaml"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ERASURE_DATASET_RETENTION_DAYS", "0"),
        ("ERASURE_DATASET_RETENTION_DAYS", "3651"),
        ("ERASURE_SPARK_SHUFFLE_PARTITIONS", "many"),
        ("ERASURE_SPARK_UI", "maybe"),
        ("ERASURE_SMTP_PORT", "smtp"),
        ("ERASURE_SLA_WARN_DAYS", "-1"),
        ("ERASURE_DISPATCH_LEASE_MINUTES", "0"),
    ],
)
def test_a_bad_value_names_the_variable(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(SettingsError) as ei:
        get_settings()
    assert var in str(ei.value) and repr(value) in str(ei.value)


def test_missing_tracking_dsn_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="ERASURE_TRACKING_DSN"):
        Settings().require_tracking_dsn()


def test_secret_from_env_names_variable_and_field_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERASURE_TEST_PARTNER_TOKEN", "s3cr3t-token")
    assert secret_from_env("ERASURE_TEST_PARTNER_TOKEN", "sync_api.token_env") == "s3cr3t-token"
    monkeypatch.delenv("ERASURE_TEST_PARTNER_TOKEN")
    monkeypatch.setenv("ERASURE_TEST_OTHER_SECRET", "hunter2")
    for unset in (None, ""):
        if unset is not None:
            monkeypatch.setenv("ERASURE_TEST_PARTNER_TOKEN", unset)
        with pytest.raises(SettingsError) as ei:
            secret_from_env("ERASURE_TEST_PARTNER_TOKEN", "target 'crm', sync_api.token_env")
        msg = str(ei.value)
        assert "ERASURE_TEST_PARTNER_TOKEN" in msg and "sync_api.token_env" in msg and "crm" in msg
        assert "s3cr3t" not in msg and "hunter2" not in msg


def test_secret_values_are_not_in_setting_errors(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ERASURE_TRACKING_DSN", "postgresql://u:hunter2@h/db")
    clean_env.setenv("ERASURE_SMTP_PASSWORD", "hunter2")
    clean_env.setenv("ERASURE_SMTP_PORT", "x")
    with pytest.raises(SettingsError) as ei:
        get_settings()
    assert "ERASURE_SMTP_PORT" in str(ei.value) and "hunter2" not in str(ei.value)
    # pydantic's own error (which shows every input) is not chained
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_importing_the_product_reads_no_settings() -> None:
    """No import-time reads: importing every core module never builds a Settings."""
    code = (
        "import importlib, pkgutil, erasure, erasure.settings\n"
        "def refuse(*a, **k):\n"
        "    raise RuntimeError('Settings built at import time')\n"
        "erasure.settings.Settings.__init__ = refuse\n"
        "names = [m.name for m in pkgutil.walk_packages(erasure.__path__, 'erasure.')\n"
        "         if not m.name.startswith(('erasure.migrations', 'erasure.airflow'))]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) > 20


# -- only erasure.settings reads the environment ------------------------------------------------


def environment_reads(path: Path) -> list[int]:
    """Lines of every read of the process environment in a module (AST: ``os.environ``, ``os.getenv``,
    ``os.environb``, and ``from os import environ/getenv``), whatever name ``os`` is bound to."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    os_names = {"os"}
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {a.asname or a.name for a in node.names if a.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ENV_NAMES for a in node.names):
                found.add(node.lineno)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ENV_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
        ):
            found.add(node.lineno)
    return sorted(found)


ENV_NAMES = ("environ", "environb", "getenv", "getenvb")


def test_the_scanner_finds_every_form(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import os\nimport os as o\nfrom os import getenv\n"
        "a = os.environ['A']\nb = o.getenv('B')\nc = os.environ.get('C')\nd = getenv('D')\n"
        "e = os.path.join('x')\n",
        encoding="utf-8",
    )
    assert environment_reads(f) == [3, 4, 5, 6]


def test_only_the_settings_module_reads_the_environment() -> None:
    reads = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "settings.py"
        for line in environment_reads(path)
    ]
    assert reads == [], "read the environment through erasure.settings instead: " + ", ".join(reads)
