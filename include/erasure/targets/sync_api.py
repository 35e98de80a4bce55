"""Kind ``sync_api``: a partner's HTTP delete API, called per subject by the dispatch DAG's mapped batches.

* erase: ``DELETE <base_url><delete_path>`` with an idempotency key per task, bounded concurrency, an
  optional rate limit and retries inside the batch (``erasure.sync_delete``); 404/410/409 mean gone.
* verify: ``GET <base_url><lookup_path>``: 404 gone, 200 still there. Every delete the partner answers
  as done (2xx, 404, 409) or accepted (202) is followed, in the same batch and at the same concurrency,
  by this lookup; its answer is the task's ``evidence.verification`` (see ``SyncApiAdapter._outcome``).
* test subjects: ``POST <base_url><create_path>`` (the partner's test-data endpoint).
* resolve (a catalog ``resolvers`` entry on this target): ``POST <base_url><options.path>`` (default
  ``/identities/lookup``) with ``{"type": "<from>", "values": [...], "want": [<to>...]}``; the answer
  is ``{"results": {"<value>": {"<type>": ["<found>", ...]}}}`` (unknown values absent). One call per
  ``batch_size`` values, the target's token, timeout and retries on 5xx/timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import httpx
from pydantic import Field, field_validator

from erasure.settings import secret_from_env
from erasure.targets.base import (
    CheckResult,
    Claimed,
    Context,
    Outcome,
    OutcomeSink,
    Spec,
    TargetAdapter,
    TargetError,
    generic_summary,
    marker,
    verification,
)
from erasure.targets.registry import register
from erasure.vocab import CheckOutcome, DeleteOutcome, Runner, TargetKind, VerificationOutcome

if TYPE_CHECKING:
    from erasure.catalog import Resolver, Target
    from erasure.sync_delete import DeleteResult, LookupResult


class SyncApiSpec(Spec):
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    delete_path: str = "/subjects/{subject_id}"
    lookup_path: str = "/subjects/{subject_id}"
    create_path: str = "/test-subjects"
    token_env: str | None = None
    """Name of an environment variable holding a bearer token (never the token itself)."""
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    concurrency: Annotated[int, Field(ge=1, le=512)] = 16
    rate_limit_per_s: Annotated[float, Field(gt=0)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    pool_slots: Annotated[int, Field(ge=1, le=64)] = 2

    @field_validator("delete_path", "lookup_path", "create_path")
    @classmethod
    def _has_placeholder(cls, v: str, info: Any) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        if info.field_name != "create_path" and "{subject_id}" not in v:
            raise ValueError("must contain the placeholder {subject_id}")
        return v


def _post_with_retries(
    client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str], retries: int
) -> httpx.Response:
    """POST, retrying 5xx, 429 and transport errors with a short exponential backoff."""
    import time

    last = ""
    for attempt in range(retries + 1):
        try:
            r = client.post(url, json=body, headers=headers)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}"
        else:
            if r.status_code < 300:
                return r
            if r.status_code < 500 and r.status_code != 429:
                raise TargetError(f"POST {url}: HTTP {r.status_code}")
            last = f"HTTP {r.status_code}"
        if attempt < retries:
            time.sleep(min(0.2 * 2**attempt, 2.0))
    raise TargetError(f"POST {url}: {last} after {retries + 1} attempt(s)")


def bearer_headers(target_name: str, token_env: str | None) -> dict[str, str]:
    """``Authorization`` header from the variable the catalog names (a missing one is an error)."""
    if not token_env:
        return {}
    token = secret_from_env(token_env, f"target '{target_name}': token_env")
    return {"Authorization": f"Bearer {token}"}


def http_verify(
    adapter: TargetAdapter, ctx: Context, target: Target, url: str, headers: dict[str, str]
) -> CheckResult:
    """GET ``url``: 404 = gone (pass), 200 = still there (fail), anything else = could not tell."""
    try:
        r = ctx.require_http().get(url, headers=headers)
    except httpx.HTTPError as exc:
        return adapter.check(target, CheckOutcome.ERROR, f"GET {url}: {type(exc).__name__}: {exc}")
    if r.status_code == 404:
        return adapter.check(target, CheckOutcome.PASS, f"GET {url} -> 404")
    if r.status_code == 200:
        return adapter.check(
            target, CheckOutcome.FAIL, f"GET {url} -> 200: the subject's data is still there"
        )
    return adapter.check(target, CheckOutcome.ERROR, f"GET {url} -> {r.status_code}: {r.text[:200]}")


def test_payload(target: Target, subject_id: str, subject_type: str) -> dict[str, Any]:
    """The test record a partner stores for a canary: one recognisable value per personal field."""
    data: dict[str, Any] = {target.identity_key: subject_id, "is_canary": True, "subject_type": subject_type}
    for f in target.personal_data or ["data"]:
        data[f] = marker(subject_id, f)
    return {"subject_id": subject_id, "subject_type": subject_type, "is_test": True, "data": data}


def http_seed(
    adapter: TargetAdapter,
    ctx: Context,
    target: Target,
    subjects: Sequence[tuple[str, str]],
    create_url: str,
    lookup_url: str,
    headers: dict[str, str],
) -> dict[str, str]:
    """Seed each subject through a test-data endpoint, checking it was absent before and present after."""
    client = ctx.require_http()
    out: dict[str, str] = {}
    for subject_id, subject_type in subjects:
        url = lookup_url.format(subject_id=subject_id)
        pre = http_verify(adapter, ctx, target, url, headers)
        if pre.outcome == CheckOutcome.FAIL:
            raise TargetError(
                f"target '{target.name}': {subject_id} already exists there; refusing to seed a live id"
            )
        if pre.outcome == CheckOutcome.ERROR:
            raise TargetError(f"target '{target.name}': lookup before seeding failed: {pre.detail}")
        try:
            r = client.post(create_url, json=test_payload(target, subject_id, subject_type), headers=headers)
        except httpx.HTTPError as exc:
            raise TargetError(
                f"target '{target.name}': POST {create_url}: {type(exc).__name__}: {exc}"
            ) from exc
        if r.status_code not in (200, 201, 204):
            raise TargetError(f"target '{target.name}': POST {create_url} -> {r.status_code}: {r.text[:200]}")
        post = http_verify(adapter, ctx, target, url, headers)
        if post.outcome != CheckOutcome.FAIL:  # 'fail' = the data is present, as it should be now
            raise TargetError(f"target '{target.name}': seeded but lookup does not find it ({post.detail})")
        out[subject_id] = f"POST {create_url} -> {r.status_code}; GET {url} -> 200"
    return out


@register
class SyncApiAdapter(TargetAdapter):
    kind: ClassVar[str] = TargetKind.SYNC_API
    spec_model = SyncApiSpec
    runner = Runner.DISPATCH
    can_resolve = True
    resolve_path = "/identities/lookup"

    def _spec(self, target: Target) -> SyncApiSpec:
        return target.spec_as(SyncApiSpec)

    def batch_size(self, target: Target) -> int:
        return self._spec(target).batch_size

    def pool_slots(self, target: Target) -> int:
        return self._spec(target).pool_slots

    def erase_batch(
        self, ctx: Context, target: Target, items: Sequence[Claimed], sink: OutcomeSink
    ) -> list[Outcome]:
        """Delete each subject, then look it up (same concurrency): a task succeeds only once the
        lookup finds it gone (or the target cannot be asked). See :meth:`_outcome`."""
        from erasure.sync_delete import SyncDeleteClient

        spec = self._spec(target)
        token = None
        if spec.token_env:
            token = secret_from_env(spec.token_env, f"target '{target.name}': sync_api.token_env")
        by_key = dict(enumerate(items))  # a task erased by several identifiers is several items
        outcomes: list[Outcome] = []
        not_verifiable = self.not_verifiable(target)

        async def run() -> None:
            async with SyncDeleteClient.for_target(target, token=token) as client:

                async def record(r: DeleteResult) -> None:
                    c = by_key[r.key]
                    ev = {"kind": self.kind, "attempt": c.attempt, **r.evidence()}
                    lookup: LookupResult | None = None
                    if not_verifiable is None and (r.ok or r.outcome == DeleteOutcome.ACCEPTED):
                        lookup = await client.lookup(c.subject_id)
                    o = self._outcome(target, c, r, ev, lookup, not_verifiable)
                    outcomes.append(o)
                    sink(o)

                await client.delete_many(
                    ((i, c.subject_id, c.idempotency_key) for i, c in by_key.items()), record
                )

        asyncio.run(run())
        return outcomes

    def _outcome(
        self,
        target: Target,
        c: Claimed,
        r: DeleteResult,
        ev: dict[str, Any],
        lookup: LookupResult | None,
        not_verifiable: dict[str, Any] | None,
    ) -> Outcome:
        """What a delete answer and the lookup after it come to.

        ========================  =========================  ==========================================
        delete answered           lookup                     task
        ========================  =========================  ==========================================
        2xx / 404 / 409           404 (gone)                 succeeded, ``verified``
        2xx / 404 / 409           200 (still there)          failed with ``verification: failed``
        2xx / 404 / 409           error                      failed, retryable (no verification yet)
        202 Accepted              404 (gone)                 succeeded, ``verified``
        202 Accepted              200 / error                waits (``awaiting_ack``), looked up again
                                                             by a later run; failed at its last attempt
        anything                  target not verifiable      2xx/404/409 succeed ``not_verifiable``
        ========================  =========================  ==========================================
        """
        method = f"GET {self._spec(target).lookup_path} after DELETE (404 = gone)"
        accepted = r.outcome == DeleteOutcome.ACCEPTED
        if not (r.ok or accepted):
            return Outcome(c, False, ev, error=r.error, permanent=r.permanent)
        if not_verifiable is not None:
            if accepted:
                return self._still_accepted(target, c, ev, "the target cannot be asked (not verifiable)")
            return Outcome(c, True, {**ev, "verification": not_verifiable})
        assert lookup is not None
        ev = {
            **ev,
            "lookup_http_status": lookup.http_status,
            "lookup_calls": lookup.calls,
            "lookup_throttled": lookup.throttled,
        }
        if lookup.outcome == CheckOutcome.PASS:
            ev["verification"] = verification(VerificationOutcome.VERIFIED, method, lookup.detail)
            return Outcome(c, True, ev)
        if accepted:
            return self._still_accepted(target, c, ev, lookup.detail)
        if lookup.outcome == CheckOutcome.FAIL:
            ev["verification"] = verification(VerificationOutcome.FAILED, method, lookup.detail)
            return Outcome(
                c,
                False,
                ev,
                error=(
                    f"verification failed: the partner answered HTTP {r.http_status} ({r.outcome}) "
                    f"but the lookup still finds the subject ({lookup.detail})"
                ),
            )
        return Outcome(c, False, ev, error=f"verification could not be made: {lookup.detail}")

    def _still_accepted(self, target: Target, c: Claimed, ev: dict[str, Any], answer: str) -> Outcome:
        """HTTP 202 and the subject not (yet) seen gone: wait for a later look, or fail at the last attempt."""
        ev = {**ev, "awaiting_verification": {"since_attempt": c.attempt, "last_answer": answer[:300]}}
        if c.attempt >= target.max_attempts:
            return Outcome(
                c,
                False,
                ev,
                error=(
                    f"HTTP 202 accepted but never confirmed gone after {c.attempt} attempt(s) "
                    f"(max_attempts {target.max_attempts}): {answer}"
                ),
            )
        return Outcome(
            c, False, ev, error=f"HTTP 202 accepted, not yet confirmed gone: {answer}", pending=True
        )

    def check_resolver(self, target: Target, resolver: Resolver) -> None:
        unknown = sorted(set(resolver.options) - {"path"})
        if unknown:
            raise ValueError(f"options {unknown} are not known to kind '{self.kind}' (known: ['path'])")
        path = resolver.options.get("path", self.resolve_path)
        if not path.startswith("/"):
            raise ValueError("options.path must start with '/'")

    def resolve(
        self, ctx: Context, target: Target, resolver: Resolver, values: Sequence[str]
    ) -> dict[str, dict[str, list[str]]]:
        s = self._spec(target)
        url = s.base_url.rstrip("/") + resolver.options.get("path", self.resolve_path)
        headers = bearer_headers(target.name, s.token_env)
        client = ctx.http or httpx.Client(timeout=s.timeout_s)
        out: dict[str, dict[str, list[str]]] = {}
        try:
            for start in range(0, len(values), resolver.batch_size):
                chunk = list(values[start : start + resolver.batch_size])
                body = {"type": resolver.from_type, "values": chunk, "want": list(resolver.to)}
                r = _post_with_retries(client, url, body, headers, s.max_retries)
                results = r.json().get("results")
                if not isinstance(results, dict):
                    raise TargetError(f"target '{target.name}': lookup answer has no 'results' object")
                for value, found in results.items():
                    if value not in chunk or not isinstance(found, dict):
                        continue
                    out[value] = {
                        t: [str(v) for v in vs if isinstance(v, str | int)]
                        for t, vs in found.items()
                        if t in resolver.to and isinstance(vs, list)
                    }
        finally:
            if ctx.http is None:
                client.close()
        return out

    def _urls(self, target: Target) -> tuple[str, str]:
        s = self._spec(target)
        base = s.base_url.rstrip("/")
        return base + s.create_path, base + s.lookup_path

    def verify(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        s = self._spec(target)
        _, lookup = self._urls(target)
        return http_verify(
            self, ctx, target, lookup.format(subject_id=subject_id), bearer_headers(target.name, s.token_env)
        )

    def seed_test_subjects(
        self, ctx: Context, target: Target, subjects: Sequence[tuple[str, str]]
    ) -> dict[str, str]:
        create, lookup = self._urls(target)
        headers = bearer_headers(target.name, self._spec(target).token_env)
        return http_seed(self, ctx, target, subjects, create, lookup, headers)

    def evidence_summary(self, evidence: dict[str, Any]) -> str:
        ev = evidence
        if "http_status" not in ev:
            return generic_summary(ev)
        return (
            f"HTTP {ev['http_status']} {ev.get('outcome', '')} id={ev.get('response_id')} "
            f"key={ev.get('idempotency_key')}"
        )
