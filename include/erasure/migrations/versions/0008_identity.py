"""Identity resolution (docs/identity.md): a request's identifiers, sealed, and how they were found.

* request status ``resolving``: open, never dispatched; its identity is being expanded by the
  catalog's resolvers (``erasure.resolution``); released to ``in_progress`` (or ``held`` /
  ``in_review``) at a fixed point;
* ``erasure.identity``: one row per identifier of a request: its type, a keyed HMAC ``digest`` (what
  holds, duplicates and searches match on), the value sealed with AES-256-GCM (``sealed``), where it
  came from (``source``: ``request`` or a resolver, ``parent_id`` the identifier it was found from);
* ``erasure.resolution``: per request and resolver, its state (retries, escalation), counts and
  ``lookup_cursor``: the resolver has looked up the request's identifiers up to this identity id;
* ``erasure.legal_hold.digest``: a hold may name any identifier (matched by digest after resolution);
* ``erasure.intake.identifiers``: upstream systems may file a request by identifiers too;
* event type ``identity_resolved``: the request's identity set reached a fixed point (counts per type
  and resolver in ``details``, never a value).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE erasure.request DROP CONSTRAINT IF EXISTS request_status_check;
ALTER TABLE erasure.request ADD CONSTRAINT request_status_check
    CHECK (status IN ('received', 'held', 'in_progress', 'completed', 'failed', 'rejected', 'in_review',
                      'resolving'));
DROP INDEX IF EXISTS erasure.request_open_subject;
CREATE UNIQUE INDEX request_open_subject ON erasure.request (subject_type, subject_id)
    WHERE status IN ('received', 'held', 'in_progress', 'in_review', 'resolving');
CREATE INDEX request_resolving ON erasure.request (id) WHERE status = 'resolving';

ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_event_type_check;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_event_type_check CHECK (event_type IN (
    'request_received', 'request_held', 'request_released', 'request_completed',
    'request_failed', 'task_created', 'task_dispatched', 'event_published',
    'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
    'task_failed', 'task_escalated', 'task_retried', 'event_replayed', 'operator_action', 'identity_resolved'));

CREATE TABLE erasure.identity (
    id              bigserial   PRIMARY KEY,
    request_id      bigint      NOT NULL REFERENCES erasure.request (id) ON DELETE CASCADE,
    id_type         text        NOT NULL CHECK (id_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    digest          text        NOT NULL,
    sealed          bytea       NOT NULL,
    source          text        NOT NULL,
    parent_id       bigint,     -- the identity row it was found from (no FK: written in bulk, same request)
    depth           integer     NOT NULL DEFAULT 0 CHECK (depth >= 0),
    found_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, id_type, digest)
);
CREATE INDEX identity_digest ON erasure.identity (digest);

CREATE TABLE erasure.resolution (
    request_id      bigint      NOT NULL REFERENCES erasure.request (id) ON DELETE CASCADE,
    resolver        text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'done', 'failed', 'escalated')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    lookup_cursor   bigint      NOT NULL DEFAULT 0,
    looked_up       integer     NOT NULL DEFAULT 0,
    found           integer     NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, resolver)
);

ALTER TABLE erasure.legal_hold ADD COLUMN digest text;
ALTER TABLE erasure.intake ADD COLUMN identifiers jsonb;
CREATE INDEX legal_hold_digest ON erasure.legal_hold (digest) WHERE released_at IS NULL;
"""

DOWNGRADE = """
DROP INDEX IF EXISTS erasure.legal_hold_digest;
ALTER TABLE erasure.legal_hold DROP COLUMN IF EXISTS digest;
ALTER TABLE erasure.intake DROP COLUMN IF EXISTS identifiers;
DROP TABLE IF EXISTS erasure.resolution;
DROP TABLE IF EXISTS erasure.identity;
ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_event_type_check;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_event_type_check CHECK (event_type IN (
    'request_received', 'request_held', 'request_released', 'request_completed',
    'request_failed', 'task_created', 'task_dispatched', 'event_published',
    'ack_received', 'rows_deleted', 'files_purged', 'vacuumed', 'task_succeeded',
    'task_failed', 'task_escalated', 'task_retried', 'event_replayed', 'operator_action'))
    NOT VALID;
DROP INDEX IF EXISTS erasure.request_resolving;
UPDATE erasure.request SET status = 'received' WHERE status = 'resolving';
DROP INDEX IF EXISTS erasure.request_open_subject;
CREATE UNIQUE INDEX request_open_subject ON erasure.request (subject_type, subject_id)
    WHERE status IN ('received', 'held', 'in_progress', 'in_review');
ALTER TABLE erasure.request DROP CONSTRAINT IF EXISTS request_status_check;
ALTER TABLE erasure.request ADD CONSTRAINT request_status_check
    CHECK (status IN ('received', 'held', 'in_progress', 'completed', 'failed', 'rejected', 'in_review'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
