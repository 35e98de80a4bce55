"""Operator actions from the Erasure view of the Airflow UI, audited.

* ``erasure.operator_action``: who (the Airflow user) did what (:class:`erasure.vocab.OperatorAction`),
  why, and on which requests, task, target or legal hold; append-only (UPDATE/DELETE refused like the
  event log, TRUNCATE only under ``erasure.audit_maintenance``);
* event type ``operator_action``: the same action in the hash-chained event log, once per request it
  concerns (details: action, actor, reason, the action's id).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_event_type_check;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_event_type_check CHECK (event_type IN (
    'request_received', 'request_held', 'request_released', 'request_completed',
    'request_failed', 'task_created', 'task_dispatched', 'event_published',
    'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
    'task_failed', 'task_escalated', 'task_retried', 'event_replayed', 'operator_action'));

CREATE TABLE erasure.operator_action (
    id              bigserial   PRIMARY KEY,
    occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor           text        NOT NULL,
    action          text        NOT NULL CHECK (action IN (
                        'hold_placed', 'hold_released', 'task_rerun', 'event_replay', 'request_withdrawn',
                        'review_approved', 'review_rejected')),
    reason          text        NOT NULL,
    request_ids     bigint[]    NOT NULL DEFAULT '{}',
    task_id         bigint,
    target          text,
    hold_id         bigint,
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX operator_action_requests ON erasure.operator_action USING gin (request_ids);

CREATE TRIGGER operator_action_append_only BEFORE UPDATE OR DELETE ON erasure.operator_action
    FOR EACH ROW EXECUTE FUNCTION erasure.audit_refuse_change();
CREATE TRIGGER operator_action_no_truncate BEFORE TRUNCATE ON erasure.operator_action
    FOR EACH STATEMENT EXECUTE FUNCTION erasure.audit_guard_truncate();
REVOKE UPDATE, DELETE, TRUNCATE ON erasure.operator_action FROM PUBLIC;
"""

DOWNGRADE = """
DROP TABLE IF EXISTS erasure.operator_action;
ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_event_type_check;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_event_type_check CHECK (event_type IN (
    'request_received', 'request_held', 'request_released', 'request_completed',
    'request_failed', 'task_created', 'task_dispatched', 'event_published',
    'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
    'task_failed', 'task_escalated', 'task_retried', 'event_replayed')) NOT VALID;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
