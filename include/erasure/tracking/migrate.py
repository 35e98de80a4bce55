"""Apply or roll back the tracking-store migrations (Alembic) on a DSN (always given by the caller)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from erasure.db import sqlalchemy_url

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def _config(dsn: str) -> Config:
    if not dsn or not isinstance(dsn, str):
        raise ValueError(f"dsn: the tracking store's DSN is required to run migrations, got {dsn!r}")
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    command.upgrade(_config(dsn), revision)


def downgrade(dsn: str, revision: str = "base") -> None:
    command.downgrade(_config(dsn), revision)
