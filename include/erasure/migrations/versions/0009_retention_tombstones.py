"""Minimisation and the suppression ledger (docs/personal-data.md).

* ``erasure.request.minimised_at``: when the retention job replaced the request's raw identifiers by
  keyed hashes in every table of the tracking store (``erasure.retention``);
* ``erasure.identity.sealed`` may be NULL: the sealed value is dropped at minimisation, the keyed
  ``digest`` stays;
* ``erasure.tombstone``: the suppression ledger. One row per identifier of every completed erasure:
  its keyed hash (HMAC-SHA256 of ``type:value``), the completion time and the targets, never a value;
  ``reapply`` uses it to erase people again after a backup restore;
* ``erasure.restore``: restores recorded by operators (``reapply --record``), each re-applied once by
  the scheduled check;
* event types ``identifiers_minimised`` and ``erasure_reapplied`` (counts in ``details``, never a
  value).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE erasure.request ADD COLUMN minimised_at timestamptz;
CREATE INDEX request_to_minimise ON erasure.request (completed_at)
    WHERE minimised_at IS NULL AND status IN ('completed', 'rejected');
ALTER TABLE erasure.identity ALTER COLUMN sealed DROP NOT NULL;

ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_event_type_check;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_event_type_check CHECK (event_type IN (
    'request_received', 'request_held', 'request_released', 'request_completed',
    'request_failed', 'task_created', 'task_dispatched', 'event_published',
    'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
    'task_failed', 'task_escalated', 'task_retried', 'event_replayed', 'operator_action', 'identity_resolved',
    'identifiers_minimised', 'erasure_reapplied'));

CREATE TABLE erasure.tombstone (
    request_id      bigint      NOT NULL,  -- no FK: the ledger outlives the request's metadata
    subject_type    text        NOT NULL,
    id_type         text        NOT NULL,
    digest          text        NOT NULL CHECK (digest ~ '^hmac-sha256:[0-9a-f]{64}$'),
    completed_at    timestamptz NOT NULL,
    targets         text[]      NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, id_type, digest)
);
CREATE INDEX tombstone_completed ON erasure.tombstone (completed_at);
CREATE INDEX tombstone_digest ON erasure.tombstone (digest);

CREATE TABLE erasure.restore (
    id              bigserial   PRIMARY KEY,
    restored_at     timestamptz NOT NULL,   -- the point in time of the backup that was restored
    targets         text[],                 -- NULL: every target
    recorded_by     text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    reapplied_at    timestamptz,
    result          jsonb
);
CREATE INDEX restore_pending ON erasure.restore (id) WHERE reapplied_at IS NULL;
"""

DOWNGRADE = """
DROP TABLE IF EXISTS erasure.restore;
DROP TABLE IF EXISTS erasure.tombstone;
ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_event_type_check;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_event_type_check CHECK (event_type IN (
    'request_received', 'request_held', 'request_released', 'request_completed',
    'request_failed', 'task_created', 'task_dispatched', 'event_published',
    'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
    'task_failed', 'task_escalated', 'task_retried', 'event_replayed', 'operator_action', 'identity_resolved'))
    NOT VALID;
DELETE FROM erasure.identity WHERE sealed IS NULL;
ALTER TABLE erasure.identity ALTER COLUMN sealed SET NOT NULL;
DROP INDEX IF EXISTS erasure.request_to_minimise;
ALTER TABLE erasure.request DROP COLUMN IF EXISTS minimised_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
