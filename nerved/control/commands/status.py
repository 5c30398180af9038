"""status: what the daemon is doing.

Result: ``{version, pid, uptime, senses, groups, activeWorkflows, queuedWorkflows, workers,
rss, state}``; ``uptime`` in seconds, ``rss`` in bytes for the whole process tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "status"
PARAMS: tuple[str, ...] = ()
MUTATES = False


def run(engine: Engine, params: Params) -> Any:
    return engine.status()
