"""logs.query {source?, type?, refId?, since?, afterId?, limit?}: entries of logs.db.

``since`` is a time in milliseconds since the epoch; ``afterId`` (for following) returns the
entries after that id, oldest first. Without either, the newest ``limit`` entries (default
100, at most 10000), oldest first. Result: ``[{id, source, type, refId, payload, ts}]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params
from nerved.store import MAX_QUERY_LIMIT

if TYPE_CHECKING:
    from nerved.daemon import Daemon

NAME = "logs.query"
PARAMS = ("source", "type", "refId", "since", "afterId", "limit")
MUTATES = False
HEAVY = True


def run(daemon: Daemon, params: Params) -> Any:
    limit = params.integer("limit", minimum=1)
    entries = daemon.store.query_logs(
        source=params.string("source"),
        type=params.string("type"),
        ref_id=params.string("refId"),
        since=params.integer("since"),
        after_id=params.integer("afterId"),
        limit=min(limit or 100, MAX_QUERY_LIMIT),
    )
    return [entry.to_wire() for entry in entries]
