"""Tracking store: requests, tasks per catalog target, outbox, acks, event log, intake, holds, alerts, canary.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE erasure.request (
    id              bigserial PRIMARY KEY,
    external_id     text        NOT NULL UNIQUE,
    subject_type    text        NOT NULL,
    subject_id      text        NOT NULL,
    requested_by    text        NOT NULL,
    reason          text,
    jurisdiction    text        NOT NULL DEFAULT 'GDPR',
    source          text        NOT NULL CHECK (source IN ('api', 'intake_table', 'canary', 'cli')),
    is_canary       boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL CHECK (status IN ('received', 'held', 'in_progress', 'completed', 'failed', 'rejected')),
    status_reason   text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL,
    completed_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    airflow_run_id  text
);
-- one open request per subject: the second submission is a duplicate
CREATE UNIQUE INDEX request_open_subject ON erasure.request (subject_type, subject_id)
    WHERE status IN ('received', 'held', 'in_progress');
CREATE INDEX request_status_due ON erasure.request (status, due_at);

CREATE TABLE erasure.rejected_request (
    id              bigserial PRIMARY KEY,
    source          text        NOT NULL,
    external_id     text,
    payload         jsonb       NOT NULL,
    errors          jsonb       NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    airflow_run_id  text
);

CREATE TABLE erasure.task (
    id              bigserial PRIMARY KEY,
    request_id      bigint      NOT NULL REFERENCES erasure.request (id) ON DELETE CASCADE,
    target          text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('sync_api', 'kafka', 'warehouse_delta', 'postgres_table')),
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_progress', 'awaiting_ack', 'succeeded', 'failed', 'escalated')),
    stage           text        CHECK (stage IN ('deleted', 'purged', 'vacuumed')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    evidence        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (request_id, target)
);
CREATE INDEX task_due ON erasure.task (target, next_attempt_at) WHERE status IN ('pending', 'failed', 'in_progress');
CREATE INDEX task_status ON erasure.task (status);

CREATE TABLE erasure.outbox (
    event_id        uuid        PRIMARY KEY,
    task_id         bigint      NOT NULL REFERENCES erasure.task (id) ON DELETE CASCADE,
    topic           text        NOT NULL,
    message_key     text        NOT NULL,
    payload         jsonb       NOT NULL,
    attempt         integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    publish_count   integer     NOT NULL DEFAULT 0,
    kafka_partition integer,
    kafka_offset    bigint,
    acked_at        timestamptz,
    ack             jsonb
);
CREATE INDEX outbox_unpublished ON erasure.outbox (created_at) WHERE published_at IS NULL;
CREATE INDEX outbox_unacked ON erasure.outbox (published_at) WHERE acked_at IS NULL;
CREATE INDEX outbox_task ON erasure.outbox (task_id);

CREATE TABLE erasure.ack_log (
    id              bigserial PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    event_id        uuid,
    target          text,
    outcome         text,
    status          text        NOT NULL CHECK (status IN ('matched', 'duplicate', 'unknown', 'malformed', 'mismatch')),
    error           text,
    raw             text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);

-- Append-only log of everything that happened; the source of the Delta event dataset.
CREATE TABLE erasure.event_log (
    event_id        uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id      bigint      REFERENCES erasure.request (id) ON DELETE CASCADE,
    task_id         bigint,
    target          text,
    event_type      text        NOT NULL CHECK (event_type IN (
                        'request_received', 'request_held', 'request_released', 'request_completed',
                        'request_failed', 'task_created', 'task_dispatched', 'event_published',
                        'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
                        'task_failed', 'task_escalated', 'task_retried', 'event_replayed')),
    status          text,
    attempt         integer,
    occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX event_log_occurred ON erasure.event_log (occurred_at);
CREATE INDEX event_log_request ON erasure.event_log (request_id);

-- The intake table: the integration contract for upstream systems (see docs/intake.md).
CREATE TABLE erasure.intake (
    id              bigserial PRIMARY KEY,
    external_id     text,
    subject_type    text,
    subject_id      text,
    requested_by    text,
    reason          text,
    jurisdiction    text,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'registered', 'duplicate', 'rejected')),
    processed_at    timestamptz,
    request_id      bigint      REFERENCES erasure.request (id),
    error           text
);
CREATE INDEX intake_pending ON erasure.intake (id) WHERE status = 'pending';

CREATE TABLE erasure.legal_hold (
    id              bigserial PRIMARY KEY,
    subject_type    text        NOT NULL,
    subject_id      text        NOT NULL,
    reason          text        NOT NULL,
    placed_by       text        NOT NULL,
    placed_at       timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz,
    released_by     text
);
CREATE UNIQUE INDEX legal_hold_active ON erasure.legal_hold (subject_type, subject_id) WHERE released_at IS NULL;

CREATE TABLE erasure.alert (
    id              bigserial PRIMARY KEY,
    dedupe_key      text        NOT NULL UNIQUE,
    kind            text        NOT NULL,
    team            text        NOT NULL,
    channel         text        NOT NULL,
    request_id      bigint      REFERENCES erasure.request (id) ON DELETE CASCADE,
    task_id         bigint,
    target          text,
    message         text        NOT NULL,
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    send_attempts   integer     NOT NULL DEFAULT 0,
    send_error      text
);

CREATE TABLE erasure.canary_subject (
    subject_id      text        PRIMARY KEY,
    subject_type    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    erase_after     timestamptz NOT NULL,
    request_id      bigint      REFERENCES erasure.request (id),
    requested_at    timestamptz,
    verified_at     timestamptz,
    result          text        CHECK (result IN ('pass', 'fail')),
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE erasure.canary_check (
    subject_id      text        NOT NULL REFERENCES erasure.canary_subject (subject_id) ON DELETE CASCADE,
    target          text        NOT NULL,
    seeded_at       timestamptz NOT NULL DEFAULT now(),
    verified_at     timestamptz,
    passed          boolean,
    detail          text,
    PRIMARY KEY (subject_id, target)
);

-- Status changes write the event log in the same transaction: no code path can forget it.
CREATE FUNCTION erasure.log_request_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE et text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        et := CASE NEW.status WHEN 'held' THEN 'request_held' ELSE 'request_received' END;
        INSERT INTO erasure.event_log (request_id, event_type, status, details)
        VALUES (NEW.id, 'request_received', NEW.status,
                jsonb_build_object('source', NEW.source, 'jurisdiction', NEW.jurisdiction, 'due_at', NEW.due_at));
        IF et = 'request_held' THEN
            INSERT INTO erasure.event_log (request_id, event_type, status, details)
            VALUES (NEW.id, et, NEW.status, jsonb_build_object('reason', NEW.status_reason));
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        et := CASE
            WHEN NEW.status = 'held' THEN 'request_held'
            WHEN OLD.status = 'held' AND NEW.status IN ('received', 'in_progress') THEN 'request_released'
            WHEN NEW.status = 'completed' THEN 'request_completed'
            WHEN NEW.status = 'failed' THEN 'request_failed'
            ELSE NULL END;
        IF et IS NOT NULL THEN
            INSERT INTO erasure.event_log (request_id, event_type, status, details)
            VALUES (NEW.id, et, NEW.status, jsonb_build_object('reason', NEW.status_reason));
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER request_event AFTER INSERT OR UPDATE OF status ON erasure.request
    FOR EACH ROW EXECUTE FUNCTION erasure.log_request_event();

CREATE FUNCTION erasure.log_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE et text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt)
        VALUES (NEW.request_id, NEW.id, NEW.target, 'task_created', NEW.status, NEW.attempts);
        RETURN NEW;
    END IF;
    IF NEW.stage IS DISTINCT FROM OLD.stage AND NEW.stage IS NOT NULL THEN
        INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt, details)
        VALUES (NEW.request_id, NEW.id, NEW.target,
                CASE NEW.stage WHEN 'deleted' THEN 'rows_deleted' WHEN 'purged' THEN 'files_purged' ELSE 'vacuumed' END,
                NEW.status, NEW.attempts, NEW.evidence);
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        et := CASE NEW.status
            WHEN 'in_progress' THEN 'task_dispatched'
            WHEN 'awaiting_ack' THEN 'event_published'
            WHEN 'succeeded' THEN 'task_succeeded'
            WHEN 'failed' THEN 'task_failed'
            WHEN 'escalated' THEN 'task_escalated'
            WHEN 'pending' THEN 'task_retried'
            ELSE NULL END;
        IF et IS NOT NULL THEN
            INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt, details)
            VALUES (NEW.request_id, NEW.id, NEW.target, et, NEW.status, NEW.attempts,
                    CASE WHEN NEW.last_error IS NOT NULL AND NEW.status IN ('failed', 'escalated')
                         THEN NEW.evidence || jsonb_build_object('error', left(NEW.last_error, 2000))
                         ELSE NEW.evidence END);
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER task_event AFTER INSERT OR UPDATE OF status, stage ON erasure.task
    FOR EACH ROW EXECUTE FUNCTION erasure.log_task_event();

CREATE FUNCTION erasure.log_ack_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.acked_at IS NOT NULL AND OLD.acked_at IS NULL THEN
        INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt, details)
        SELECT t.request_id, t.id, t.target, 'ack_received', NEW.ack ->> 'outcome', NEW.attempt,
               jsonb_build_object('kafka_event_id', NEW.event_id) || COALESCE(NEW.ack, '{}'::jsonb)
        FROM erasure.task t WHERE t.id = NEW.task_id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_ack_event AFTER UPDATE OF acked_at ON erasure.outbox
    FOR EACH ROW EXECUTE FUNCTION erasure.log_ack_event();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS erasure.canary_check, erasure.canary_subject, erasure.alert, erasure.legal_hold,
    erasure.intake, erasure.event_log, erasure.ack_log, erasure.outbox, erasure.task,
    erasure.rejected_request, erasure.request CASCADE;
DROP FUNCTION IF EXISTS erasure.log_request_event(), erasure.log_task_event(), erasure.log_ack_event();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
