"""A small client of Airflow's REST API v2 (JWT from POST /auth/token), used by tests and the demo."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass
class AirflowApi:
    base_url: str
    username: str
    password: str
    _token: str | None = None

    @classmethod
    def from_env(cls) -> AirflowApi:
        base = os.environ.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:58080")
        pw_file = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        password = json.loads(pw_file.read_text())["admin"]
        return cls(base, "admin", password)

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
        headers = {"Authorization": f"Bearer {self.token()}"}
        return httpx.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=60, **kw)

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

    def trigger(
        self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            r.raise_for_status()
            run = r.json()
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {dag_id}/{run_id} still {run['state']} after {timeout}s")
            time.sleep(2)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        r = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        r.raise_for_status()
        return r.json()["task_instances"]
