"""The settings and catalog a DAG file or task works with, read from its process's environment.

DAG files (at parse time, for DAG arguments such as a schedule or the catalog's targets), tasks (when
they start) and callbacks call :func:`current_settings` / :func:`current_catalog` instead of
``erasure.settings.get_settings()``. Both read the environment again (``reload_settings``, ~2 ms),
which also refreshes the process-wide ``get_settings()`` cache, so core code called afterwards sees the
same values. In a deployment every parse and every task runs in a process of its own, so this is that
process's one read; in one process that parses and runs DAGs several times (``dag.test()``, a test
session) the environment may differ between runs, and a cached value would be stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from erasure.catalog import Catalog
    from erasure.settings import Settings


def current_settings() -> Settings:
    """The pipeline's ``ERASURE_*`` settings as the environment holds them now."""
    from erasure.settings import reload_settings

    return reload_settings()


def current_catalog(settings: Settings | None = None) -> Catalog:
    """The catalog at the ``catalog`` setting (``ERASURE_CATALOG``) of ``settings`` (default: now's)."""
    from erasure.catalog import load_catalog

    return load_catalog((settings or current_settings()).catalog_path)
