"""What the Erasure view shows, as plain dicts (the JSON API returns them as they are, the HTML pages
render them): overview, request, target health, holds, recent operator actions.

Identifiers never leave this module in clear: a subject id is shown masked (:func:`mask`) and as its
keyed hash (the receipts' HMAC, when the key is there), and every occurrence of it in evidence, errors
and event details is replaced by the masked form (:func:`redact`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from erasure.catalog import Catalog
from erasure.db import transaction
from erasure.identifiers import mask
from erasure.tracking import views
from erasure.vocab import EventType, RequestStatus, TargetKind, TaskStatus

SOON_DAYS = 7
THROUGHPUT_DAYS = 14
ALERT_DAYS = 7
HEALTH_DAYS = 30

# DAGs whose task instances did the work of each stage (links into the Airflow UI)
INTAKE_DAG = {"api": "erasure_intake", "intake_table": "erasure_intake_scheduled", "canary": "erasure_canary"}
DISPATCH_DAG = "erasure_dispatch"
ACKS_DAG = "erasure_acks"
WAREHOUSE_DAG = "erasure_warehouse"
RECONCILE_DAG = "erasure_reconcile"
REVIEW_DAG = "erasure_review"


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------ identifiers
def redact(value: Any, secrets: Mapping[str, str]) -> Any:
    """``value`` (JSON-like) with every occurrence of each key of ``secrets`` replaced by its value."""
    if not secrets:
        return value
    if isinstance(value, str):
        for clear, masked in secrets.items():
            if clear:
                value = value.replace(clear, masked)
        return value
    if isinstance(value, Mapping):
        return {redact(str(k), secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


def id_patterns(catalog: Catalog) -> list[re.Pattern[str]]:
    """The catalog's subject id patterns, unanchored: what an identifier looks like inside free text."""
    out = []
    for st in catalog.subject_types:
        body = st.id_pattern
        body = body[1:] if body.startswith("^") else body
        body = body[:-1] if body.endswith("$") else body
        out.append(re.compile(body))
    return out


def scrub(text: str | None, patterns: list[re.Pattern[str]]) -> str | None:
    """Free text (an error, a reason) with everything that looks like a subject id masked."""
    if not text:
        return text
    for p in patterns:
        text = p.sub(lambda m: mask(m.group(0)), text)
    return text


def subject_hash(hmac_key: bytes | None, subject_type: str, subject_id: str) -> str | None:
    """The keyed hash receipts carry for this subject (``hmac-sha256:...``), None without the key."""
    if hmac_key is None:
        return None
    from erasure.evidence.receipts import keyed_hash

    return keyed_hash(hmac_key, f"{subject_type}:{subject_id}")


def load_hmac_key(path: Path) -> bytes | None:
    from erasure.evidence.keys import load_hmac_key as _load

    try:
        return _load(path)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ links
class Links:
    """URLs of the Airflow UI (``base``: the API server's base path, e.g. ``""`` or ``/airflow``)."""

    def __init__(self, base: str = "") -> None:
        self.base = base.rstrip("/")

    def dag(self, dag_id: str) -> str:
        return f"{self.base}/dags/{quote(dag_id, safe='')}"

    def runs(self, dag_id: str) -> str:
        return f"{self.dag(dag_id)}/runs"

    def run(self, dag_id: str, run_id: str) -> str:
        return f"{self.runs(dag_id)}/{quote(run_id, safe='')}"

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> str:
        url = f"{self.run(dag_id, run_id)}/tasks/{quote(task_id, safe='')}"
        return f"{url}/mapped/{map_index}" if map_index is not None and map_index >= 0 else url


def task_links(links: Links, task: Mapping[str, Any]) -> list[dict[str, str]]:
    """Links to the Airflow task instances (and their logs) that worked on one task."""
    ev = task.get("evidence") or {}
    out: list[dict[str, str]] = []
    claim = ev.get("claim")
    if isinstance(claim, str) and claim.count("/") >= 2:
        run_id, target, batch = claim.rsplit("/", 2)
        try:
            idx: int | None = int(batch)
        except ValueError:
            idx = None
        out.append(
            {
                "label": f"{DISPATCH_DAG} · delete_{target}[{batch}]",
                "href": links.task_instance(DISPATCH_DAG, run_id, f"delete_{target}", idx),
            }
        )
    wh_run = ev.get("airflow_run_id")
    if isinstance(wh_run, str) and task.get("kind") == TargetKind.WAREHOUSE_DELTA:
        out.append({"label": f"{WAREHOUSE_DAG} run", "href": links.run(WAREHOUSE_DAG, wh_run)})
    if task.get("kind") == TargetKind.KAFKA:
        out.append({"label": f"{DISPATCH_DAG} runs (outbox publish)", "href": links.runs(DISPATCH_DAG)})
        out.append({"label": f"{ACKS_DAG} runs (acks)", "href": links.runs(ACKS_DAG)})
    if task.get("kind") == TargetKind.WAREHOUSE_DELTA and not wh_run:
        out.append({"label": f"{WAREHOUSE_DAG} runs", "href": links.runs(WAREHOUSE_DAG)})
    if task.get("status") in (TaskStatus.FAILED, TaskStatus.ESCALATED):
        out.append({"label": f"{RECONCILE_DAG} runs (retry/escalation)", "href": links.runs(RECONCILE_DAG)})
    return out


# ------------------------------------------------------------------------------------------ overview
def overview(dsn: str, catalog: Catalog, now: datetime | None = None) -> dict[str, Any]:
    now = now or _now()
    today = now.date()
    with transaction(dsn) as cur:
        by_status = views.requests_by_status(cur)
        sla = views.sla_by_jurisdiction(cur, now, now + timedelta(days=SOON_DAYS))
        per_day = views.throughput_per_day(
            cur, datetime.combine(today - timedelta(days=THROUGHPUT_DAYS - 1), datetime.min.time(), UTC)
        )
        escalated = views.escalated_per_target(cur)
        alerts = views.open_alerts(cur, now - timedelta(days=ALERT_DAYS))
        due = views.due_soonest(cur, 10)
    days = {r["day"]: r for r in per_day}
    throughput = []
    for i in range(THROUGHPUT_DAYS):
        d: date = today - timedelta(days=THROUGHPUT_DAYS - 1 - i)
        r = days.get(d, {})
        throughput.append(
            {"day": d.isoformat(), "received": r.get("received", 0), "completed": r.get("completed", 0)}
        )
    owners = {t.name: t.owner for t in catalog.targets}
    teams: dict[str, dict[str, Any]] = {}
    for target, n in escalated.items():
        team = owners.get(target, catalog.pipeline_owner)
        t = teams.setdefault(team, {"team": team, "escalated": 0, "alerts": 0, "unsent": 0, "kinds": {}})
        t["escalated"] += n
    for a in alerts:
        t = teams.setdefault(
            a["team"], {"team": a["team"], "escalated": 0, "alerts": 0, "unsent": 0, "kinds": {}}
        )
        t["alerts"] += int(a["n"])
        t["unsent"] += int(a["unsent"])
        t["kinds"][a["kind"]] = int(a["n"])
    jurisdictions = []
    for r in sla:
        nd = r["next_due"]
        jurisdictions.append(
            {
                "jurisdiction": r["jurisdiction"],
                "sla_days": catalog.sla_for(r["jurisdiction"]),
                "open": int(r["open"]),
                "overdue": int(r["overdue"]),
                "due_soon": int(r["due_soon"]),
                "next_due": nd,
                "next_due_days": round((nd - now).total_seconds() / 86400, 1) if nd else None,
            }
        )
    return {
        "generated_at": now,
        "requests_by_status": by_status,
        "total": sum(by_status.values()),
        "open": sum(by_status[s] for s in RequestStatus.open()),
        "overdue": sum(j["overdue"] for j in jurisdictions),
        "due_soon": sum(j["due_soon"] for j in jurisdictions),
        "soon_days": SOON_DAYS,
        "sla": jurisdictions,
        "throughput": throughput,
        "teams": sorted(teams.values(), key=lambda t: t["team"]),
        "alert_days": ALERT_DAYS,
        "due_first": [_request_summary(r, now) for r in due],
    }


def _request_summary(r: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    due = r.get("due_at")
    return {
        "id": r["id"],
        "external_id": r["external_id"],
        "subject_type": r["subject_type"],
        "subject": mask(r["subject_id"]),
        "jurisdiction": r["jurisdiction"],
        "status": r["status"],
        "status_reason": redact(r.get("status_reason"), {str(r["subject_id"]): mask(r["subject_id"])}),
        "received_at": r.get("received_at"),
        "due_at": due,
        "due_in_days": round((due - now).total_seconds() / 86400, 1) if due else None,
        "completed_at": r.get("completed_at"),
        "is_canary": r.get("is_canary"),
    }


# ------------------------------------------------------------------------------------------ requests
def find(
    dsn: str, *, ref: str | None = None, subject: tuple[str, str] | None = None, digest: str | None = None
) -> list[dict[str, Any]]:
    now = _now()
    with transaction(dsn) as cur:
        rows = views.find_requests(cur, ref=ref, subject=subject, digest=digest)
    return [_request_summary(r, now) for r in rows]


def subject_digest(catalog: Catalog, key: bytes | None, subject: tuple[str, str]) -> str | None:
    """The keyed hash a minimised request holds for ``subject`` (type, id): a person's erasure is found
    after the retention too (erasure.retention.subject_digest). None without the identifier key."""
    if key is None:
        return None
    from erasure.pseudonym import keyed_hash
    from erasure.retention import subject_id_type

    stype, sid = subject
    return (
        sid if sid.startswith("hmac-sha256:") else keyed_hash(key, f"{subject_id_type(catalog, stype)}:{sid}")
    )


_MILESTONES = {
    EventType.TASK_DISPATCHED: "dispatched",
    EventType.TASK_RETRIED: "retried",
    EventType.EVENT_PUBLISHED: "published",
    EventType.EVENT_REPLAYED: "replayed",
    EventType.ACK_RECEIVED: "acked",
    EventType.ROWS_DELETED: "rows deleted",
    EventType.FILES_PURGED: "files purged",
    EventType.VACUUMED: "vacuumed",
    EventType.TASK_SUCCEEDED: "succeeded",
    EventType.TASK_FAILED: "failed",
    EventType.TASK_ESCALATED: "escalated",
    EventType.TASK_CREATED: "created",
    EventType.OPERATOR_ACTION: "operator action",
}


def request_detail(
    dsn: str, request_id: int, links: Links, hmac_key: bytes | None = None, now: datetime | None = None
) -> dict[str, Any] | None:
    """One request: summary, per-target timeline with evidence and Airflow links, alerts, receipt."""
    now = now or _now()
    with transaction(dsn) as cur:
        req = views.request_row(cur, request_id)
        if req is None:
            return None
        tasks = views.request_tasks(cur, request_id)
        events = views.request_events(cur, request_id)
        alerts = views.request_alerts(cur, request_id)
        receipt = views.request_receipt(cur, request_id)
        from erasure.review import review_of

        review = review_of(cur, request_id)
    sid = str(req["subject_id"])
    secrets = {sid: mask(sid)}
    out = _request_summary(req, now)
    out["subject_hash"] = subject_hash(hmac_key, req["subject_type"], sid)
    out["source"] = req["source"]
    run_id = req.get("airflow_run_id")
    dag = INTAKE_DAG.get(str(req["source"]))
    out["intake_link"] = (
        {"label": f"{dag} run {run_id}", "href": links.run(dag, run_id)} if dag and run_id else None
    )
    by_task: dict[int | None, list[dict[str, Any]]] = {}
    for e in events:
        by_task.setdefault(e["task_id"], []).append(
            {
                "seq": e["seq"],
                "event_type": e["event_type"],
                "label": _MILESTONES.get(e["event_type"], e["event_type"].replace("_", " ")),
                "status": e["status"],
                "attempt": e["attempt"],
                "occurred_at": e["occurred_at"],
                "details": redact(e["details"] or {}, secrets),
                "hash": e["hash"],
            }
        )
    out["request_events"] = by_task.get(None, [])
    out["tasks"] = []
    for t in tasks:
        ev = redact(t["evidence"] or {}, secrets)
        verification = (t["evidence"] or {}).get("verification") or {}
        task = {
            "id": t["id"],
            "target": t["target"],
            "kind": t["kind"],
            "status": t["status"],
            "stage": t["stage"],
            "attempts": t["attempts"],
            "last_error": redact(t["last_error"], secrets),
            "next_attempt_at": t["next_attempt_at"],
            "created_at": t["created_at"],
            "completed_at": t["completed_at"],
            "verification": verification.get("outcome"),
            "evidence": ev,
            "event": (
                {
                    "event_id": t["event_id"],
                    "attempt": t["event_attempt"],
                    "published_at": t["published_at"],
                    "publish_count": t["publish_count"],
                    "acked_at": t["acked_at"],
                    "ack_outcome": t["ack_outcome"],
                }
                if t["event_id"]
                else None
            ),
            "timeline": by_task.get(t["id"], []),
            "links": task_links(links, t),
            "can_rerun": t["status"] in (TaskStatus.FAILED, TaskStatus.ESCALATED)
            and req["status"] in (RequestStatus.IN_PROGRESS, RequestStatus.RECEIVED, RequestStatus.FAILED),
            "can_replay": bool(t["event_id"] and t["published_at"] and not t["acked_at"]),
        }
        out["tasks"].append(task)
    out["can_withdraw"] = req["status"] in RequestStatus.open() and all(
        t["status"] == TaskStatus.PENDING and t["attempts"] == 0 and not t["event_id"] for t in tasks
    )
    out["alerts"] = alerts
    out["review"] = None
    if review is not None:
        out["review"] = {
            **review,
            "link": links.task_instance(
                REVIEW_DAG, review["dag_run_id"], "request.review", review["map_index"]
            )
            + "/required_actions",
            "required_actions": f"{links.base}/required_actions",
        }
    out["receipt"] = None
    if receipt is not None:
        doc = json.loads(receipt["document"])
        out["receipt"] = {
            "receipt_id": receipt["receipt_id"],
            "key_id": receipt["key_id"],
            "issued_at": receipt["issued_at"],
            "audit_hash": receipt["audit_hash"],
            "document": doc,
        }
    return out


# ------------------------------------------------------------------------------------------ targets
def target_health(dsn: str, catalog: Catalog, now: datetime | None = None) -> dict[str, Any]:
    now = now or _now()
    with transaction(dsn) as cur:
        rows = views.target_health(cur, now - timedelta(days=HEALTH_DAYS))
    seen = {r["target"]: r for r in rows}
    patterns = id_patterns(catalog)
    out = []
    for t in sorted(catalog.targets, key=lambda t: (t.owner, t.name)):
        r = seen.pop(t.name, None) or {}
        out.append(_health_row(t.name, str(t.kind), t.owner, r, patterns))
    for name, r in sorted(seen.items()):  # tasks of targets no longer in the catalog
        out.append(_health_row(name, r.get("kind") or "?", "(not in catalog)", r, patterns))
    return {"days": HEALTH_DAYS, "targets": out, "teams": sorted({r["owner"] for r in out})}


def _health_row(
    name: str, kind: str, owner: str, r: Mapping[str, Any], patterns: list[re.Pattern[str]]
) -> dict[str, Any]:
    tasks = int(r.get("tasks") or 0)
    done = int(r.get("succeeded") or 0) + int(r.get("escalated") or 0) + int(r.get("failed") or 0)
    return {
        "target": name,
        "kind": kind,
        "owner": owner,
        "tasks": tasks,
        "succeeded": int(r.get("succeeded") or 0),
        "failed": int(r.get("failed") or 0),
        "escalated": int(r.get("escalated") or 0),
        "open": int(r.get("open") or 0),
        "retries": int(r.get("retries") or 0),
        "success_rate": round(100.0 * int(r.get("succeeded") or 0) / done, 1) if done else None,
        "p50_s": round(float(r["p50_s"]), 1) if r.get("p50_s") is not None else None,
        "p95_s": round(float(r["p95_s"]), 1) if r.get("p95_s") is not None else None,
        "last_error": scrub(r.get("last_error"), patterns),
        "last_error_at": r.get("last_error_at"),
    }


# ------------------------------------------------------------------------------------------ holds, audit
def holds(dsn: str, catalog: Catalog, active_only: bool = True) -> list[dict[str, Any]]:
    from erasure.holds import list_holds

    patterns = id_patterns(catalog)

    return [
        {
            "id": h["id"],
            "subject_type": h["subject_type"],
            "subject": mask(h["subject_id"]),
            "reason": scrub(redact(h["reason"], {str(h["subject_id"]): mask(h["subject_id"])}), patterns),
            "placed_by": h["placed_by"],
            "placed_at": h["placed_at"],
            "released_at": h["released_at"],
            "released_by": h["released_by"],
            "held_requests": int(h["held_requests"]),
        }
        for h in list_holds(dsn, active_only=active_only)
    ]


def actions(dsn: str, catalog: Catalog, limit: int = 50) -> list[dict[str, Any]]:
    patterns = id_patterns(catalog)
    with transaction(dsn) as cur:
        rows = views.recent_actions(cur, limit)
    for r in rows:
        r["reason"] = scrub(r["reason"], patterns)
    return rows
