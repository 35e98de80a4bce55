"""The "Erasure" view in the Airflow UI (docs/ui.md): the API server mounts the FastAPI app at
``/erasure`` and the navigation gets an "Erasure" entry that shows its overview page.

The app and its pages live in ``erasure.airflow.ui``; this file only registers them.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from erasure.airflow.ui.app import URL_PREFIX, create_app


class ErasureUiPlugin(AirflowPlugin):
    name = "erasure_ui"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Erasure view"}]
    external_views = [
        {
            "name": "Erasure",
            "href": URL_PREFIX.lstrip("/") + "/ui/",
            "url_route": "erasure",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
