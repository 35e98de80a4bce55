"""Identity (docs/identity.md): identifier types, the catalog's identity graph, normalisation, sealing,
requests by any identifier, and how a task's outcomes per identifier fold into one."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from erasure.catalog import CatalogError, load_catalog
from erasure.fanout import Combiner, combine
from erasure.identity import IdentityCodec, IdentityError, normalise, reachable
from erasure.intake import validate_request
from erasure.targets.base import Claimed, Outcome

ROOT = Path(__file__).resolve().parents[2]

GRAPH = """
version: 1
pipeline_owner: privacy
subject_types:
  - name: customer
    id_type: customer_id
    request_identifiers: [customer_id, email]
teams: [{name: privacy}]
identifier_types:
  - {name: customer_id, pattern: '^cus_[a-z0-9]{3,20}$'}
  - {name: email, pattern: '^[^@ ]+@[^@ ]+$', normalize: email}
  - {name: phone, pattern: '^\\+[1-9][0-9]{6,14}$', normalize: e164}
  - {name: device_id, pattern: '^dev_[a-z0-9]{3,20}$'}
resolvers:
  - {name: crm_by_email, target: crm, from: email, to: [customer_id, phone]}
  - {name: crm_by_customer, target: crm, from: customer_id, to: [email]}
  - {name: devices, target: devices, from: customer_id, to: [device_id]}
targets:
  - name: crm
    kind: sync_api
    owner: privacy
    subject_types: [customer]
    identity_key: customer_id
    sync_api: {base_url: 'http://127.0.0.1:1'}
  - name: devices
    kind: postgres_table
    owner: privacy
    subject_types: [customer]
    identity_key: customer_id
    postgres_table: {table: identity.devices, key_column: customer_id}
  - name: clicks
    kind: postgres_table
    owner: privacy
    subject_types: [customer]
    identity_key: [device_id]
    postgres_table: {table: clicks, key_column: device_id}
  - name: newsletter
    kind: postgres_table
    owner: privacy
    subject_types: [customer]
    identity_key: email
    postgres_table: {table: newsletter, key_column: email}
"""


def load(tmp_path: Path, text: str = GRAPH):
    p = tmp_path / "catalog.yaml"
    p.write_text(textwrap.dedent(text))
    return load_catalog(p, env=os.environ)


def test_shipped_catalog_declares_an_identity_graph():
    cat = load_catalog(ROOT / "include" / "catalog")
    assert cat.has_identity
    assert cat.id_type_of("customer") == "customer_id" and cat.id_type_of("employee") == "employee_id"
    assert cat.target("support_desk").identity_keys == ["customer_id", "employee_id"]
    assert cat.target("support_desk").identity_key == "customer_id"
    assert reachable(cat, "customer", ["email"]).keys() >= {"customer_id", "phone", "device_id", "email"}
    assert reachable(cat, "customer", ["email"])["device_id"] == ["crm_by_email", "devices_by_customer"]
    assert cat.resolvers_for("employee") == []


def test_graph_loads_and_resolves_multi_hop_with_a_cycle(tmp_path):
    cat = load(tmp_path)
    paths = reachable(cat, "customer", ["email"])
    assert paths == {
        "email": [],
        "customer_id": ["crm_by_email"],
        "phone": ["crm_by_email"],
        "device_id": ["crm_by_email", "devices"],
    }
    # the cycle email -> customer_id -> email terminates, each type once
    assert set(reachable(cat, "customer", ["customer_id"])) == {"customer_id", "email", "phone", "device_id"}


def test_unreachable_identifier_is_rejected_naming_target_and_path(tmp_path):
    text = GRAPH.replace("  - {name: devices, target: devices, from: customer_id, to: [device_id]}\n", "")
    with pytest.raises(CatalogError) as err:
        load(tmp_path, text)
    msg = str(err.value)
    assert "target 'clicks' is erased by ['device_id']" in msg
    assert "carrying only 'customer_id'" in msg and "no resolver path from 'customer_id' to device_id" in msg


def test_narrowing_request_identifiers_makes_it_valid_and_bad_references_are_named(tmp_path):
    # without crm_by_customer, a request by customer id cannot reach the e-mail-keyed newsletter
    text = GRAPH.replace("  - {name: crm_by_customer, target: crm, from: customer_id, to: [email]}\n", "")
    with pytest.raises(CatalogError, match="target 'newsletter' is erased by \\['email'\\]"):
        load(tmp_path, text)
    load(tmp_path, text.replace("request_identifiers: [customer_id, email]", "request_identifiers: [email]"))
    for bad, expected in [
        ("from: email, to: [customer_id, phone]", "unknown identifier type 'mail'"),
        ("target: crm, from: email", "unknown target 'crmm'"),
        ("identity_key: [device_id]", "identity_key 'device' is not a declared identifier type"),
    ]:
        wrong = {
            "from: email, to: [customer_id, phone]": "from: mail, to: [customer_id, phone]",
            "target: crm, from: email": "target: crmm, from: email",
            "identity_key: [device_id]": "identity_key: [device]",
        }[bad]
        with pytest.raises(CatalogError, match=expected):
            load(tmp_path, GRAPH.replace(bad, wrong))


def test_a_kind_that_cannot_resolve_is_refused(tmp_path):
    text = GRAPH.replace(
        "targets:\n",
        "targets:\n  - name: events\n    kind: kafka\n    owner: privacy\n    subject_types: [customer]\n"
        "    identity_key: customer_id\n    kafka: {topic: erasure.events}\n",
    ).replace("target: devices, from", "target: events, from")
    with pytest.raises(CatalogError, match="kind 'kafka', which cannot resolve"):
        load(tmp_path, text)


def test_normalise_email_phone_and_patterns(tmp_path):
    cat = load(tmp_path)
    email, phone = cat.identifier_type("email"), cat.identifier_type("phone")
    assert email is not None and phone is not None
    assert normalise(email, "  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert normalise(phone, "0049 (30) 1234-5678") == "+493012345678"
    with pytest.raises(IdentityError, match="phone: does not match") as err:
        normalise(phone, "call me")
    assert "call me" not in str(err.value)  # never the value


def test_codec_digests_seal_and_refuse_a_swapped_type():
    codec = IdentityCodec(b"k" * 32, b"h" * 32)
    assert codec.digest("email", "a@b.c") == codec.digest("email", "a@b.c")
    assert codec.digest("email", "a@b.c") != codec.digest("customer_id", "a@b.c")
    sealed = codec.seal("email", "a@b.c")
    assert b"a@b.c" not in sealed and sealed != codec.seal("email", "a@b.c")  # random nonce
    assert codec.unseal("email", sealed) == "a@b.c"
    with pytest.raises(IdentityError, match="does not open"):
        codec.unseal("customer_id", sealed)
    with pytest.raises(IdentityError, match="does not open"):
        IdentityCodec(b"x" * 32, b"h" * 32).unseal("email", sealed)


def test_request_by_identifiers_is_validated_and_gets_a_digest_subject(tmp_path):
    cat = load(tmp_path)
    codec = IdentityCodec(b"k" * 32, b"h" * 32)
    req, errs = validate_request(
        cat,
        {"subject_type": "customer", "requested_by": "dpo", "identifiers": {"email": " Ann@X.org "}},
        codec,
    )
    assert errs == [] and req is not None
    assert req.identifiers == {"email": ["ann@x.org"]}
    assert req.subject_id == codec.digest("email", "ann@x.org") and "ann" not in req.subject_id
    # the subject_id form keeps working and becomes the id type's identifier
    req, errs = validate_request(
        cat, {"subject_type": "customer", "requested_by": "dpo", "subject_id": "cus_abc"}, codec
    )
    assert errs == [] and req is not None and req.identifiers == {"customer_id": ["cus_abc"]}
    req, errs = validate_request(
        cat,
        {
            "subject_type": "customer",
            "requested_by": "dpo",
            "identifiers": {"phone": "+4930123456", "email": "nope"},
        },
        codec,
    )
    assert req is None
    problems = {e.field: e.problem for e in errs}
    assert "identifiers.phone" in problems and "unknown identifier type" in problems["identifiers.phone"]
    assert problems["identifiers.email"].startswith("does not match")
    _, errs = validate_request(cat, {"subject_type": "customer", "requested_by": "dpo"}, codec)
    assert [(e.field, e.problem) for e in errs] == [("subject_id", "is required")]


def test_identifiers_are_refused_by_a_catalog_without_identifier_types():
    from erasure.catalog import Catalog

    cat = Catalog.model_validate(
        {"pipeline_owner": "p", "teams": [{"name": "p"}], "subject_types": [{"name": "c"}]}
    )
    _, errs = validate_request(
        cat, {"subject_type": "c", "requested_by": "x", "identifiers": {"email": "a@b.c"}}
    )
    assert [e.field for e in errs] == ["identifiers"]


def _claimed(task_id: int, key_index: int, value: str, id_type: str) -> Claimed:
    return Claimed(task_id, 7, value, 0, key_index=key_index, id_type=id_type)


def test_outcomes_per_identifier_fold_into_one_per_task():
    items = [
        _claimed(1, 0, "dev_aaaaaaa1", "device_id"),
        _claimed(1, 1, "dev_bbbbbbb2", "device_id"),
        _claimed(2, 0, "cus_x1", "customer_id"),
    ]
    assert items[1].idempotency_key == "erasure-7-1-1" and items[0].idempotency_key == "erasure-7-1"
    got: list[Outcome] = []
    comb = Combiner(items, got.append)
    ver = {"outcome": "verified", "method": "count", "answer": "0 rows", "verified_at": "x"}
    comb(Outcome(items[2], True, {"kind": "postgres_table", "outcome": "deleted", "verification": ver}))
    assert [o.item.task_id for o in got] == [2]  # a one-identifier task passes through
    comb(Outcome(items[0], True, {"kind": "postgres_table", "outcome": "deleted", "verification": ver}))
    assert len(got) == 1  # waits for every identifier of task 1
    comb(Outcome(items[1], False, {"kind": "postgres_table", "outcome": "retryable_failure"}, error="boom"))
    assert len(got) == 2 and comb.incomplete == []
    o = got[1]
    assert o.item.task_id == 1 and o.item.key_index == 0 and not o.ok and not o.pending
    assert o.evidence["outcome"] == "retryable_failure" and o.evidence["identifiers"] == 2
    assert [p["identifier"] for p in o.evidence["per_identifier"]] == ["dev_••••a1", "dev_••••b2"]
    assert "dev_aaaaaaa1" not in str(o.evidence) and "verification" not in o.evidence
    assert o.error is not None and "device_id #1: boom" in o.error
    both = combine(items[0], [
        Outcome(items[0], True, {"kind": "k", "outcome": "deleted", "verification": ver}),
        Outcome(items[1], True, {"kind": "k", "outcome": "already_gone", "verification": ver}),
    ])  # fmt: skip
    assert both.ok and both.evidence["verification"]["outcome"] == "verified"
    assert both.evidence["outcome"] == "deleted"


def test_a_bad_identifier_pattern_is_named(tmp_path):
    with pytest.raises(
        CatalogError, match="identifier type 'email', field 'pattern': not a valid regular expression"
    ):
        load(tmp_path, GRAPH.replace("pattern: '^[^@ ]+@[^@ ]+$'", "pattern: '(['"))


def test_resolution_prepares_each_identifier_once_and_picks_only_pending_lookups(tmp_path):
    """The resolution stage's in-memory side (erasure.resolution): an identifier found for several
    requests is normalised, hashed and sealed once; a resolver takes only identifiers of its type,
    below the depth bound, past its cursor, and none while it waits to retry or has escalated."""
    from erasure.resolution import _Crypto, _Ident, _pending, _State, _Window

    cat = load(tmp_path)
    codec = IdentityCodec(b"k" * 32, b"h" * 32)
    crypto = _Crypto(cat, codec)
    assert crypto.normalise("email", " Ann@Example.ORG ") == "ann@example.org"
    assert crypto.normalise("email", "no at sign") is None and crypto.normalise("nope", "x") is None
    assert crypto.known_type("email") and not crypto.known_type("nope")
    sealed = crypto.seal("email", "ann@example.org")
    assert crypto.seal("email", "ann@example.org") is sealed  # once per identifier and pass
    assert codec.unseal("email", sealed) == "ann@example.org"
    assert crypto.digest("email", "ann@example.org") == codec.digest("email", "ann@example.org")
    ident = _Ident(7, 1, "email", "d", 0, sealed)
    assert crypto.value(ident) == "ann@example.org" and ident.value == "ann@example.org"

    def ident_of(iid: int, rid: int, depth: int = 0) -> _Ident:
        return _Ident(iid, rid, "customer_id", f"d{iid}", depth, None, f"cus_{iid:04d}")

    w = _Window(
        subject_types={1: "customer", 2: "customer", 3: "customer", 4: "customer", 5: "customer"},
        by_type={
            "customer_id": [
                ident_of(10, 1),
                ident_of(11, 2),
                ident_of(12, 3),
                ident_of(13, 4),
                ident_of(14, 5, 4),
            ]
        },
        known=set(),
        states={
            (1, "devices"): _State("done", cursor=10),  # looked up already
            (2, "devices"): _State("done", cursor=5),  # found since
            (3, "devices"): _State("failed", attempts=1, waiting=True),
            (4, "devices"): _State("escalated", attempts=3),
        },
    )
    pending = _pending(w, cat, cat.resolver("devices"), max_depth=4)
    assert [i.id for i in pending] == [11]  # request 5's identifier is at the depth bound


def test_resolution_array_literals_quote_what_needs_it():
    from erasure.resolution import _array, _columns

    assert _array([1, None, 3]) == "{1,NULL,3}"
    assert _array(["a", 'say "hi"', "back\\slash", "null", "x,y"]) == (
        '{"a","say \\"hi\\"","back\\\\slash","null","x,y"}'
    )
    assert _columns([(1, "a"), (2, None)]) == ["{1,2}", '{"a",NULL}']
