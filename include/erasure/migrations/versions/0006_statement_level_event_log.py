"""Bulk bookkeeping: the event log is written once per statement, not once per row.

Status changes of ``erasure.task`` and ``erasure.request`` still write the event log in the same
transaction (no code path can forget it), and still one event row per transition with the same columns
and values as migration 0001's row triggers. What changes is how:

* the row-level triggers ``task_event`` and ``request_event`` are replaced by statement-level triggers
  with transition tables (``REFERENCING OLD TABLE ... NEW TABLE``; joined by hash, whatever the calling
  statement set): one ``INSERT INTO erasure.event_log ... SELECT`` per statement, ordered by row id (and,
  per row, the stage event before the status event, as before). A statement moving 500 tasks runs one
  insert of 500 events (one move of the audit head, migration 0003) instead of 500 inserts (500 head
  updates of one row in one transaction: quadratic); transition tables cannot be combined with column
  lists, so the update triggers fire on every update and compare old and new values themselves;
* ``outbox_ack_event`` stays a row trigger on ``UPDATE OF acked_at``: a statement-level one would fire on
  every outbox update and copy each batch the publisher marks published into transition tables (measured:
  the publisher's database path 40% slower), while acks come in polls of at most a few hundred;
* the audit chain's BEFORE INSERT trigger (0003) still locks, numbers and hashes every row — the hash
  expression is 0003's canonical serialisation inlined into the trigger (not a SQL-function call per
  row) — but reads the chain's last link from the table only once per transaction: after the advisory lock is granted, the
  transaction is the only writer until it ends, so it keeps the last seq and hash in a transaction-local
  setting (``erasure.audit_last``). A savepoint rolled back reverts the setting together with the rows it
  covered (and the lock taken inside it), and the maintenance TRUNCATE clears it.

The hash of each row (``erasure.audit_event_hash``, the canonical serialisation) is unchanged, so
``python -m erasure.cli audit verify`` checks rows written before and after this migration alike.

Revision ID: 0006
Revises: 0005
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
LOCK_KEY = 1_708_202_617  # the key of migration 0003
# The triggers join a statement's old and new rows (tuplestores without statistics or indexes). A caller
# that turned hash and merge joins off for its own statement (the outbox publisher does, SET LOCAL) would
# make that a nested loop, quadratic in the statement's rows: the functions set them back on.
JOINS = "SET enable_hashjoin = on SET enable_mergejoin = on"


def _canonical_sql() -> str:
    """Migration 0003's canonical serialisation (the one source), over the trigger's ``NEW`` row."""
    path = Path(__file__).with_name("0003_audit_chain.py")
    spec = importlib.util.spec_from_file_location("erasure_migration_0003", path)
    assert spec is not None and spec.loader is not None
    m0003 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0003)
    sql = str(m0003.CANONICAL_SQL)
    return sql.replace("p_seq", "NEW.seq").replace("p_prev", "NEW.prev_hash").replace("r.", "NEW.")


CANONICAL_NEW = _canonical_sql()

UPGRADE = f"""
DROP TRIGGER IF EXISTS task_event ON erasure.task;
DROP TRIGGER IF EXISTS request_event ON erasure.request;

CREATE FUNCTION erasure.log_task_events_inserted() RETURNS trigger LANGUAGE plpgsql {JOINS} AS $$
BEGIN
    INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt)
    SELECT n.request_id, n.id, n.target, 'task_created', n.status, n.attempts
      FROM new_rows n ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE FUNCTION erasure.log_task_events_updated() RETURNS trigger LANGUAGE plpgsql {JOINS} AS $$
BEGIN
    INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt, details)
    SELECT e.request_id, e.id, e.target, e.event_type, e.status, e.attempts, e.details
      FROM (
        SELECT n.request_id, n.id, n.target,
               CASE n.stage WHEN 'deleted' THEN 'rows_deleted' WHEN 'purged' THEN 'files_purged'
                            ELSE 'vacuumed' END AS event_type,
               n.status, n.attempts, n.evidence AS details, 0 AS ord
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.stage IS DISTINCT FROM o.stage AND n.stage IS NOT NULL
        UNION ALL
        SELECT n.request_id, n.id, n.target,
               CASE n.status
                   WHEN 'in_progress' THEN 'task_dispatched'
                   WHEN 'awaiting_ack' THEN 'event_published'
                   WHEN 'succeeded' THEN 'task_succeeded'
                   WHEN 'failed' THEN 'task_failed'
                   WHEN 'escalated' THEN 'task_escalated'
                   WHEN 'pending' THEN 'task_retried' END,
               n.status, n.attempts,
               CASE WHEN n.last_error IS NOT NULL AND n.status IN ('failed', 'escalated')
                    THEN n.evidence || jsonb_build_object('error', left(n.last_error, 2000))
                    ELSE n.evidence END,
               1
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
      ) e
     WHERE e.event_type IS NOT NULL
     ORDER BY e.id, e.ord;
    RETURN NULL;
END $$;

CREATE TRIGGER task_events_inserted AFTER INSERT ON erasure.task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION erasure.log_task_events_inserted();
CREATE TRIGGER task_events_updated AFTER UPDATE ON erasure.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION erasure.log_task_events_updated();

CREATE FUNCTION erasure.log_request_events_inserted() RETURNS trigger LANGUAGE plpgsql {JOINS} AS $$
BEGIN
    INSERT INTO erasure.event_log (request_id, event_type, status, details)
    SELECT e.id, e.event_type, e.status, e.details
      FROM (
        SELECT n.id, 'request_received' AS event_type, n.status,
               jsonb_build_object('source', n.source, 'jurisdiction', n.jurisdiction, 'due_at', n.due_at)
                   AS details, 0 AS ord
          FROM new_rows n
        UNION ALL
        SELECT n.id, 'request_held', n.status, jsonb_build_object('reason', n.status_reason), 1
          FROM new_rows n WHERE n.status = 'held'
      ) e
     ORDER BY e.id, e.ord;
    RETURN NULL;
END $$;

CREATE FUNCTION erasure.log_request_events_updated() RETURNS trigger LANGUAGE plpgsql {JOINS} AS $$
BEGIN
    INSERT INTO erasure.event_log (request_id, event_type, status, details)
    SELECT e.id, e.event_type, e.status, e.details
      FROM (
        SELECT n.id,
               CASE
                   WHEN n.status = 'held' THEN 'request_held'
                   WHEN o.status = 'held' AND n.status IN ('received', 'in_progress') THEN 'request_released'
                   WHEN n.status = 'completed' THEN 'request_completed'
                   WHEN n.status = 'failed' THEN 'request_failed'
               END AS event_type,
               n.status, jsonb_build_object('reason', n.status_reason) AS details
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
      ) e
     WHERE e.event_type IS NOT NULL
     ORDER BY e.id;
    RETURN NULL;
END $$;

CREATE TRIGGER request_events_inserted AFTER INSERT ON erasure.request
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION erasure.log_request_events_inserted();
CREATE TRIGGER request_events_updated AFTER UPDATE ON erasure.request
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION erasure.log_request_events_updated();

CREATE OR REPLACE FUNCTION erasure.audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE last_seq bigint; last_hash text; cached text;
BEGIN
    -- one writer at a time until commit: one linear chain (migration 0003). The last link is read from
    -- the table once per transaction, after the lock is granted; later rows of the same transaction
    -- take it from erasure.audit_last (transaction-local: reverted with a rolled-back savepoint).
    cached := current_setting('erasure.audit_last', true);
    IF cached IS NULL OR cached = '' THEN
        PERFORM pg_advisory_xact_lock({LOCK_KEY});
        SELECT seq, hash INTO last_seq, last_hash FROM erasure.event_log ORDER BY seq DESC LIMIT 1;
        IF NOT FOUND THEN
            last_seq := 0;
            last_hash := '{GENESIS}';
        END IF;
    ELSE
        last_seq := split_part(cached, ':', 1)::bigint;
        last_hash := split_part(cached, ':', 2);
    END IF;
    NEW.seq := last_seq + 1;
    NEW.prev_hash := last_hash;
    -- erasure.audit_event_hash(NEW, NEW.seq, NEW.prev_hash), inlined: a plpgsql expression instead of
    -- a SQL-function call per row (half the chain's cost); the same text, so the same hash
    NEW.hash := encode(sha256(convert_to({CANONICAL_NEW}, 'UTF8')), 'hex');
    PERFORM set_config('erasure.audit_last', NEW.seq || ':' || NEW.hash, true);
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION erasure.audit_guard_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF COALESCE(current_setting('erasure.audit_maintenance', true), '') <> 'truncate' THEN
        RAISE EXCEPTION '%.% is append-only: TRUNCATE refused', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'maintenance only: SET LOCAL erasure.audit_maintenance = ''truncate'' (docs/evidence.md)';
    END IF;
    IF TG_TABLE_NAME = 'event_log' THEN
        UPDATE erasure.audit_head SET seq = 0, hash = '{GENESIS}' WHERE id = 1;
        PERFORM set_config('erasure.audit_last', '', true);
    END IF;
    RETURN NULL;
END $$;
"""  # noqa: S608 - constants only (GENESIS, LOCK_KEY)

DOWNGRADE = f"""
DROP TRIGGER IF EXISTS task_events_inserted ON erasure.task;
DROP TRIGGER IF EXISTS task_events_updated ON erasure.task;
DROP TRIGGER IF EXISTS request_events_inserted ON erasure.request;
DROP TRIGGER IF EXISTS request_events_updated ON erasure.request;
DROP FUNCTION IF EXISTS erasure.log_task_events_inserted(), erasure.log_task_events_updated(),
    erasure.log_request_events_inserted(), erasure.log_request_events_updated();

CREATE TRIGGER request_event AFTER INSERT OR UPDATE OF status ON erasure.request
    FOR EACH ROW EXECUTE FUNCTION erasure.log_request_event();
CREATE TRIGGER task_event AFTER INSERT OR UPDATE OF status, stage ON erasure.task
    FOR EACH ROW EXECUTE FUNCTION erasure.log_task_event();

CREATE OR REPLACE FUNCTION erasure.audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE last_seq bigint; last_hash text;
BEGIN
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

CREATE OR REPLACE FUNCTION erasure.audit_guard_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""  # noqa: S608 - constants only


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
