"""Acknowledgements on the real broker: demo Kafka partners erase and ack; the pipeline matches acks by
event id, records evidence, and records-and-skips unknown / malformed / mismatched / duplicate acks."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from erasure import outbox
from erasure.events import new_ack
from erasure.vocab import AckStatus
from erasure_demo.partners.http_service import PartnerServer
from erasure_demo.partners.kafka_partner import KafkaPartner
from erasure_demo.partners.store import PartnerStore
from tests.helpers.db import query
from tests.integration._outbox_support import (
    free_port,
    kafka_catalog,
    produce_raw,
    seed_kafka_tasks,
    signer,
)

pytestmark = pytest.mark.integration

# ack keys of the test targets (erasure.ack_auth): partners sign with them, the pipeline checks them
KEYS = {"mkt": "mkt-ack-key-" + uuid.uuid4().hex, "recs": "recs-ack-key-" + uuid.uuid4().hex}
SIGN = signer(KEYS)


@pytest.fixture(autouse=True)
def _ack_keys(monkeypatch):
    """Partner processes started by a test read their key from the environment, as in the stack."""
    for target, key in KEYS.items():
        monkeypatch.setenv(f"ERASURE_ACK_KEY_{target.upper()}", key)


@pytest.fixture
def setup(tracking_db, unique_topic, tmp_path):
    events, acks = unique_topic("events"), unique_topic("acks", partitions=2)
    _, cat = kafka_catalog(tmp_path, events, acks, {"mkt": free_port(), "recs": None})
    return tracking_db, cat, events, acks


def _consume_until(dsn, bootstrap, cat, group, want_matched, timeout=60):
    """Consume acks (bounded runs) until ``want_matched`` acks matched; returns the summed counts."""
    total: dict[str, int] = {s.value: 0 for s in AckStatus}
    deadline = time.monotonic() + timeout
    while total["matched"] < want_matched and time.monotonic() < deadline:
        res = outbox.consume_acks(
            dsn, bootstrap, ack_keys=KEYS, catalog=cat, group_id=group, idle_timeout_s=1.0, max_seconds=20
        )
        for k, v in res.counts.items():
            total[k] += v
    return total


def _statuses(dsn):
    return {
        r["status"]: r["n"]
        for r in query(dsn, "SELECT status, count(*)::int AS n FROM erasure.task GROUP BY status")
    }


def test_partners_erase_and_ack_with_faults(setup, kafka_bootstrap, tmp_path):
    """End to end with two real partner processes: erasure, acks, evidence; then dropped events are
    replayed (same id) and acknowledged, and a crashing partner never erases twice."""
    dsn, cat, events, acks = setup
    group = f"pipeline-{uuid.uuid4().hex[:6]}"
    subjects = seed_kafka_tasks(dsn, ["mkt", "recs"], 10)
    present = subjects[:6]  # the partners hold data for 6 of the 10 subjects
    for name in ("mkt", "recs"):
        store = PartnerStore(tmp_path / "partners" / f"{name}.db")
        store.put_many([(s, {"email": f"{s}@example.com"}) for s in present])
        store.close()
    mkt = KafkaPartner(cat.target("mkt"), data_dir=tmp_path / "partners", faults={"slow_ms": 5})
    recs = KafkaPartner(cat.target("recs"), data_dir=tmp_path / "partners", faults={"crash_every": 4})
    with mkt, recs:
        # the HTTP lookup / test-data endpoint of a Kafka partner (used by the canary)
        assert httpx.get(f"{mkt.url}/subjects/{present[0]}").status_code == 200
        r = httpx.post(f"{mkt.url}/test-subjects", json={"subject_id": "cus_canary1", "data": {"x": 1}})
        assert r.status_code == 201
        # fault settings at run time, over HTTP (validated)
        assert httpx.put(f"{mkt.url}/admin/faults", json={"drop_rate": 2}).status_code == 400
        f = httpx.put(f"{mkt.url}/admin/faults", json={"drop_next": 2}).json()
        assert f["drop_next"] == 2 and f["slow_ms"] == 5

        assert outbox.enqueue_due(dsn, cat).enqueued == 20
        assert outbox.publish_pending(dsn, kafka_bootstrap).published == 20
        counts = _consume_until(dsn, kafka_bootstrap, cat, group, want_matched=18)
        assert counts["matched"] == 18 and counts["malformed"] == counts["unknown"] == 0
        assert recs.restarts >= 2  # crashed after every 4th erasure and was restarted

        # two events were dropped by mkt: reconcile replays them with the same event id
        lost = query(dsn, "SELECT o.event_id::text FROM erasure.outbox o JOIN erasure.task t ON t.id = o.task_id "
                          "WHERE o.acked_at IS NULL")  # fmt: skip
        assert len(lost) == 2 and _statuses(dsn) == {"succeeded": 18, "awaiting_ack": 2}
        assert outbox.republish(dsn, [r["event_id"] for r in lost], kafka_bootstrap).published == 2
        counts = _consume_until(dsn, kafka_bootstrap, cat, group, want_matched=2)
        assert counts["matched"] == 2
        assert _statuses(dsn) == {"succeeded": 20}
        assert httpx.get(f"{mkt.url}/subjects/{present[0]}").status_code == 404
        stats = httpx.get(f"{mkt.url}/admin/stats").json()
        assert stats["kafka"]["dropped"] == 2

    # evidence: the ack (outcome, partition, offset) is on the task and on the outbox row
    rows = query(dsn, "SELECT t.target, r.subject_id, t.evidence, o.ack, o.publish_count FROM erasure.task t "
                      "JOIN erasure.request r ON r.id = t.request_id JOIN erasure.outbox o ON o.task_id = t.id")  # fmt: skip
    for row in rows:
        want = "erased" if row["subject_id"] in present else "not_found"
        assert row["evidence"]["ack"]["outcome"] == row["ack"]["outcome"] == want, row
        assert row["evidence"]["ack"]["event_id"] == row["evidence"]["event_id"]
        assert {"partition", "offset", "acked_at"} <= set(row["ack"])
    assert sum(r["publish_count"] == 2 for r in rows) == 2
    # the partners erased every subject exactly once (crash + redelivery did not erase twice)
    for name in ("mkt", "recs"):
        store = PartnerStore(tmp_path / "partners" / f"{name}.db")
        dels = store.deletions()
        store.close()
        assert sorted(d["subject_id"] for d in dels) == sorted(subjects), name
        assert sum(d["existed"] for d in dels) == 6
    assert (
        query(dsn, "SELECT count(*)::int AS n FROM erasure.event_log WHERE event_type = 'ack_received'")[0][
            "n"
        ]
        == 20
    )


def test_unknown_malformed_mismatch_duplicate_acks_are_recorded_not_fatal(setup, kafka_bootstrap, tmp_path):
    dsn, cat, _, acks = setup
    # mkt's lookup endpoint answers (an empty partner store: every subject gone), so success acks verify
    port = int(str(cat.target("mkt").spec.lookup_url).rsplit(":", 1)[1])
    lookup = PartnerServer("mkt", tmp_path / "mkt-lookup.db", port=port).start()
    request_close = lookup.close
    group = f"pipeline-{uuid.uuid4().hex[:6]}"
    seed_kafka_tasks(dsn, ["mkt"], 3)
    eids = outbox.enqueue_due(dsn, cat).event_ids
    outbox.publish_pending(dsn, kafka_bootstrap)
    good = [new_ack(e, "mkt", "erased", {"rows": 1}).to_bytes() for e in eids[:2]]
    produce_raw(
        kafka_bootstrap,
        acks,
        [
            b"\x00\xffnot json at all",
            b'{"event_id": "x"}',
            None,  # a tombstone
            json.dumps(
                {
                    "event_id": eids[0],
                    "target": "mkt",
                    "outcome": "vaporised",
                    "acked_at": "2025-01-01T00:00:00Z",
                }
            ).encode(),
            good[0],
            new_ack(uuid.uuid4(), "mkt", "erased").to_bytes(),  # unknown event id
            new_ack(eids[1], "recs", "erased").to_bytes(),  # right event, wrong target
            good[1],
            good[0],  # the same ack again
            new_ack(eids[2], "mkt", "failed", {"error": "partner db down"}).to_bytes(),
        ],
        key=b"k",  # one partition, in order
        sign=SIGN,
    )
    res = outbox.consume_acks(
        dsn, kafka_bootstrap, ack_keys=KEYS, catalog=cat, group_id=group, idle_timeout_s=2
    )
    assert res.messages == 10
    assert res.counts == {"matched": 3, "duplicate": 1, "unknown": 1, "malformed": 4, "mismatch": 1,
                          "unauthenticated": 0}  # fmt: skip
    assert res.tasks_succeeded == 2 and res.tasks_failed == 1

    log = query(dsn, "SELECT status, error, raw, event_id::text FROM erasure.ack_log ORDER BY kafka_offset")
    assert [r["status"] for r in log] == ["malformed", "malformed", "malformed", "malformed", "matched", "unknown",
                                          "mismatch", "matched", "duplicate", "matched"]  # fmt: skip
    assert "not UTF-8 text" in log[0]["error"] and "not json at all" in log[0]["raw"]
    assert "field 'target'" in log[1]["error"] and "no value" in log[2]["error"]
    assert "field 'outcome'" in log[3]["error"]
    assert "was sent to 'mkt'" in log[6]["error"]

    tasks = {r["eid"]: r for r in query(dsn, "SELECT o.event_id::text AS eid, t.status, t.last_error, "
                                             "t.next_attempt_at > now() AS backoff FROM erasure.task t "
                                             "JOIN erasure.outbox o ON o.task_id = t.id")}  # fmt: skip
    assert tasks[eids[0]]["status"] == tasks[eids[1]]["status"] == "succeeded"
    failed = tasks[eids[2]]
    assert failed["status"] == "failed" and "partner db down" in failed["last_error"] and failed["backoff"]

    # offsets were committed after the DB transaction: the next run sees nothing new
    again = outbox.consume_acks(
        dsn, kafka_bootstrap, ack_keys=KEYS, catalog=cat, group_id=group, idle_timeout_s=1
    )
    assert again.messages == 0
    # a redelivery (e.g. a crash between the DB commit and the offset commit) is not applied twice
    fresh = outbox.consume_acks(
        dsn, kafka_bootstrap, ack_keys=KEYS, catalog=cat, group_id=group + "-b", idle_timeout_s=2
    )
    assert fresh.already_seen == 10 and sum(fresh.counts.values()) == 0
    assert query(dsn, "SELECT count(*)::int AS n FROM erasure.ack_log")[0]["n"] == 10
    ver = query(
        dsn,
        "SELECT evidence -> 'verification' ->> 'outcome' AS v FROM erasure.task WHERE status = 'succeeded'",
    )
    assert [r["v"] for r in ver] == ["verified", "verified"]
    request_close()


def test_late_success_ack_completes_a_failed_task(setup, kafka_bootstrap):
    dsn, cat, _, acks = setup
    seed_kafka_tasks(dsn, ["recs"], 1)
    [eid] = outbox.enqueue_due(dsn, cat).event_ids
    outbox.publish_pending(dsn, kafka_bootstrap)
    produce_raw(kafka_bootstrap, acks, [new_ack(eid, "recs", "failed").to_bytes()], sign=SIGN)
    group = f"pipeline-{uuid.uuid4().hex[:6]}"
    outbox.consume_acks(dsn, kafka_bootstrap, ack_keys=KEYS, catalog=cat, group_id=group, idle_timeout_s=1)
    assert _statuses(dsn) == {"failed": 1}
    # reconcile moves it back to pending; a new attempt gets a new event; its ack completes the task
    query(dsn, "UPDATE erasure.task SET status = 'pending', next_attempt_at = now()")
    [eid2] = outbox.enqueue_due(dsn, cat).event_ids
    assert eid2 != eid
    outbox.publish_pending(dsn, kafka_bootstrap)
    produce_raw(kafka_bootstrap, acks, [new_ack(eid2, "recs", "not_found").to_bytes()], sign=SIGN)
    res = outbox.consume_acks(
        dsn, kafka_bootstrap, ack_keys=KEYS, catalog=cat, group_id=group, idle_timeout_s=1
    )
    assert res.counts["matched"] == 1 and _statuses(dsn) == {"succeeded": 1}
    row = query(dsn, "SELECT attempts, evidence FROM erasure.task")[0]
    assert row["attempts"] == 2 and row["evidence"]["ack"]["event_id"] == eid2


def test_forged_acks_are_recorded_and_ignored_a_signed_one_closes(setup, kafka_bootstrap):
    """Proof of erasure: only an ack signed with its target's key counts (``erasure.ack_auth``)."""
    from erasure.ack_auth import sign_headers

    dsn, cat, _, acks = setup
    seed_kafka_tasks(dsn, ["recs"], 1)
    [eid] = outbox.enqueue_due(dsn, cat).event_ids
    outbox.publish_pending(dsn, kafka_bootstrap)
    ack = new_ack(eid, "recs", "erased").to_bytes()
    group = f"pipeline-{uuid.uuid4().hex[:6]}"
    produce_raw(kafka_bootstrap, acks, [ack], key=b"k")  # unsigned
    produce_raw(kafka_bootstrap, acks, [ack], key=b"k", sign=lambda v: sign_headers("x" * 32, v))  # wrong key
    produce_raw(
        kafka_bootstrap, acks, [ack], key=b"k", sign=lambda v: sign_headers(KEYS["mkt"], v)
    )  # other target's
    tampered = ack.replace(b'"erased"', b'"not_found"')  # signed bytes changed after signing
    sig = sign_headers(KEYS["recs"], ack)
    produce_raw(kafka_bootstrap, acks, [tampered], key=b"k", sign=lambda v: sig)
    res = outbox.consume_acks(
        dsn, kafka_bootstrap, ack_keys=KEYS, catalog=cat, group_id=group, idle_timeout_s=2
    )
    assert res.counts["unauthenticated"] == 4 and res.counts["matched"] == 0 and res.tasks_succeeded == 0
    assert _statuses(dsn) == {"awaiting_ack": 1}  # never closed by a forged ack
    log = query(dsn, "SELECT status, error, raw FROM erasure.ack_log ORDER BY id")
    assert [r["status"] for r in log] == ["unauthenticated"] * 4
    assert log[0]["error"].startswith("unsigned") and all("bad signature" in r["error"] for r in log[1:])
    assert eid in log[0]["raw"]  # kept for the investigation

    # keys missing altogether: still refused, never a silent pass
    produce_raw(kafka_bootstrap, acks, [ack], key=b"k", sign=SIGN)
    res = outbox.consume_acks(dsn, kafka_bootstrap, catalog=cat, group_id=group, idle_timeout_s=2)
    assert res.counts["unauthenticated"] == 1 and _statuses(dsn) == {"awaiting_ack": 1}

    # a rotated key: the previous one is still accepted next to the new one
    produce_raw(kafka_bootstrap, acks, [ack], key=b"k", sign=SIGN)
    rotated = {"recs": ["recs-new-key-" + uuid.uuid4().hex, KEYS["recs"]]}
    res = outbox.consume_acks(
        dsn, kafka_bootstrap, ack_keys=rotated, catalog=cat, group_id=group, idle_timeout_s=2
    )
    assert res.counts["matched"] == 1 and _statuses(dsn) == {"succeeded": 1}
    ev = query(dsn, "SELECT evidence FROM erasure.task")[0]["evidence"]
    assert ev["ack"]["authenticated"] == "signed with the previous key"
    assert ev["verification"]["outcome"] == "not_verifiable" and "lookup_url" in ev["verification"]["answer"]


def test_unreachable_broker_fails_the_ack_consumer(tracking_db):
    """No broker answering is an error, not an empty read: the erasure_acks task fails (and its DAG run
    alerts) instead of finishing green while acks pile up."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(outbox.BrokerUnavailable, match=f"127.0.0.1:{port}"):
        outbox.consume_acks(tracking_db, f"127.0.0.1:{port}", metadata_timeout_s=3)
    assert time.monotonic() - started < 30
    assert query(tracking_db, "SELECT count(*) AS n FROM erasure.ack_log")[0]["n"] == 0


def test_lookups_after_success_acks_run_at_once_and_keep_their_order(tmp_path):
    """A batch's verifying lookups run concurrently through one client (issue 20: one at a time with a
    client each, the consumer applied ~12 acks/s); each answer belongs to its own ack."""
    port = free_port()
    _, cat = kafka_catalog(tmp_path, "e", "a", {"mkt": port, "recs": None})
    store = PartnerStore(tmp_path / "mkt.db")
    still_there = {f"cus_k{i:04d}" for i in range(0, 120, 7)}
    store.put_many([(s, {"email": "x@example.org"}) for s in still_there])
    store.close()
    lookup = PartnerServer("mkt", tmp_path / "mkt.db", port=port).start()
    try:
        mkt, recs = cat.target("mkt"), cat.target("recs")
        work = [(mkt, [f"cus_k{i:04d}"], "erased") for i in range(120)]
        work[5] = (recs, ["cus_k0005"], "erased")  # no lookup_url
        work[9] = (None, ["cus_k0009"], "not_found")  # target gone from the catalog
        work[11] = (mkt, ["cus_k0011", "cus_k0014"], "erased")  # two identifiers, the second still there
        got = list(outbox._verify_acks(work, concurrency=8))
    finally:
        lookup.close()
    assert len(got) == len(work)
    for i, v in enumerate(got):
        if i in (5, 9):
            assert v["outcome"] == "not_verifiable", (i, v)
        elif i == 11 or f"cus_k{i:04d}" in still_there:
            assert v["outcome"] == "failed", (i, v)
        else:
            assert v["outcome"] == "verified", (i, v)
