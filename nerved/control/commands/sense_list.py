"""sense.list: every configured sense with its counters.

Result: ``[{name, group, computes, errors, lastComputeAt, lastSignalAt, lastError, running,
worker, nextFiring, lastFiring}]``, ``worker`` the state of its group's worker (``fatal``: not
computed until its code is fixed and reloaded). Counters start at zero when the daemon starts.
``nextFiring`` and ``lastFiring`` (ms; null) are those of its cron reflexes: the earliest next
firing and the latest firing made (``schedule.list`` has each reflex).
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
    nexts: dict[str, int] = {}
    lasts: dict[str, int] = {}
    for reflex in engine.cron.listing():
        if reflex["kind"] != "sense":
            continue
        name = reflex["target"]
        if reflex["next"] is not None:
            nexts[name] = min(nexts.get(name, reflex["next"]), reflex["next"])
        if reflex["last"] is not None:
            lasts[name] = max(lasts.get(name, reflex["last"]), reflex["last"])
    return [
        sense | {"nextFiring": nexts.get(sense["name"]), "lastFiring": lasts.get(sense["name"])}
        for sense in engine.senses.list()
    ]
