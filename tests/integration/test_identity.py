"""Identity resolution on the real stack (docs/identity.md): a CRM partner (HTTP, our demo partner on a
free port) and Postgres tables keyed by other identifiers, the tracking store, intake, resolution and
dispatch as the DAGs run them.

Scenarios: a request that gives only an e-mail address is erased from systems keyed by customer id,
device id and phone (multi-hop: e-mail -> customer id -> device ids; with the CRM's way back,
customer id -> e-mail, a cycle) and by e-mail; the identity is stored sealed; a resolver outage that
recovers; one that escalates; a resolver that finds nothing (``not_found``); a hold on an e-mail that
holds a request by customer id; a second request for the same person by another identifier.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import psycopg2
import pytest
import yaml

from erasure.catalog import load_catalog
from erasure.dispatch import dispatch_targets, plan_batches, run_batch
from erasure.holds import place_hold
from erasure.identity import IdentityCodec
from erasure.intake import register_requests
from erasure.resolution import resolve_pending
from erasure.settings import get_settings
from erasure_demo.partners.http_service import PartnerServer

pytestmark = pytest.mark.integration

ANN_EMAIL, ANN_CUS, ANN_PHONE = "ann.lee@example.org", "cus_annlee01", "+4930111222"
ANN_DEVICES = ["dev_annphone01", "dev_annlaptop1"]
BOB_EMAIL, BOB_CUS, BOB_PHONE, BOB_DEVICE = "bob@example.org", "cus_bobby001", "+4930999888", "dev_bobphone01"


@pytest.fixture
def codec() -> IdentityCodec:
    return IdentityCodec.from_settings(get_settings())


@pytest.fixture
def world(tmp_path: Path):
    """The CRM partner, four Postgres tables in a schema of their own, and a catalog over them."""
    hr_dsn = os.environ["ERASURE_HR_DSN"]
    schema = f"t_identity_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(hr_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.devices (device_id text PRIMARY KEY, customer_id text NOT NULL, model text);
            CREATE TABLE {schema}.clicks (device_id text NOT NULL, url text);
            CREATE TABLE {schema}.sms (phone text PRIMARY KEY, body text);
            CREATE TABLE {schema}.newsletter (email text PRIMARY KEY, name text);
            INSERT INTO {schema}.devices VALUES ('{ANN_DEVICES[0]}', '{ANN_CUS}', 'phone'),
                ('{ANN_DEVICES[1]}', '{ANN_CUS}', 'laptop'), ('{BOB_DEVICE}', '{BOB_CUS}', 'phone');
            INSERT INTO {schema}.clicks VALUES ('{ANN_DEVICES[0]}', '/a'), ('{ANN_DEVICES[1]}', '/b'),
                ('{ANN_DEVICES[1]}', '/c'), ('{BOB_DEVICE}', '/d');
            INSERT INTO {schema}.sms VALUES ('{ANN_PHONE}', 'hi ann'), ('{BOB_PHONE}', 'hi bob');
            INSERT INTO {schema}.newsletter VALUES ('{ANN_EMAIL}', 'Ann'), ('{BOB_EMAIL}', 'Bob');
            """
        )
    crm = PartnerServer("crm", tmp_path / "crm.db", key_type="customer_id").start()
    crm.service.store.put(ANN_CUS, {"customer_id": ANN_CUS, "email": ANN_EMAIL, "phone": ANN_PHONE})
    crm.service.store.put(BOB_CUS, {"customer_id": BOB_CUS, "email": BOB_EMAIL, "phone": BOB_PHONE})

    def table(name: str, key: str, keys: str | list[str]) -> dict:
        return {
            "name": name,
            "kind": "postgres_table",
            "owner": "privacy",
            "subject_types": ["customer"],
            "identity_key": keys,
            "retry_backoff_minutes": 0.0005,
            "postgres_table": {"dsn_env": "ERASURE_HR_DSN", "table": f"{schema}.{name}", "key_column": key},
        }

    data = {
        "version": 1,
        "pipeline_owner": "privacy",
        "teams": [{"name": "privacy", "channel": "log:"}, {"name": "crm", "channel": "log:"}],
        "subject_types": [
            {"name": "customer", "id_type": "customer_id", "request_identifiers": ["customer_id", "email"]}
        ],
        "identifier_types": [
            {"name": "customer_id", "pattern": "^cus_[a-z0-9]{4,20}$"},
            {"name": "email", "pattern": "^[^@ ]+@[^@ ]+$", "normalize": "email"},
            {"name": "phone", "pattern": "^\\+[1-9][0-9]{6,14}$", "normalize": "e164"},
            {"name": "device_id", "pattern": "^dev_[a-z0-9]{4,20}$"},
        ],
        "resolvers": [
            {"name": "crm_by_email", "target": "crm", "from": "email", "to": ["customer_id", "phone"]},
            {"name": "crm_by_customer", "target": "crm", "from": "customer_id", "to": ["email"]},
            {"name": "devices_by_customer", "target": "devices", "from": "customer_id", "to": ["device_id"]},
        ],
        "targets": [
            {
                "name": "crm",
                "kind": "sync_api",
                "owner": "crm",
                "subject_types": ["customer"],
                "identity_key": "customer_id",
                "max_attempts": 3,
                "retry_backoff_minutes": 0.0005,
                "sync_api": {"base_url": crm.url, "timeout_s": 2, "max_retries": 0},
            },
            table("devices", "customer_id", "customer_id"),
            table("clicks", "device_id", ["device_id"]),
            table("sms", "phone", "phone"),
            table("newsletter", "email", "email"),
        ],
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    catalog = load_catalog(path)

    def rows(name: str) -> list[tuple]:
        c = psycopg2.connect(hr_dsn)
        try:
            with c, c.cursor() as cur:
                cur.execute(f"SELECT * FROM {schema}.{name} ORDER BY 1, 2")  # noqa: S608
                return cur.fetchall()
        finally:
            c.close()

    yield {"catalog": catalog, "crm": crm, "rows": rows, "schema": schema}
    crm.close()
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


def q(dsn: str, sql: str, *args) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def register(dsn: str, catalog, codec, **request) -> int:
    res = register_requests(
        dsn,
        catalog,
        [{"subject_type": "customer", "requested_by": "dpo@example.org", **request}],
        "api",
        codec=codec,
    )
    assert res.registered == 1, res.to_dict()
    return int(res.outcomes[0].request_id)


def dispatch_all(dsn: str, catalog, codec) -> None:
    settings = get_settings()
    for t in dispatch_targets(catalog):
        for b in plan_batches(dsn, catalog, t.name):
            run_batch(
                dsn,
                catalog,
                t.name,
                b["task_ids"],
                claim_key=f"test-{uuid.uuid4().hex}",
                settings=settings,
                codec=codec,
            )


def test_email_only_request_is_erased_everywhere_by_each_targets_own_key(tracking_db, world, codec):
    catalog, rows = world["catalog"], world["rows"]
    rid = register(tracking_db, catalog, codec, identifiers={"email": "  Ann.Lee@Example.ORG "})
    status, subject_id = q(tracking_db, "SELECT status, subject_id FROM erasure.request WHERE id = %s", rid)[
        0
    ]
    assert status == "resolving" and subject_id == codec.digest("email", ANN_EMAIL)
    assert q(tracking_db, "SELECT count(*) FROM erasure.task WHERE request_id = %s", rid)[0][0] == 5

    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert res.released == 1 and res.still_resolving == 0 and not res.failed
    assert res.rounds >= 2  # e-mail -> customer id, then customer id -> device ids (and back to e-mail)
    ident = q(
        tracking_db,
        "SELECT id_type, source, depth, sealed FROM erasure.identity WHERE request_id = %s ORDER BY id",
        rid,
    )
    found = sorted((t, codec.unseal(t, bytes(s)), src, d) for t, src, d, s in ident)
    assert found == sorted(
        [
            ("email", ANN_EMAIL, "request", 0),
            ("customer_id", ANN_CUS, "crm_by_email", 1),
            ("phone", ANN_PHONE, "crm_by_email", 1),
            ("device_id", ANN_DEVICES[0], "devices_by_customer", 2),
            ("device_id", ANN_DEVICES[1], "devices_by_customer", 2),
        ]
    )  # the cycle (customer id -> e-mail) added nothing twice
    assert q(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", rid)[0][0] == "in_progress"
    ev = q(
        tracking_db,
        "SELECT details FROM erasure.event_log WHERE request_id = %s AND event_type = 'identity_resolved'",
        rid,
    )
    assert ev[0][0]["identifiers"] == {"email": 1, "customer_id": 1, "phone": 1, "device_id": 2}
    assert ev[0][0]["resolvers"]["devices_by_customer"]["found"] == 2

    dispatch_all(tracking_db, catalog, codec)
    tasks = dict(q(tracking_db, "SELECT target, status FROM erasure.task WHERE request_id = %s", rid))
    assert set(tasks.values()) == {"succeeded"}, tasks
    assert rows("clicks") == [(world_bob := BOB_DEVICE, "/d")] and world_bob
    assert rows("devices") == [(BOB_DEVICE, BOB_CUS, "phone")]
    assert rows("sms") == [(BOB_PHONE, "hi bob")] and rows("newsletter") == [(BOB_EMAIL, "Bob")]
    assert world["crm"].service.store.get(ANN_CUS) is None and world["crm"].service.store.get(BOB_CUS)
    clicks_ev = q(
        tracking_db, "SELECT evidence FROM erasure.task WHERE request_id = %s AND target = 'clicks'", rid
    )[0][0]
    assert clicks_ev["identifiers"] == 2 and clicks_ev["verification"]["outcome"] == "verified"
    assert [p["id_type"] for p in clicks_ev["per_identifier"]] == ["device_id", "device_id"]
    assert sum(p["rows_deleted"] for p in clicks_ev["per_identifier"]) == 3
    # no e-mail, phone or device id in clear anywhere in the tracking store
    dump = "\n".join(
        str(r)
        for table in ("request", "task", "identity", "resolution", "event_log")
        for r in q(tracking_db, f"SELECT t::text FROM erasure.{table} t")  # noqa: S608
    )
    for secret in (ANN_EMAIL, ANN_PHONE, *ANN_DEVICES, "Ann.Lee@Example.ORG"):
        assert secret not in dump

    # the identity drives dispatch once: a second pass finds nothing due
    dispatch_all(tracking_db, catalog, codec)
    assert world["crm"].service.counters["identity_lookups"] >= 2


def test_resolver_outage_recovers_and_then_escalates(tracking_db, world, codec):
    catalog, crm = world["catalog"], world["crm"]
    httpx.put(f"{crm.url}/admin/faults", json={"down": True}, timeout=10).raise_for_status()
    rid = register(tracking_db, catalog, codec, identifiers={"email": ANN_EMAIL})
    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert "crm_by_email" in res.failed and res.released == 0 and res.still_resolving == 1
    state = q(
        tracking_db, "SELECT status, attempts, last_error FROM erasure.resolution WHERE request_id = %s", rid
    )
    assert state[0][:2] == ("failed", 1) and "identities/lookup" in state[0][2]
    assert (
        q(tracking_db, "SELECT count(*) FROM erasure.task WHERE request_id = %s AND status = 'pending'", rid)[
            0
        ][0]
        == 5
    )

    httpx.put(f"{crm.url}/admin/faults", json={"down": False}, timeout=10).raise_for_status()
    q(tracking_db, "UPDATE erasure.resolution SET next_attempt_at = now() WHERE request_id = %s", rid)
    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert res.released == 1 and not res.failed
    assert (
        q(
            tracking_db,
            "SELECT status FROM erasure.resolution WHERE request_id = %s AND resolver = 'crm_by_email'",
            rid,
        )[0][0]
        == "done"
    )

    # a resolver down for good escalates after the target's max_attempts (3) and alerts its owner
    httpx.put(f"{crm.url}/admin/faults", json={"down": True}, timeout=10).raise_for_status()
    rid2 = register(tracking_db, catalog, codec, identifiers={"email": BOB_EMAIL})
    for _ in range(3):
        q(tracking_db, "UPDATE erasure.resolution SET next_attempt_at = now() WHERE request_id = %s", rid2)
        resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert q(tracking_db, "SELECT status, attempts FROM erasure.resolution WHERE request_id = %s", rid2) == [
        ("escalated", 3)
    ]
    assert q(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", rid2)[0][0] == "resolving"
    alert = q(
        tracking_db, "SELECT kind, team, request_id FROM erasure.alert WHERE kind = 'resolver_escalated'"
    )
    assert alert == [("resolver_escalated", "crm", rid2)]


def test_nothing_found_is_not_found_success(tracking_db, world, codec):
    catalog, rows = world["catalog"], world["rows"]
    rid = register(tracking_db, catalog, codec, identifiers={"email": "nobody@example.org"})
    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert res.released == 1 and res.not_found_tasks == 4  # every target but the e-mail-keyed one
    nf = q(
        tracking_db,
        "SELECT target, status, evidence->>'outcome', evidence->'verification'->>'outcome' FROM erasure.task"
        " WHERE request_id = %s AND target <> 'newsletter' ORDER BY target",
        rid,
    )
    assert nf == [
        (t, "succeeded", "not_found", "not_verifiable") for t in ("clicks", "crm", "devices", "sms")
    ]
    ev = q(tracking_db, "SELECT evidence FROM erasure.task WHERE request_id = %s AND target = 'crm'", rid)[0][
        0
    ]
    assert ev["resolvers"]["crm_by_email"] == {"status": "done", "looked_up": 1, "found": 0}
    dispatch_all(tracking_db, catalog, codec)
    assert q(
        tracking_db,
        "SELECT status, evidence->>'outcome' FROM erasure.task WHERE request_id = %s AND target = 'newsletter'",
        rid,
    ) == [("succeeded", "already_gone")]
    assert len(rows("newsletter")) == 2


def test_hold_on_an_email_holds_a_request_by_customer_id_and_duplicates_match_any_identifier(
    tracking_db, world, codec
):
    catalog = world["catalog"]
    hold = place_hold(
        tracking_db,
        "customer",
        " ANN.LEE@example.org",
        "litigation",
        "legal@example.org",
        catalog,
        id_type="email",
        codec=codec,
    )
    assert q(tracking_db, "SELECT subject_id FROM erasure.legal_hold WHERE id = %s", hold.hold_id)[0][
        0
    ] == codec.digest("email", ANN_EMAIL)
    rid = register(tracking_db, catalog, codec, subject_id=ANN_CUS)
    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert res.held == 1
    status, reason = q(tracking_db, "SELECT status, status_reason FROM erasure.request WHERE id = %s", rid)[0]
    assert status == "held" and reason.startswith(f"legal hold {hold.hold_id}")

    # Bob: a request by customer id, then one by his e-mail: the same person, found after resolution
    first = register(tracking_db, catalog, codec, subject_id=BOB_CUS)
    second = register(tracking_db, catalog, codec, identifiers={"email": BOB_EMAIL})
    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    statuses = dict(
        q(tracking_db, "SELECT id, status FROM erasure.request WHERE id IN (%s, %s)", first, second)
    )
    assert statuses == {first: "in_progress", second: "rejected"}
    reason = q(tracking_db, "SELECT status_reason FROM erasure.request WHERE id = %s", second)[0][0]
    assert reason.startswith(f"duplicate of request {first}: the same person")


def test_kafka_events_carry_the_targets_identifiers(tracking_db, world, codec):
    """A consumer keyed by device id gets a version-2 event with both device ids; one keyed by customer
    id a version-1 event with the customer id as subject (old consumers keep working); one keyed by a
    type not found succeeds as not_found."""
    from erasure import outbox
    from erasure.catalog import Catalog

    data = world["catalog"].model_dump()

    def kafka(name: str, key: str) -> dict:
        return {
            "name": name,
            "kind": "kafka",
            "owner": "privacy",
            "subject_types": ["customer"],
            "identity_key": key,
            "kafka": {"topic": "test.identity.events", "ack_topic": "test.identity.acks"},
        }

    data["targets"] += [kafka("ev_devices", "device_id"), kafka("ev_customer", "customer_id")]
    catalog = Catalog.model_validate(data)
    rid = register(tracking_db, catalog, codec, identifiers={"email": ANN_EMAIL})
    resolve_pending(tracking_db, catalog, get_settings(), codec)
    res = outbox.enqueue_due(tracking_db, catalog, codec=codec)
    assert res.enqueued == 2
    events = {
        t: p
        for t, p in q(
            tracking_db,
            "SELECT t.target, o.payload FROM erasure.outbox o JOIN erasure.task t ON t.id = o.task_id"
            " WHERE t.request_id = %s",
            rid,
        )
    }
    dev = events["ev_devices"]
    assert dev["schema_version"] == 2 and sorted(dev["identifiers"]["device_id"]) == sorted(ANN_DEVICES)
    assert dev["subject"]["id"] in ANN_DEVICES
    cus = events["ev_customer"]
    assert cus["schema_version"] == 1 and cus["subject"]["id"] == ANN_CUS and "identifiers" not in cus
    assert outbox._event_values({"payload": dev, "subject_id": "x"}) == [dev["subject"]["id"], *[
        d for d in dev["identifiers"]["device_id"] if d != dev["subject"]["id"]
    ]]  # fmt: skip

    # nobody@...: the device-keyed consumer has nothing to erase: not_found at release, no event
    rid2 = register(tracking_db, catalog, codec, identifiers={"email": "nobody@example.org"})
    resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert outbox.enqueue_due(tracking_db, catalog, codec=codec).enqueued == 0
    rows = q(
        tracking_db,
        "SELECT target, status, evidence->>'outcome' FROM erasure.task WHERE request_id = %s AND kind = 'kafka'"
        " ORDER BY target",
        rid2,
    )
    assert rows == [("ev_customer", "succeeded", "not_found"), ("ev_devices", "succeeded", "not_found")]


def test_a_crash_mid_pass_is_recovered_by_the_next_pass(tracking_db, world, codec, monkeypatch):
    """Each round writes in one transaction: a pass that dies in its second round keeps the first
    round's identifiers and cursors, and the next pass looks up only what is left (nothing twice); a
    pass over windows of one request each gives the same result; a third pass has nothing to do."""
    from erasure import resolution

    catalog = world["catalog"]
    ann = register(tracking_db, catalog, codec, identifiers={"email": ANN_EMAIL})
    bob = register(tracking_db, catalog, codec, subject_id=BOB_CUS)
    monkeypatch.setattr(resolution, "WINDOW", 1)
    upsert, calls = resolution._upsert_resolution, []

    def dies_in_round_two(cur, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        upsert(cur, rows)

    monkeypatch.setattr(resolution, "_upsert_resolution", dies_in_round_two)
    with pytest.raises(RuntimeError, match="worker killed"):
        resolve_pending(tracking_db, catalog, get_settings(), codec)
    kept = q(
        tracking_db, "SELECT id_type, source FROM erasure.identity WHERE request_id = %s ORDER BY id", ann
    )
    assert kept == [("email", "request"), ("customer_id", "crm_by_email"), ("phone", "crm_by_email")]
    assert q(tracking_db, "SELECT status FROM erasure.request WHERE id IN (%s, %s)", ann, bob) == [
        ("resolving",),
        ("resolving",),
    ]

    monkeypatch.setattr(resolution, "_upsert_resolution", upsert)
    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert res.released == 2 and res.still_resolving == 0 and not res.failed
    assert res.looked_up["crm_by_email"] == 1  # Bob's e-mail, found from his customer id; not Ann's again
    states = dict(
        ((rid, name), (st, n))
        for rid, name, st, n in q(
            tracking_db, "SELECT request_id, resolver, status, looked_up FROM erasure.resolution"
        )
    )
    assert states[(ann, "crm_by_email")] == ("done", 1)  # looked up once, before the crash
    assert states[(ann, "devices_by_customer")] == ("done", 1)
    assert states[(bob, "crm_by_customer")] == ("done", 1)
    types = q(
        tracking_db,
        "SELECT request_id, id_type, count(*) FROM erasure.identity GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert types == [
        (ann, "customer_id", 1),
        (ann, "device_id", 2),
        (ann, "email", 1),
        (ann, "phone", 1),
        (bob, "customer_id", 1),
        (bob, "device_id", 1),
        (bob, "email", 1),
        (bob, "phone", 1),
    ]
    assert q(
        tracking_db, "SELECT status FROM erasure.request WHERE id IN (%s, %s) ORDER BY id", ann, bob
    ) == [
        ("in_progress",),
        ("in_progress",),
    ]
    again = resolve_pending(tracking_db, catalog, get_settings(), codec)
    assert again.released == 0 and again.looked_up == {} and again.found == {}
