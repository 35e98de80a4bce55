"""The tracking store (PostgreSQL schema ``erasure``): migrations and guarded status changes."""

from erasure.tracking.migrate import downgrade, upgrade
from erasure.tracking.store import OPEN_REQUEST_STATUSES, TASK_STATUSES, transition_task

__all__ = ["upgrade", "downgrade", "transition_task", "TASK_STATUSES", "OPEN_REQUEST_STATUSES"]
