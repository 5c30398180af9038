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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params
from nerved.store import MAX_QUERY_LIMIT

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "logs.query"
PARAMS = ("source", "type", "refId", "since", "afterId", "beforeId", "limit")
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    limit = params.integer("limit", minimum=1)
    entries = engine.store.committed.query_logs(
        source=params.string("source"),
        type=params.string("type"),
        ref_id=params.string("refId"),
        since=params.integer("since"),
        after_id=params.integer("afterId"),
        before_id=params.integer("beforeId"),
        limit=min(limit or 100, MAX_QUERY_LIMIT),
    )
    return [entry.to_wire() for entry in entries]
