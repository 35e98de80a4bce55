"""Target kinds come from the adapter registry (``erasure.targets``), not from a CHECK constraint.

A new target kind is one adapter module; the tracking store must not need a migration for it. The
catalog validates ``kind`` against the registry before any task is created.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE erasure.task DROP CONSTRAINT IF EXISTS task_kind_check")
    op.execute(
        "ALTER TABLE erasure.task ADD CONSTRAINT task_kind_name CHECK (kind ~ '^[a-z][a-z0-9_]{0,62}$')"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE erasure.task DROP CONSTRAINT IF EXISTS task_kind_name")
    op.execute(
        "ALTER TABLE erasure.task ADD CONSTRAINT task_kind_check "
        "CHECK (kind IN ('sync_api', 'kafka', 'warehouse_delta', 'postgres_table'))"
    )
