"""nerve: a host-local automation daemon.

User code imports its types from here::

    from nerved import WorkflowDefinition, ThreadState, WorkflowContext, SenseContext
"""

from nerved._version import __version__
from nerved.api import (
    CommandEvent,
    ComputeFn,
    JsonValue,
    ModerateFn,
    ModerateResult,
    RoleFn,
    SenseContext,
    ThreadState,
    WorkflowContext,
    WorkflowDefinition,
)
from nerved.store import LogEntry

__all__ = [
    "CommandEvent",
    "ComputeFn",
    "JsonValue",
    "LogEntry",
    "ModerateFn",
    "ModerateResult",
    "RoleFn",
    "SenseContext",
    "ThreadState",
    "WorkflowContext",
    "WorkflowDefinition",
    "__version__",
]
