"""The ``erasure_proof`` DAG's tasks: issue and export receipts, check the audit chain.

Thin glue over :mod:`erasure.evidence.receipts` and :mod:`erasure.evidence.audit`: the DSN comes from
the ``erasure_tracking`` connection, keys and directories from the settings (secret files). Each
function returns counts only (XCom never holds an identifier, a key or a receipt).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger("erasure.proof")


def issue_receipts() -> dict[str, Any]:
    """Receipts for every completed request that is ready; not-ready ones are counted by reason."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.catalog import load_catalog
    from erasure.evidence.keys import ReceiptKeys
    from erasure.evidence.receipts import issue_receipts as issue
    from erasure.settings import get_settings

    settings = get_settings()
    keys = ReceiptKeys.from_files(settings.receipt_signing_key_path, settings.identifier_hmac_key_path)
    owners = {t.name: t.owner for t in load_catalog(settings.catalog_path).targets}
    report = issue(tracking_dsn(), keys, owners=owners)
    # reasons name targets and statuses, never a subject; the request ids stay in the log, not XCom
    reasons = Counter(why.split(":")[0] for why in report.not_ready.values())
    for why, n in reasons.most_common():
        log.info("not ready: %d request(s): %s", n, why)
    if report.not_ready:
        log.info("not-ready request ids (first 50): %s", sorted(report.not_ready)[:50])
    log.info("issued %d receipt(s) with key %s in %.2f s", report.issued, keys.kid, report.seconds)
    return {"issued": report.issued, "not_ready": len(report.not_ready), "key_id": keys.kid}


def export_receipts() -> dict[str, int]:
    """New receipts as files and into the Delta table ``erasure_receipts`` (incremental)."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.evidence.receipts import export_receipts as export
    from erasure.settings import get_settings

    settings = get_settings()
    out = export(
        tracking_dsn(), out_dir=settings.receipts_path, dataset_dir=settings.dataset_path, incremental=True
    )
    log.info("exported: %s (files under %s)", out, settings.receipts_path)
    return out


def verify_audit_chain() -> dict[str, Any]:
    """Recompute the audit chain; a broken link fails the task without retry (the run's failure alerts)."""
    from airflow.sdk.exceptions import AirflowFailException

    from erasure.airflow.conn import tracking_dsn
    from erasure.evidence.audit import verify_chain

    report = verify_chain(tracking_dsn())
    log.info("%s", report.summary())
    if not report.ok:
        raise AirflowFailException(report.summary())
    return {"events": report.events, "last_seq": report.last_seq, "seconds": round(report.seconds, 2)}
