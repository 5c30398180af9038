"""status: what the daemon is doing.

Result: ``{version, pid, uptime, state, root, stateDir, senses, groups, workflows,
activeWorkflows, queuedWorkflows, workers, containment, rss, commits}``; ``uptime`` in
seconds, ``rss`` in bytes for the whole process tree. ``workers``: one entry per sense group
and per workflow, ``{kind, name, pid, state, restarts, reason, rss}``, ``pid`` null when it
has no worker now (``rss``, its resident bytes, null then), ``state`` one of idle, spawning,
ready, backoff, fatal (nerved.states.WorkerState), ``reason`` the last exit while in backoff
or fatal; and one entry per other live worker (``draining``: told to stop, finishing what it holds).
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
