"""Review gate: requests the catalog marks for review wait for a person (``erasure_review`` DAG).

* request status ``in_review``: open (at most one open request per subject: the unique index covers
  it), never dispatched (dispatch takes ``in_progress`` requests only), its SLA clock keeps running;
* ``erasure.review``: one row per request that went through review: the Airflow run and map index of
  the human-in-the-loop task it waits in (claimed once), the decision, who decided, why.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE erasure.request DROP CONSTRAINT IF EXISTS request_status_check;
ALTER TABLE erasure.request ADD CONSTRAINT request_status_check
    CHECK (status IN ('received', 'held', 'in_progress', 'completed', 'failed', 'rejected', 'in_review'));
DROP INDEX IF EXISTS erasure.request_open_subject;
CREATE UNIQUE INDEX request_open_subject ON erasure.request (subject_type, subject_id)
    WHERE status IN ('received', 'held', 'in_progress', 'in_review');

CREATE TABLE erasure.review (
    request_id      bigint      PRIMARY KEY REFERENCES erasure.request (id),
    rule            text        NOT NULL,
    dag_run_id      text        NOT NULL,
    map_index       integer     NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    decision        text        CHECK (decision IN ('approved', 'rejected')),
    decided_by      text,
    decided_at      timestamptz,
    reason          text
);
CREATE INDEX request_in_review ON erasure.request (id) WHERE status = 'in_review';
"""

DOWNGRADE = """
DROP INDEX IF EXISTS erasure.request_in_review;
DROP TABLE IF EXISTS erasure.review;
UPDATE erasure.request SET status = 'received' WHERE status = 'in_review';
DROP INDEX IF EXISTS erasure.request_open_subject;
CREATE UNIQUE INDEX request_open_subject ON erasure.request (subject_type, subject_id)
    WHERE status IN ('received', 'held', 'in_progress');
ALTER TABLE erasure.request DROP CONSTRAINT IF EXISTS request_status_check;
ALTER TABLE erasure.request ADD CONSTRAINT request_status_check
    CHECK (status IN ('received', 'held', 'in_progress', 'completed', 'failed', 'rejected'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
