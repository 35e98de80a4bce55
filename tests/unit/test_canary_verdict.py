"""The canary's verdict, without a database: pass only when every target's data is gone and the
request completed; undecided while a target could not be checked."""

from __future__ import annotations

import pytest

from erasure.canary import verdict
from erasure.targets import CheckResult
from erasure.vocab import CanaryResult, CheckOutcome, RequestStatus

PASS, FAIL, ERROR = CheckOutcome.PASS, CheckOutcome.FAIL, CheckOutcome.ERROR


def _checks(*outcomes: CheckOutcome) -> list[CheckResult]:
    return [CheckResult(f"t{i}", "sync_api", o, "detail") for i, o in enumerate(outcomes)]


@pytest.mark.parametrize(
    ("outcomes", "request_status", "expected"),
    [
        ((PASS, PASS), RequestStatus.COMPLETED, CanaryResult.PASS),
        ((PASS, FAIL), RequestStatus.COMPLETED, CanaryResult.FAIL),  # a target still holds the data
        ((PASS, PASS), RequestStatus.FAILED, CanaryResult.FAIL),  # gone, but the request did not complete
        ((PASS, PASS), None, CanaryResult.FAIL),  # no request at all
        ((PASS, ERROR), RequestStatus.COMPLETED, None),  # could not look: decided next run
        ((FAIL, ERROR), RequestStatus.COMPLETED, None),
    ],
)
def test_verdict(outcomes, request_status, expected):
    assert verdict(_checks(*outcomes), request_status) == expected
