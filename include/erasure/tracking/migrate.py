"""Apply or roll back the tracking-store migrations (Alembic) on a DSN."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from erasure.config import tracking_dsn
from erasure.db import sqlalchemy_url

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def _config(dsn: str | None) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn or tracking_dsn()).replace("%", "%%"))
    return cfg


def upgrade(dsn: str | None = None, revision: str = "head") -> None:
    command.upgrade(_config(dsn), revision)


def downgrade(dsn: str | None = None, revision: str = "base") -> None:
    command.downgrade(_config(dsn), revision)
