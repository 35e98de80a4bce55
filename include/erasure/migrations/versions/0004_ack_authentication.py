"""Authenticated acks: an ack without a valid signature of its target is recorded as ``unauthenticated``.

Acks on ``erasure.acks`` carry an HMAC-SHA256 signature (header ``erasure-signature``) with a key per
partner target (``erasure.ack_auth``); one that is unsigned, wrongly signed or signed for another target
is recorded in ``erasure.ack_log`` with status ``unauthenticated`` and never closes a task.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE erasure.ack_log DROP CONSTRAINT IF EXISTS ack_log_status_check;
ALTER TABLE erasure.ack_log ADD CONSTRAINT ack_log_status_check
    CHECK (status IN ('matched', 'duplicate', 'unknown', 'malformed', 'mismatch', 'unauthenticated'));
"""

DOWNGRADE = """
DELETE FROM erasure.ack_log WHERE status = 'unauthenticated';
ALTER TABLE erasure.ack_log DROP CONSTRAINT IF EXISTS ack_log_status_check;
ALTER TABLE erasure.ack_log ADD CONSTRAINT ack_log_status_check
    CHECK (status IN ('matched', 'duplicate', 'unknown', 'malformed', 'mismatch'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
