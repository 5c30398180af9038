"""schedule.list: every cron reflex, with its next and last firing and its last outcome.

Result: ``[{kind, target, cron, timezone, catchUp, next, last, lastFiredAt, lastRunId,
lastStatus}]``, the next firing first (as ``systemctl list-timers``). ``kind``: ``workflow``
or ``sense``; ``target``: the workflow started or the sense computed; ``timezone``: an IANA
name, or ``host`` (the host's zone). ``next``: the next firing (ms), null: none in fifty
years. ``last``: the last firing it made (the one scheduled, ms; null: none yet);
``lastFiredAt``: when nerved handled it (later for a catch-up at start). ``lastStatus``: the
status of the run it started, ``pruned`` once retention deleted that run, ``missed`` (nerved
was down and the reflex does not catch up), ``triggered`` (a sense's), or why the run was
refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "schedule.list"
PARAMS: tuple[str, ...] = ()
MUTATES = False


def run(engine: Engine, params: Params) -> Any:
    return engine.cron.listing()
