"""The REST API v2 client of tests; it lives in the demo package (``erasure_demo.airflow_client``) so the demo uses it too."""

from __future__ import annotations

from erasure_demo.airflow_client import AirflowApi

__all__ = ["AirflowApi"]
