"""sense.list: every configured sense with its counters.

Result: ``[{name, group, computes, errors, lastComputeAt, lastSignalAt, lastError, running,
worker}]``, ``worker`` the state of its group's worker (``fatal``: not computed until its code
is fixed and reloaded). Counters start at zero when the daemon starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "sense.list"
PARAMS: tuple[str, ...] = ()
MUTATES = False


def run(engine: Engine, params: Params) -> Any:
    return engine.senses.list()
