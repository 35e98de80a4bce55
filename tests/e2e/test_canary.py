"""End to end: the canary creates synthetic subjects with data in every catalog target, they are erased
by the real pipeline functions, and the canary verifies every target no longer holds them.

Everything is real: HTTP partner services (aiohttp, own SQLite stores) on free ports, the Kafka partners
consuming real Kafka topics (unique per test) and acknowledging, Delta tables written and erased by
Spark, the HR directory in Postgres, the tracking store in the session's own database. The pipeline
steps are the functions the DAGs call (dispatch, outbox, ack consumer, warehouse, reconcile).

Test 2: one partner answers deletes like a real one but keeps the data (``silent_delete_failure``):
the pipeline's own verification (a lookup after each delete) refuses to believe it, retries and
escalates, so the request fails instead of completing; the canary's lookup finds the subject too,
records ``fail`` for that target and alerts the partner's owning team and the pipeline owner.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from erasure import canary
from erasure.catalog import Catalog, load_catalog
from erasure.db import transaction
from erasure.settings import ack_keys_from_env, get_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    catalog: Catalog
    partners: dict[str, Any] = field(default_factory=dict)  # target -> PartnerServer
    partners_urls: dict[str, str] = field(default_factory=dict)
    kafka: list[Any] = field(default_factory=list)  # KafkaPartner handles
    events_topic: str | None = None
    acks_topic: str | None = None


def _catalog(
    tmp: Path, urls: dict[str, str], events: str | None, acks: str | None, only: set[str] | None
) -> Catalog:
    """The demo catalog, pointed at this test's partners, topics and warehouse directory."""
    data = load_catalog(ROOT / "include" / "catalog").model_dump()
    targets = []
    for t in data["targets"]:
        if only is not None and t["name"] not in only:
            continue
        t = dict(t)
        t["retry_backoff_minutes"] = 0.001
        if t["kind"] == "sync_api":
            t["sync_api"] = {**t["sync_api"], "base_url": urls[t["name"]], "max_retries": 1, "timeout_s": 5}
        elif t["kind"] == "kafka":
            t["kafka"] = {**t["kafka"], "topic": events, "ack_topic": acks, "lookup_url": urls[t["name"]]}
        elif t["kind"] == "warehouse_delta":
            t["warehouse_delta"] = {
                **t["warehouse_delta"],
                "path": str(tmp / "warehouse" / t["warehouse_delta"]["path"]),
            }
        targets.append(t)
    data["targets"] = targets
    if only is not None:  # a subset of the targets: without the identity graph (its resolvers' targets)
        data["resolvers"], data["identifier_types"] = [], []
    return Catalog.model_validate(data)


@pytest.fixture
def world_factory(tmp_path: Path, kafka_bootstrap: str, unique_topic) -> Iterator[Any]:
    """Builds a World: the demo catalog's targets (or ``only``) served by real partners of this test."""
    from erasure_demo.partners.http_service import PartnerServer
    from erasure_demo.partners.kafka_partner import KafkaPartner

    made: list[World] = []

    def make(only: set[str] | None = None) -> World:
        base = load_catalog(ROOT / "include" / "catalog")
        names = {t.name for t in base.targets if t.enabled and (only is None or t.name in only)}
        servers: dict[str, Any] = {}
        for t in base.of_kind("sync_api"):
            if t.name in names:
                spec = t.spec
                servers[t.name] = PartnerServer(
                    t.name,
                    tmp_path / "partners" / f"{t.name}.db",
                    delete_path=spec.delete_path,
                    lookup_path=spec.lookup_path,
                    create_path=spec.create_path,
                ).start()
        urls = {n: s.url for n, s in servers.items()}
        has_kafka = any(t.name in names for t in base.of_kind("kafka"))
        events = unique_topic("canary.events", 3) if has_kafka else None
        acks = unique_topic("canary.acks", 1) if has_kafka else None
        w = World(base, servers, urls, events_topic=events, acks_topic=acks)
        made.append(w)
        if has_kafka:
            # the Kafka partners consume this test's topics and serve their lookup API on free ports
            placeholder = {t.name: "http://127.0.0.1:1" for t in base.of_kind("kafka")}
            staged = _catalog(tmp_path, {**urls, **placeholder}, events, acks, names)
            for t in staged.of_kind("kafka"):
                kp = KafkaPartner(
                    t,
                    bootstrap=kafka_bootstrap,
                    data_dir=tmp_path / "partners",
                    group_id=f"e2e-{t.name}-{events}",
                    http_port=0,
                ).start()
                w.kafka.append(kp)
                urls[t.name] = kp.url
        w.catalog = _catalog(tmp_path, urls, events, acks, names)
        w.partners_urls = urls
        return w

    yield make
    for w in made:
        for kp in w.kafka:
            kp.stop()
        for s in w.partners.values():
            s.close()


def _run_pipeline(world: World, dsn: str, bootstrap: str, spark: Any | None, rounds: int = 6) -> None:
    """What the scheduled DAGs do, in order, until every request is finished."""
    from erasure import dispatch, outbox, reconcile, warehouse

    cat = world.catalog
    t0 = time.monotonic()

    def lap(what: str) -> None:
        print(f"[e2e {time.monotonic() - t0:6.1f}s] {what}")

    for i in range(rounds):
        if cat.has_identity:  # the dispatch DAG's first task: resolve identities, release requests
            from erasure.identity import IdentityCodec
            from erasure.resolution import resolve_pending

            resolve_pending(dsn, cat, get_settings(), IdentityCodec.from_settings(get_settings()))
            lap(f"round {i}: identities resolved")
        for t in dispatch.dispatch_targets(cat):
            for b in dispatch.plan_batches(dsn, cat, t.name):
                dispatch.run_batch(
                    dsn,
                    cat,
                    t.name,
                    b["task_ids"],
                    claim_key=f"e2e/{i}/{t.name}/{b['batch']}",
                    settings=get_settings(),
                )
        lap(f"round {i}: sync + postgres dispatched")
        if cat.of_kind("kafka"):
            outbox.enqueue_due(dsn, cat)
            outbox.publish_pending(dsn, bootstrap)
            lap(f"round {i}: events published")
            _wait_for_acks(world, bootstrap, dsn)
            lap(f"round {i}: acks consumed")
        if spark is not None and cat.of_kind("warehouse_delta"):
            warehouse.erase_warehouse(spark, cat, dsn, settings=get_settings(), run_id=f"e2e-{i}")
            lap(f"round {i}: warehouse erased")
        reconcile.reconcile(dsn, cat)
        with transaction(dsn) as cur:
            cur.execute(
                "SELECT count(*) AS n FROM erasure.request WHERE status IN ('received', 'in_progress', 'resolving')"
            )
            if cur.fetchone()["n"] == 0:
                lap("all requests finished")
                return


def _wait_for_acks(world: World, bootstrap: str, dsn: str, timeout: float = 60) -> None:
    """Consume acks until no Kafka task awaits one (the partners answer within seconds)."""
    from erasure import outbox

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outbox.consume_acks(
            dsn, bootstrap, catalog=world.catalog, group_id=f"e2e-acks-{world.acks_topic}", max_seconds=10,
            idle_timeout_s=1.0, ack_keys=ack_keys_from_env([t.name for t in world.catalog.of_kind("kafka")]),
        )  # fmt: skip
        with transaction(dsn) as cur:
            cur.execute(
                "SELECT count(*) AS n FROM erasure.task WHERE kind = 'kafka' AND status = 'awaiting_ack'"
            )
            if cur.fetchone()["n"] == 0:
                return
        time.sleep(0.5)


def _requests(dsn: str) -> list[dict[str, Any]]:
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT r.id, r.subject_id, r.status, r.is_canary, r.source,
                      json_object_agg(t.target, t.status) AS tasks
                 FROM erasure.request r JOIN erasure.task t ON t.request_id = r.id GROUP BY r.id ORDER BY r.id"""
        )
        return [dict(r) for r in cur.fetchall()]


def test_canary_seeds_every_target_and_verifies_erasure(
    tracking_db, spark, kafka_bootstrap, world_factory, tmp_path
):
    from erasure_demo import warehouse_gen

    dsn = tracking_db
    world = world_factory()
    cat = world.catalog
    warehouse_gen.generate_tables(spark, cat, rows="tiny")

    t0 = datetime.now(UTC)
    seeded = canary.seed_subjects(
        dsn,
        cat,
        settings=get_settings(),
        subject_types=["customer", "employee"],
        delay=timedelta(seconds=2),
        now=t0,
    )
    appended = canary.seed_warehouse(spark, dsn, cat, settings=get_settings())
    ids = {s["subject_id"]: s["subject_type"] for s in seeded}
    assert sorted(ids.values()) == ["customer", "employee"]
    # tables keyed by another identifier type (device ids) never hold a canary id (canary_targets)
    assert appended == {
        t.name: 1 for t in canary.canary_targets(cat, "customer") if t.kind == "warehouse_delta"
    }

    # every target of each subject type holds the canary's data now
    with transaction(dsn) as cur:
        cur.execute("SELECT subject_id, count(*) AS n FROM erasure.canary_check GROUP BY subject_id")
        checks = {r["subject_id"]: r["n"] for r in cur.fetchall()}
    for sid, st in ids.items():
        assert checks[sid] == len(cat.targets_for(st))
    assert not canary.ready_to_verify(dsn, cat)

    # not requested before the delay, then through the normal intake
    assert canary.file_requests(dsn, cat, now=t0 + timedelta(seconds=1)) == []
    filed = canary.file_requests(dsn, cat, now=t0 + timedelta(seconds=3))
    assert {f["subject_id"] for f in filed} == set(ids)
    assert canary.file_requests(dsn, cat, now=t0 + timedelta(seconds=4)) == []  # idempotent
    reqs = _requests(dsn)
    assert all(r["is_canary"] and r["source"] == "canary" for r in reqs)

    # nothing to verify while the requests are open
    early = canary.verify_subjects(dsn, cat, settings=get_settings(), spark=spark)
    assert [r.result for r in early] == [None, None]

    _run_pipeline(world, dsn, kafka_bootstrap, spark)
    assert [r["status"] for r in _requests(dsn)] == ["completed", "completed"], _requests(dsn)

    results = canary.verify_subjects(dsn, cat, settings=get_settings(), spark=spark)
    assert {r.subject_id: r.result for r in results} == {sid: "pass" for sid in ids}, [
        r.as_dict() for r in results
    ]
    kinds = {c.kind for r in results for c in r.checks}
    assert kinds == {"sync_api", "kafka", "warehouse_delta", "postgres_table"}
    with transaction(dsn) as cur:
        cur.execute("SELECT target, passed, detail FROM erasure.canary_check ORDER BY subject_id, target")
        rows = cur.fetchall()
        cur.execute("SELECT count(*) AS n FROM erasure.alert")
        assert cur.fetchone()["n"] == 0
    assert rows and all(r["passed"] is True for r in rows), rows
    # a second verification run changes nothing
    assert canary.verify_subjects(dsn, cat, settings=get_settings(), spark=spark) == []


def test_canary_catches_a_partner_that_silently_keeps_data(tracking_db, world_factory, monkeypatch):
    """Sync + Postgres targets only (fast); crm_contacts claims deletes but keeps the data."""
    dsn = tracking_db
    world = world_factory(only={"crm_contacts", "billing_profiles", "support_desk", "hr_directory"})
    cat = world.catalog
    world.partners["crm_contacts"].service.faults.update({"silent_delete_failure": True})

    t0 = datetime.now(UTC)
    (seeded,) = canary.seed_subjects(dsn, cat, settings=get_settings(), delay=timedelta(0), now=t0)
    sid = seeded["subject_id"]
    assert sid.startswith("canary_")
    assert sorted(seeded["seeded"]) == ["billing_profiles", "crm_contacts", "support_desk"]
    canary.file_requests(dsn, cat, now=t0)
    for _ in range(40):  # retries wait their (exponential, sub-second here) delay: go on until escalated
        _run_pipeline(world, dsn, "", None, rounds=1)
        if _requests(dsn)[0]["status"] != "in_progress":
            break
        time.sleep(0.2)
    (req,) = _requests(dsn)
    assert req["status"] == "failed"  # verification does not believe the partner ...
    assert req["tasks"]["crm_contacts"] == "escalated"  # ... and escalates after max_attempts

    (res,) = canary.verify_subjects(dsn, cat, settings=get_settings())
    assert res.result == "fail"
    outcome = {c.target: c.outcome for c in res.checks}
    assert outcome == {"crm_contacts": "fail", "billing_profiles": "pass", "support_desk": "pass"}
    with transaction(dsn) as cur:
        cur.execute("SELECT target, passed, detail FROM erasure.canary_check WHERE subject_id=%s", (sid,))
        checks = {r["target"]: r for r in cur.fetchall()}
        cur.execute("SELECT result, verified_at FROM erasure.canary_subject WHERE subject_id=%s", (sid,))
        subj = cur.fetchone()
        cur.execute("SELECT kind, team, channel, target, message FROM erasure.alert ORDER BY id")
        alerts = cur.fetchall()
    assert checks["crm_contacts"]["passed"] is False and "200" in checks["crm_contacts"]["detail"]
    assert checks["billing_profiles"]["passed"] is True
    assert subj["result"] == "fail" and subj["verified_at"] is not None
    assert [(a["kind"], a["team"], a["target"]) for a in alerts] == [
        ("task_escalated", "crm", "crm_contacts"),
        ("canary_failed", "crm", "crm_contacts"),
        ("canary_request_incomplete", cat.pipeline_owner, None),
    ]
    assert cat.team("crm").channel == alerts[1]["channel"]

    # re-running verification neither re-checks nor alerts again
    assert canary.verify_subjects(dsn, cat, settings=get_settings()) == []
    with transaction(dsn) as cur:
        cur.execute("SELECT count(*) AS n FROM erasure.alert")
        assert cur.fetchone()["n"] == 3
