"""Airflow glue of identity resolution: the identity key from the ``erasure_identity`` connection, and
the dispatch DAG's ``resolve_identities`` task (erasure.resolution)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import task

log = logging.getLogger(__name__)

IDENTITY_CONN_ID = "erasure_identity"


def identity_codec() -> Any:
    """The identity codec: the key (hex) in the password of connection ``erasure_identity`` when it
    exists (a secrets backend in production), else the key file of the settings
    (``ERASURE_IDENTITY_KEY_FILE``)."""
    from airflow.sdk import BaseHook

    from erasure.identity import IdentityCodec
    from erasure.settings import get_settings

    key: bytes | None = None
    try:
        password = BaseHook.get_connection(IDENTITY_CONN_ID).password
    except Exception:  # noqa: BLE001 - no such connection: the key file
        password = None
    if password:
        try:
            key = bytes.fromhex(password.strip())
        except ValueError:
            raise ValueError(f"connection '{IDENTITY_CONN_ID}': password must be the key in hex") from None
    return IdentityCodec.from_settings(get_settings(), encryption_key=key)


@task(task_id="resolve_identities")
def resolve_identities() -> dict[str, Any]:
    """Expand the identity of every ``resolving`` request through the catalog's resolvers and release
    the settled ones (their tasks become due in this run). Only counts go to XCom."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.catalog import load_catalog
    from erasure.resolution import resolve_pending
    from erasure.settings import get_settings

    settings = get_settings()
    result = resolve_pending(
        tracking_dsn(), load_catalog(settings.catalog_path), settings, identity_codec()
    ).as_dict()
    log.info("resolution: %s", result)
    return result
