"""Settings read from the environment (see scripts/env.sh); no secrets in code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise RuntimeError(f"environment variable {name} is not set (source scripts/env.sh or set it)")
    return value


@dataclass(frozen=True)
class Settings:
    tracking_dsn: str
    kafka_bootstrap: str
    catalog_path: Path
    spark_master: str
    spark_jars_dir: Path
    warehouse_dir: Path
    dataset_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        local = Path(os.environ.get("ERASURE_LOCAL", ROOT / ".local"))
        return cls(
            tracking_dsn=_env("ERASURE_TRACKING_DSN"),
            kafka_bootstrap=os.environ.get("ERASURE_KAFKA_BOOTSTRAP", "127.0.0.1:59092"),
            catalog_path=Path(os.environ.get("ERASURE_CATALOG", ROOT / "include" / "catalog")),
            spark_master=os.environ.get("ERASURE_SPARK_MASTER", "local[*]"),
            spark_jars_dir=Path(os.environ.get("ERASURE_SPARK_JARS_DIR", local / "jars")),
            warehouse_dir=Path(os.environ.get("ERASURE_WAREHOUSE_DIR", local / "warehouse")),
            dataset_dir=Path(os.environ.get("ERASURE_DATASET_DIR", local / "datasets")),
        )


def tracking_dsn() -> str:
    return _env("ERASURE_TRACKING_DSN")
