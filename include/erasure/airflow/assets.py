"""The pipeline's Airflow Assets, defined once (names and URIs come from the Airflow-free core).

* ``TRACKING_STORE`` - the tracking store changed in a way the event dataset shows (requests started,
  completed, failed or re-opened); emitted by ``erasure_reconcile``, consumed by ``erasure_event_dataset``.
* ``ERASURE_EVENTS`` / ``ERASED_SUBJECTS`` - the Delta tables built by ``erasure_event_dataset``;
  schedule downstream (offline erasure) DAGs on them.
"""

from __future__ import annotations

from airflow.sdk import Asset

from erasure.event_dataset import (
    EVENTS_ASSET_NAME,
    EVENTS_ASSET_URI,
    SUBJECTS_ASSET_NAME,
    SUBJECTS_ASSET_URI,
    TRACKING_ASSET_NAME,
    TRACKING_ASSET_URI,
)

TRACKING_STORE = Asset(name=TRACKING_ASSET_NAME, uri=TRACKING_ASSET_URI, group="erasure")
ERASURE_EVENTS = Asset(name=EVENTS_ASSET_NAME, uri=EVENTS_ASSET_URI, group="erasure")
ERASED_SUBJECTS = Asset(name=SUBJECTS_ASSET_NAME, uri=SUBJECTS_ASSET_URI, group="erasure")

# ReconcileResult fields that change what the event dataset shows (request-level status changes).
REQUEST_CHANGES = ("completed", "failed", "started", "reopened")
