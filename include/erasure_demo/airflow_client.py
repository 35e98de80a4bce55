"""A small client of Airflow's REST API v2 (JWT from ``POST /auth/token``), used by the demo and tests.

Plain HTTP (httpx): it imports nothing from Airflow, so it runs anywhere the API is reachable.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TERMINAL_RUN_STATES = ("success", "failed")


@dataclass
class AirflowApi:
    base_url: str
    username: str
    password: str
    _token: str | None = None

    @classmethod
    def from_env(cls) -> AirflowApi:
        """URL from ``AIRFLOW__API__BASE_URL``; the admin password from the simple auth manager's file."""
        base = os.environ.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:28080")
        password = os.environ.get("ERASURE_ADMIN_PASSWORD")
        pw_file = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
        if pw_file and Path(pw_file).is_file():
            password = json.loads(Path(pw_file).read_text())["admin"]
        if not password:
            raise RuntimeError(
                "no Airflow admin password: source scripts/env.sh (run scripts/stack.sh setup first)"
            )
        return cls(base.rstrip("/"), "admin", password)

    def token(self) -> str:
        if self._token is None:
            r = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self.token()}"}
            r = httpx.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=60, **kw)
            if r.status_code == 401 and attempt == 0:  # token expired: get a fresh one once
                self._token = None
                continue
            return r
        return r

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` into the metadata DB."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("GET", f"/dags/{dag_id}")
            if r.status_code == 200:
                return r.json()
            if time.monotonic() > deadline:
                errs = self.request("GET", "/importErrors").json()
                raise TimeoutError(f"DAG {dag_id} not parsed within {timeout}s; import errors: {errs}")
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        r = self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        r.raise_for_status()

    def pause(self, dag_id: str) -> None:
        r = self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": True})
        r.raise_for_status()

    def trigger(
        self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        r.raise_for_status()
        return r.json()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300, poll: float = 2) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {dag_id}/{run_id} still {run['state']} after {timeout}s")
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        r = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        r.raise_for_status()
        return r.json()["task_instances"]

    def dag_runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        r = self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": limit, "order_by": "-start_date"})
        r.raise_for_status()
        return r.json()["dag_runs"]

    def set_variable(self, key: str, value: str) -> None:
        r = self.request("PATCH", f"/variables/{key}", json={"key": key, "value": value})
        if r.status_code == 404:
            r = self.request("POST", "/variables", json={"key": key, "value": value})
        r.raise_for_status()

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """A task's XCom value (deserialized), or None when there is none."""
        r = self.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index, "deserialize": True, "stringify": False},
        )
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json().get("value")
