"""The Erasure view of the Airflow UI: a FastAPI app (``app.create_app``) the API server mounts at
``/erasure`` through ``plugins/erasure_ui.py``, with a nav entry (an external view). See docs/ui.md."""
