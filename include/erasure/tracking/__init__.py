"""The tracking store (PostgreSQL schema ``erasure``): migrations and guarded status changes.

Statuses live in :mod:`erasure.vocab` (``TaskStatus``, ``RequestStatus``, ...).
"""

from erasure.tracking.migrate import downgrade, upgrade
from erasure.tracking.store import Transition, transition_task, transition_tasks

__all__ = ["upgrade", "downgrade", "transition_task", "transition_tasks", "Transition"]
