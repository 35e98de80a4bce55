"""Tamper-evident audit log (hash chain over ``erasure.event_log``) and issued receipts.

* every event row gets a global ``seq`` and ``prev_hash``/``hash`` (SHA-256, hex) set by a BEFORE INSERT
  trigger over the canonical serialisation of the row (:data:`erasure.evidence.audit.CANONICAL_DOC`);
  concurrent inserts are serialised by a transaction-scoped advisory lock, so the chain is linear
  (``UNIQUE (seq)`` turns any writer that could not see the newest row into an error, never a fork);
  ``erasure.audit_head`` records the last seq and hash (moved once per statement);
* UPDATE and DELETE on the event log are refused (row trigger) and revoked from PUBLIC; TRUNCATE is
  refused too unless the session says ``SET LOCAL erasure.audit_maintenance = 'truncate'`` (the
  documented maintenance path: test fixtures, a deliberate reset), which also resets the head;
* the event log's foreign key to ``erasure.request`` no longer cascades: events survive (a request with
  events cannot be deleted);
* ``erasure.receipt``: one signed receipt per completed request, immutable.

Existing rows are chained in (occurred_at, event_id) order.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
LOCK_KEY = 1_708_202_617  # pg_advisory_xact_lock key of the chain's writers

# The canonical serialisation of an event row: a JSON array of strings (or null), without whitespace.
# erasure.evidence.audit.canonical_event reproduces it byte for byte; keep both in step (version "v1").
CANONICAL_SQL = """
'[' || concat_ws(',',
    to_json('erasure-audit-v1'::text)::text,
    to_json(p_seq::text)::text,
    to_json(p_prev::text)::text,
    COALESCE(to_json(r.event_id::text)::text, 'null'),
    COALESCE(to_json(r.request_id::text)::text, 'null'),
    COALESCE(to_json(r.task_id::text)::text, 'null'),
    COALESCE(to_json(r.target::text)::text, 'null'),
    COALESCE(to_json(r.event_type::text)::text, 'null'),
    COALESCE(to_json(r.status::text)::text, 'null'),
    COALESCE(to_json(r.attempt::text)::text, 'null'),
    COALESCE(to_json(to_char(r.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text, 'null'),
    COALESCE(to_json(r.details::text)::text, 'null')
) || ']'
"""

UPGRADE = f"""
CREATE TABLE erasure.audit_head (
    id      integer PRIMARY KEY CHECK (id = 1),
    seq     bigint  NOT NULL,
    hash    text    NOT NULL
);

CREATE FUNCTION erasure.audit_event_hash(r erasure.event_log, p_seq bigint, p_prev text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to({CANONICAL_SQL}, 'UTF8')), 'hex')
$$;

ALTER TABLE erasure.event_log ADD COLUMN seq bigint, ADD COLUMN prev_hash text, ADD COLUMN hash text;

-- chain the rows written before this migration
DO $$
DECLARE r erasure.event_log; n bigint := 0; h text := '{GENESIS}'; nh text;
BEGIN
    FOR r IN SELECT * FROM erasure.event_log ORDER BY occurred_at, event_id LOOP
        n := n + 1;
        nh := erasure.audit_event_hash(r, n, h);
        UPDATE erasure.event_log SET seq = n, prev_hash = h, hash = nh WHERE event_id = r.event_id;
        h := nh;
    END LOOP;
    INSERT INTO erasure.audit_head (id, seq, hash) VALUES (1, n, h);
END $$;

ALTER TABLE erasure.event_log ALTER COLUMN seq SET NOT NULL, ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL,
    ADD CONSTRAINT event_log_seq_unique UNIQUE (seq),
    ADD CONSTRAINT event_log_hash_format CHECK (hash ~ '^[0-9a-f]{{64}}$' AND prev_hash ~ '^[0-9a-f]{{64}}$');
CREATE INDEX event_log_request_seq ON erasure.event_log (request_id, seq);

CREATE FUNCTION erasure.audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE last_seq bigint; last_hash text;
BEGIN
    -- one writer at a time until commit: one linear chain. The last row is read after the lock is
    -- granted (READ COMMITTED: a fresh snapshot; earlier rows of the same statement are visible);
    -- a REPEATABLE READ writer that cannot see the newest row fails on UNIQUE (seq) instead of forking.
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    SELECT seq, hash INTO last_seq, last_hash FROM erasure.event_log ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        last_seq := 0;
        last_hash := '{GENESIS}';
    END IF;
    NEW.seq := last_seq + 1;
    NEW.prev_hash := last_hash;
    NEW.hash := erasure.audit_event_hash(NEW, NEW.seq, NEW.prev_hash);
    RETURN NEW;
END $$;

CREATE TRIGGER event_log_chain BEFORE INSERT ON erasure.event_log
    FOR EACH ROW EXECUTE FUNCTION erasure.audit_chain();

-- the recorded head (last seq and hash), moved once per statement: deleting the newest rows behind the
-- triggers' back leaves the head pointing past the end, which audit verify reports
CREATE FUNCTION erasure.audit_move_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE erasure.audit_head h SET seq = n.seq, hash = n.hash
      FROM (SELECT seq, hash FROM new_rows ORDER BY seq DESC LIMIT 1) n
     WHERE h.id = 1 AND n.seq > h.seq;
    RETURN NULL;
END $$;

CREATE TRIGGER event_log_head AFTER INSERT ON erasure.event_log
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION erasure.audit_move_head();

CREATE FUNCTION erasure.audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'the audit log is hash-chained; see docs/evidence.md';
END $$;

CREATE TRIGGER event_log_append_only BEFORE UPDATE OR DELETE ON erasure.event_log
    FOR EACH ROW EXECUTE FUNCTION erasure.audit_refuse_change();

CREATE FUNCTION erasure.audit_guard_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF COALESCE(current_setting('erasure.audit_maintenance', true), '') <> 'truncate' THEN
        RAISE EXCEPTION '%.% is append-only: TRUNCATE refused', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'maintenance only: SET LOCAL erasure.audit_maintenance = ''truncate'' (docs/evidence.md)';
    END IF;
    IF TG_TABLE_NAME = 'event_log' THEN
        UPDATE erasure.audit_head SET seq = 0, hash = '{GENESIS}' WHERE id = 1;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON erasure.event_log
    FOR EACH STATEMENT EXECUTE FUNCTION erasure.audit_guard_truncate();

REVOKE UPDATE, DELETE, TRUNCATE ON erasure.event_log FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON erasure.audit_head FROM PUBLIC;

-- events survive their request
ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_request_id_fkey;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_request_id_fkey
    FOREIGN KEY (request_id) REFERENCES erasure.request (id);

-- issued receipts: one per completed request, never changed
CREATE TABLE erasure.receipt (
    request_id      bigint      PRIMARY KEY REFERENCES erasure.request (id),
    receipt_id      text        NOT NULL UNIQUE,
    key_id          text        NOT NULL,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    audit_hash      text        NOT NULL,
    document        text        NOT NULL
);
CREATE INDEX receipt_issued ON erasure.receipt (issued_at);

CREATE TRIGGER receipt_append_only BEFORE UPDATE OR DELETE ON erasure.receipt
    FOR EACH ROW EXECUTE FUNCTION erasure.audit_refuse_change();
CREATE TRIGGER receipt_no_truncate BEFORE TRUNCATE ON erasure.receipt
    FOR EACH STATEMENT EXECUTE FUNCTION erasure.audit_guard_truncate();
REVOKE UPDATE, DELETE, TRUNCATE ON erasure.receipt FROM PUBLIC;
"""  # noqa: S608 - constants only (CANONICAL_SQL, GENESIS)

DOWNGRADE = """
DROP TABLE IF EXISTS erasure.receipt;
DROP TRIGGER IF EXISTS event_log_chain ON erasure.event_log;
DROP TRIGGER IF EXISTS event_log_head ON erasure.event_log;
DROP TRIGGER IF EXISTS event_log_append_only ON erasure.event_log;
DROP TRIGGER IF EXISTS event_log_no_truncate ON erasure.event_log;
DROP FUNCTION IF EXISTS erasure.audit_chain(), erasure.audit_move_head(), erasure.audit_refuse_change(),
    erasure.audit_guard_truncate();
DROP INDEX IF EXISTS erasure.event_log_request_seq;
ALTER TABLE erasure.event_log DROP COLUMN IF EXISTS seq, DROP COLUMN IF EXISTS prev_hash,
    DROP COLUMN IF EXISTS hash;
DROP FUNCTION IF EXISTS erasure.audit_event_hash(erasure.event_log, bigint, text);
DROP TABLE IF EXISTS erasure.audit_head;
ALTER TABLE erasure.event_log DROP CONSTRAINT IF EXISTS event_log_request_id_fkey;
ALTER TABLE erasure.event_log ADD CONSTRAINT event_log_request_id_fkey
    FOREIGN KEY (request_id) REFERENCES erasure.request (id) ON DELETE CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
