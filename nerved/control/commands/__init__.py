"""The control methods, one module each (as in circus): its docstring is its help.

Each module defines ``NAME`` (the JSON-RPC method), ``PARAMS`` (the params it accepts),
``MUTATES`` (refused with -32002 once the daemon is shutting down, or while logs.db cannot
be written) and ``run(engine, params)``, which returns the result, raises ``RpcError`` or
one of nerved.outcome's refusals, or returns a ``Pending`` that the engine resolves later.
``engine`` is nerved.control.engine's narrow interface, not the daemon. A module may set
``HEAVY = True``: its requests can cost milliseconds, so the control server shares a per-turn
budget between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nerved.control.commands import (
    logs_query,
    metrics,
    reload,
    schedule_list,
    sense_list,
    sense_trigger,
    status,
    workflow_cancel,
    workflow_count,
    workflow_inspect,
    workflow_list,
    workflow_replay,
    workflow_retry,
    workflow_signal,
    workflow_trigger,
    workflow_wait,
)
from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    params: frozenset[str]
    mutates: bool
    heavy: bool
    run: Callable[[Engine, Params], Any]
    help: str


def _command(module: ModuleType) -> Command:
    return Command(
        name=module.NAME,
        params=frozenset(module.PARAMS),
        mutates=module.MUTATES,
        heavy=getattr(module, "HEAVY", False),
        run=module.run,
        help=(module.__doc__ or "").strip(),
    )


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in map(
        _command,
        (
            status,
            sense_list,
            sense_trigger,
            logs_query,
            reload,
            workflow_list,
            workflow_count,
            workflow_inspect,
            workflow_trigger,
            workflow_wait,
            workflow_cancel,
            workflow_retry,
            workflow_signal,
            workflow_replay,
            schedule_list,
            metrics,
        ),
    )
}
