"""sense.list: every configured sense with its counters.

Result: ``[{name, group, computes, errors, lastComputeAt, lastSignalAt, lastError, running}]``.
Counters start at zero when the daemon starts.
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
