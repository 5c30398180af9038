"""The workflow part of the master: runs from admission to their end, durably.

:class:`WorkflowManager` (:mod:`.manager`) is what the daemon uses; the pieces it leans on
are modules of their own: admission (:mod:`.admission`), what the master holds of each run
(:mod:`.runs`), resumes (:mod:`.resume`), ``workflow.wait`` (:mod:`.waiters`).
"""

from nerved.master.workflows.manager import WorkflowManager

__all__ = ["WorkflowManager"]
