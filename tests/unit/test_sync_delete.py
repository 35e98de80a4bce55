"""The async delete client: response classification, retry policy, Retry-After, rate limit, idempotency
keys, timeouts — against our demo partner served in-process on a free port (no mocks, no database)."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from erasure.catalog import load_catalog
from erasure.dispatch import pool_specs
from erasure.sync_delete import RateLimiter, RetryPolicy, SyncDeleteClient, classify, parse_retry_after
from erasure_demo.partners.http_service import Faults, PartnerServer

FAST = RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def partner(tmp_path):
    with PartnerServer("crm", tmp_path / "crm.db") as srv:
        yield srv


def run(coro):
    return asyncio.run(coro)


async def delete_one(url: str, subject: str, key: str = "k1", **kw) -> object:
    kw.setdefault("retry", FAST)
    async with SyncDeleteClient(url, **kw) as c:
        return await c.delete(subject, key)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "deleted"), (204, "deleted"), (404, "already_gone"), (410, "already_gone"), (409, "conflict"),
     (429, "throttle"), (500, "retry"), (503, "retry"), (408, "retry"), (400, "permanent_failure"),
     (401, "permanent_failure"), (422, "permanent_failure"), (301, "permanent_failure")],
)  # fmt: skip
def test_classify(status, verdict):
    assert classify(status) == verdict


def test_parse_retry_after():
    assert parse_retry_after("3", 1, 60) == 3
    assert parse_retry_after("0.25", 1, 60) == 0.25
    assert parse_retry_after("999", 1, 60) == 60  # capped
    assert parse_retry_after(None, 1.5, 60) == 1.5
    assert parse_retry_after("soon", 2, 60) == 2
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= parse_retry_after(when, 1, 60) <= 10
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=10), usegmt=True)
    assert parse_retry_after(past, 1, 60) == 0


def test_backoff_is_exponential_with_jitter_and_capped():
    p = RetryPolicy(base_delay_s=1, max_delay_s=8)
    for retry, full in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 8)]:
        samples = [p.backoff(retry) for _ in range(200)]
        assert all(full / 2 <= s <= full for s in samples)
        assert max(samples) - min(samples) > 0  # jittered


def test_rate_limiter_spaces_calls():
    async def go() -> float:
        lim = RateLimiter(50)
        t0 = time.monotonic()
        for _ in range(26):
            await lim.acquire()
        return time.monotonic() - t0

    assert 0.45 <= run(go()) < 1.5  # 25 intervals of 20 ms


def test_rate_limiter_pause_blocks_everyone():
    async def go() -> float:
        lim = RateLimiter(None)
        lim.pause(0.3)
        t0 = time.monotonic()
        await asyncio.gather(*(lim.acquire() for _ in range(5)))
        return time.monotonic() - t0

    assert 0.28 <= run(go()) < 1.0


def test_success_evidence_and_idempotency_key_reach_partner(partner):
    partner.service.store.put("cus_1", {"email": "a@example.com"})
    r = run(delete_one(partner.url, "cus_1", key="erasure-1-1"))
    assert r.ok and r.outcome == "deleted" and r.http_status == 200 and r.calls == 1
    assert r.response_id and r.response_id.startswith("del_") and "cus_1" in r.response_snippet
    ev = r.evidence()
    assert ev["idempotency_key"] == "erasure-1-1" and ev["started_at"] <= ev["finished_at"]
    assert "subject_id" not in ev
    assert partner.service.store.deletions("cus_1")[0]["idempotency_key"] == "erasure-1-1"
    # the same key again replays the first answer; a new key finds nothing (404 = success)
    again = run(delete_one(partner.url, "cus_1", key="erasure-1-1"))
    assert again.outcome == "deleted" and again.response_id == r.response_id
    other = run(delete_one(partner.url, "cus_1", key="erasure-9-9"))
    assert other.ok and other.outcome == "already_gone" and other.http_status == 404


def test_subject_ids_are_url_quoted(partner):
    partner.service.store.put("a b/c?d", {"x": 1})
    r = run(delete_one(partner.url, "a b/c?d"))
    assert r.outcome == "deleted"  # '/', '?' and ' ' encoded: the partner saw the exact id
    assert partner.service.store.get("a b/c?d") is None
    partner.service.store.put("cus:x@y.z", {"x": 1})
    assert run(delete_one(partner.url, "cus:x@y.z")).outcome == "deleted"


def test_5xx_retried_then_given_up(partner):
    partner.service.faults.update({"error_rate": 1.0, "error_status": 502})
    r = run(delete_one(partner.url, "cus_2"))
    assert not r.ok and r.outcome == "retryable_failure" and r.calls == 3 and r.http_status == 502
    assert r.error.startswith("HTTP 502")


def test_permanent_4xx_not_retried(partner):
    partner.service.faults.update({"subject_status": {"cus_3": 400}})
    r = run(delete_one(partner.url, "cus_3"))
    assert r.permanent and r.calls == 1 and r.http_status == 400 and "rejected" in r.response_snippet


def test_409_is_success(partner):
    partner.service.faults.update({"subject_status": {"cus_4": 409}})
    assert run(delete_one(partner.url, "cus_4")).outcome == "conflict"


def test_timeout_is_retried(partner):
    partner.service.faults.update({"latency_ms": 400})
    t0 = time.monotonic()
    r = run(delete_one(partner.url, "cus_5", timeout_s=0.1))
    assert r.outcome == "retryable_failure" and r.calls == 3 and "Timeout" in r.error
    assert time.monotonic() - t0 < 2


def test_connection_refused_is_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run(delete_one(f"http://127.0.0.1:{port}", "cus_6"))
    assert r.outcome == "retryable_failure" and r.calls == 3 and r.http_status is None


def test_429_honours_retry_after_then_succeeds(partner):
    partner.service.store.put_many([(f"cus_t{i}", {}) for i in range(12)])
    partner.service.faults.update({"rate_limit_per_s": 10, "retry_after_s": 0.3})

    async def go():
        async with SyncDeleteClient(partner.url, concurrency=4, retry=FAST) as c:
            return await c.delete_many([(i, f"cus_t{i}", f"k{i}") for i in range(12)])

    t0 = time.monotonic()
    results = run(go())
    assert time.monotonic() - t0 >= 0.3
    assert {r.outcome for r in results} == {"deleted"}
    assert sum(r.throttled for r in results) >= 1


def test_429_forever_gives_up_as_retryable(partner):
    partner.service.faults.update({"rate_limit_per_s": 0.001, "retry_after_s": 0.01})
    partner.service.store.put("cus_x", {})
    httpx.delete(f"{partner.url}/subjects/other")  # use the single token of the bucket
    retry = RetryPolicy(max_retries=1, base_delay_s=0.01, max_throttle_waits=3)
    r = run(delete_one(partner.url, "cus_x", retry=retry))
    assert r.outcome == "retryable_failure" and r.throttled == 4 and r.http_status == 429


def test_bearer_token(tmp_path):
    with PartnerServer("crm", tmp_path / "p.db", token="s3cret") as srv:
        assert run(delete_one(srv.url, "cus_1")).http_status == 401  # permanent: misconfiguration
        assert run(delete_one(srv.url, "cus_1", token="s3cret")).outcome == "already_gone"


def test_delete_many_bounds_concurrency(partner):
    partner.service.faults.update({"latency_ms": 50})
    seen: list[int] = []
    inflight = 0

    async def go():
        nonlocal inflight
        async with SyncDeleteClient(partner.url, concurrency=3, retry=FAST) as c:
            orig = c.delete

            async def counting(*a, **kw):
                nonlocal inflight
                inflight += 1
                seen.append(inflight)
                try:
                    return await orig(*a, **kw)
                finally:
                    inflight -= 1

            c.delete = counting  # type: ignore[method-assign]
            return await c.delete_many([(i, f"s{i}", f"k{i}") for i in range(12)])

    results = run(go())
    assert len(results) == 12 and max(seen) == 3


def test_client_config_errors(catalog):
    with pytest.raises(ValueError, match="subject_id"):
        SyncDeleteClient("http://x", delete_path="/subjects")
    with pytest.raises(ValueError, match="concurrency"):
        SyncDeleteClient("http://x", concurrency=0)
    with pytest.raises(ValueError, match="not 'sync_api'"):
        SyncDeleteClient.for_target(catalog.target("hr_directory"))
    c = SyncDeleteClient.for_target(catalog.target("crm_contacts"))
    assert c.concurrency == 16 and c.rate_limit_per_s == 400 and c.retry.max_retries == 4


def test_fault_settings_validation():
    f = Faults()
    with pytest.raises(ValueError, match="unknown fault setting 'bogus'"):
        f.update({"bogus": 1})
    with pytest.raises(ValueError, match="error_rate"):
        f.update({"error_rate": 2})
    f.update({"outage_seconds": 5})
    assert f.in_outage() and not f.in_outage(time.time() + 6)


def test_pools_and_backoff_from_catalog(catalog):
    pools = pool_specs(catalog)
    assert pools["erasure_crm_contacts"]["slots"] == 2 and pools["erasure_hr_directory"]["slots"] == 1
    assert all({"slots", "description"} <= set(v) for v in pools.values())
    t = catalog.target("crm_contacts")  # retry_backoff_minutes: 1
    assert [t.retry_delay(n) for n in (1, 2, 3)] == [timedelta(minutes=m) for m in (1, 2, 4)]
    assert t.retry_delay(40) == timedelta(days=1)


def test_default_catalog_loads():
    assert load_catalog().of_kind("sync_api")
