"""A demo partner's own data store (SQLite file per partner): the personal data it holds, the
deletions it performed (with idempotency keys and the deletion id answered), and test subjects created
for the canary. A deletion and its idempotency key are written in one transaction, so a partner restarted
after a delete it could not report still answers a retry of the same key with the first outcome."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


class PartnerStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS subject (
                subject_id TEXT PRIMARY KEY, data TEXT NOT NULL, is_test INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS deletion (
                id INTEGER PRIMARY KEY AUTOINCREMENT, subject_id TEXT NOT NULL, existed INTEGER NOT NULL,
                idempotency_key TEXT, deleted_at REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS deletion_subject ON deletion(subject_id);
            """
        )
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(deletion)")}
        if "deletion_id" not in columns:  # a store written before deletion ids were kept
            self._db.execute("ALTER TABLE deletion ADD COLUMN deletion_id TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS deletion_idem ON deletion(idempotency_key)")

    def put(self, subject_id: str, data: dict[str, Any], is_test: bool = False) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO subject(subject_id, data, is_test, created_at) VALUES (?,?,?,?) "
                "ON CONFLICT(subject_id) DO UPDATE SET data=excluded.data, is_test=excluded.is_test",
                (subject_id, json.dumps(data), int(is_test), time.time()),
            )

    def put_many(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO subject(subject_id, data, is_test, created_at) VALUES (?,?,0,?)",
                [(s, json.dumps(d), now) for s, d in rows],
            )
            self._db.execute("COMMIT")

    def get(self, subject_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM subject WHERE subject_id=?", (subject_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete(
        self, subject_id: str, idempotency_key: str | None = None, deletion_id: str | None = None
    ) -> bool:
        """Delete a subject's data; returns whether it existed. Every call is logged (with the key and
        the deletion id answered) in the same transaction as the delete."""
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.execute("DELETE FROM subject WHERE subject_id=?", (subject_id,))
            existed = cur.rowcount > 0
            self._db.execute(
                "INSERT INTO deletion(subject_id, existed, idempotency_key, deleted_at, deletion_id) "
                "VALUES (?,?,?,?,?)",
                (subject_id, int(existed), idempotency_key, time.time(), deletion_id),
            )
            self._db.execute("COMMIT")
        return existed

    def first_deletion(self, idempotency_key: str) -> dict[str, Any] | None:
        """The first deletion done under ``idempotency_key`` (survives restarts), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT subject_id, existed, deletion_id, deleted_at FROM deletion "
                "WHERE idempotency_key=? ORDER BY id LIMIT 1",
                (idempotency_key,),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("subject_id", "existed", "deletion_id", "deleted_at"), row, strict=True))

    def lookup(
        self, key_type: str, id_type: str, values: list[str], want: list[str]
    ) -> dict[str, dict[str, list[str]]]:
        """Identity lookup: subjects whose ``data[id_type]`` (or id, for the partner's own ``key_type``)
        is one of ``values``, mapped to the ``want`` types found in their data."""
        if not values:
            return {}
        marks = ",".join("?" * len(values))
        if id_type == key_type:
            q = f"SELECT subject_id, subject_id, data FROM subject WHERE subject_id IN ({marks})"  # noqa: S608
        else:
            q = (
                f"SELECT json_extract(data, '$.{id_type}'), subject_id, data FROM subject "  # noqa: S608
                f"WHERE lower(json_extract(data, '$.{id_type}')) IN ({marks})"
            )
        with self._lock:
            rows = self._db.execute(q, [v.lower() if id_type != key_type else v for v in values]).fetchall()
        out: dict[str, dict[str, list[str]]] = {}
        for value, sid, data in rows:
            d = json.loads(data)
            found = out.setdefault(str(value).lower() if id_type != key_type else str(value), {})
            for t in want:
                v = sid if t == key_type else d.get(t)
                if isinstance(v, str) and v and v not in found.setdefault(t, []):
                    found[t].append(v)
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM subject").fetchone()[0])

    def deletions(self, subject_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT subject_id, existed, idempotency_key, deleted_at FROM deletion"
        args: tuple[Any, ...] = ()
        if subject_id is not None:
            q += " WHERE subject_id=?"
            args = (subject_id,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [
            dict(zip(("subject_id", "existed", "idempotency_key", "deleted_at"), r, strict=True))
            for r in rows
        ]

    def close(self) -> None:
        self._db.close()
