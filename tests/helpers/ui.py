"""The Erasure view of the running Airflow (plugin ``erasure_ui``): its users, tokens and the checks that
the stack under test serves it (docs/ui.md)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import httpx
import pytest

BASE = os.environ.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:28080").rstrip("/")
USERS = ("admin", "viewer", "operator", "outsider")


@cache
def passwords() -> dict[str, str]:
    """The simple auth manager's generated passwords; a stack started before the Erasure view's users
    existed (scripts/env.sh) lacks them: restart its api-server (outside CI the tests are skipped)."""
    path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    pw = json.loads(path.read_text()) if path.is_file() else {}
    missing = [u for u in USERS if u not in pw]
    if missing:
        msg = f"Airflow users {missing} missing from {path}: restart the stack's api-server (scripts/env.sh)"
        if os.environ.get("CI") == "true":
            raise RuntimeError(msg)
        pytest.skip(msg)
    return pw


@cache
def token(user: str) -> str:
    r = httpx.post(f"{BASE}/auth/token", json={"username": user, "password": passwords()[user]}, timeout=30)
    r.raise_for_status()
    return str(r.json()["access_token"])


def headers(user: str | None) -> dict[str, str]:
    return {} if user is None else {"Authorization": f"Bearer {token(user)}"}


def require_plugin() -> None:
    """The api-server under test serves the Erasure view (one started before the plugin existed does not)."""
    r = httpx.get(f"{BASE}/erasure/api/overview", timeout=30)
    if r.status_code == 404:
        msg = "the api-server does not serve /erasure (started before plugins/erasure_ui.py): restart it"
        if os.environ.get("CI") == "true":
            raise RuntimeError(msg)
        pytest.skip(msg)
