"""Alembic environment for the tracking store. The URL comes from the caller (erasure.tracking.migrate)."""

from alembic import context
from sqlalchemy import create_engine, text

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError(
        "no sqlalchemy.url: run migrations through erasure.tracking.migrate.upgrade(dsn) "
        "or `python -m erasure.cli db upgrade`"
    )
engine = create_engine(url)
with engine.begin() as conn:
    conn.execute(text("CREATE SCHEMA IF NOT EXISTS erasure"))
    context.configure(
        connection=conn,
        version_table="alembic_version",
        version_table_schema="erasure",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
