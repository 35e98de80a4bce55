"""Access to the Erasure view through Airflow's auth manager (whatever the deployment configured).

* read (every page and GET endpoint): a logged-in user the auth manager lets see the custom view
  ``Erasure`` (``is_authorized_custom_view``);
* write (holds, re-run, replay, withdraw, review): a user allowed to change the pipeline's DAG runs
  (``is_authorized_dag(method="PUT", access_entity=RUN)`` on ``erasure_reconcile``; with
  SimpleAuthManager: role ``user`` and above).

The user comes from Airflow's own dependency (``get_user``: the ``Authorization: Bearer`` token or the
UI's session cookie); no token: 401, not allowed: 403. The acting user is recorded as ``airflow:<name>``.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, HTTPException, status

RESOURCE_NAME = "Erasure"
WRITE_DAG = "erasure_reconcile"


def can_read(user: Any) -> bool:
    return bool(
        get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME, user=user)
    )


def can_write(user: Any) -> bool:
    return bool(
        get_auth_manager().is_authorized_dag(
            method="PUT", access_entity=DagAccessEntity.RUN, details=DagDetails(id=WRITE_DAG), user=user
        )
    )


def reader(user: Any = Depends(get_user)) -> Any:  # noqa: B008 - FastAPI dependency
    if not can_read(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: the Erasure view needs read access")
    return user


def writer(user: Any = Depends(get_user)) -> Any:  # noqa: B008 - FastAPI dependency
    if not can_read(user) or not can_write(user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"Forbidden: this action needs write access to the {WRITE_DAG} DAG"
        )
    return user


def actor(user: Any) -> str:
    """The name recorded in the audit log."""
    return f"airflow:{user.get_name()}"
