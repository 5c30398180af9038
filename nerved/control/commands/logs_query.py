"""logs.query {source?, type?, refId?, since?, afterId?, beforeId?, limit?}: entries of logs.db.

Result: ``[{id, source, type, refId, payload, ts}]``, oldest first. ``since`` is a time in
milliseconds since the epoch; with it or ``afterId`` the answer starts at the oldest entry
from that time or after that id (paging forward, following); otherwise it holds the newest
entries, before ``beforeId`` if given (paging back). ``limit``: default 100, at most 10000.

An answer may hold fewer than ``limit`` entries: it holds at most 4 MiB of payloads (and
always at least one entry). To get the rest, ask again with ``afterId`` = the last id
(forward) or ``beforeId`` = the first id (back); an empty answer means there are no more.
An entry whose stored payload cannot be read back has ``payload: null`` and ``unreadable``:
why.

The params are checked by :meth:`nerved.store.query.LogQuery.parse`, as a sense's
``ctx.logs.query`` is: the same values are accepted and refused, with the same message
(-32602 here). ``limit: 0`` is refused; a limit above 10000 asks for 10000.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params
from nerved.store.query import FIELDS, LogQuery

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "logs.query"
PARAMS = FIELDS
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    query = LogQuery.parse({name: params.raw(name) for name in FIELDS})
    return [entry.to_wire() for entry in query.read(engine.store.committed)]
