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
(-32602 here). ``limit: 0`` is refused; a limit above 10000 asks for 10000. A ``source``
other than ``sense`` and ``workflow`` is not found (-32001).

Two more params, on the socket only, name what the entries are about, each checked to exist
(not found, -32001, rather than an empty answer that would read as "no entries"), in place
of ``refId`` (-32602 with it, or with a ``source`` they do not write):

- ``runId``: a run's id or a unique prefix of 8+ characters (as ``workflow.inspect`` takes
  it): its entries (``source: workflow``, ``refId``: the whole id);
- ``sense``: a sense's name: its entries (``source: sense``); a sense exists while the
  configuration has it, or while kept entries of it remain (one a reload removed).

``refId`` itself is matched as it is stored, and not checked: for scripts that hold an id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import NOT_FOUND, Params, RpcError, bad_params
from nerved.store.query import FIELDS, LogQuery
from nerved.store.refs import sense_ref

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "logs.query"
PARAMS = (*FIELDS, "runId", "sense")
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    fields = {name: params.raw(name) for name in FIELDS}
    run_ref, sense = params.string("runId"), params.string("sense")
    if run_ref is not None or sense is not None:
        source = "workflow" if run_ref is not None else "sense"
        given = [n for n in ("runId", "sense", "refId") if params.raw(n) is not None]
        if len(given) > 1:
            raise bad_params(f"params {' and '.join(map(repr, given))} exclude each other")
        if fields["source"] not in (None, source):
            raise bad_params(f"param {given[0]!r} names entries of source {source!r} only")
        LogQuery.parse(fields)  # every other param is checked before anything is looked up
        store = engine.store.committed
        ref = find_run(store, run_ref).run_id if run_ref else _known_sense(engine, sense)
        fields |= {"source": source, "refId": ref}
    elif fields["source"] == "sense" and isinstance(fields["refId"], str):
        fields["refId"] = sense_ref(fields["refId"], engine.store.host_id)  # this host's
    query = LogQuery.parse(fields)
    return [entry.to_wire() for entry in query.read(engine.store.committed)]


def _known_sense(engine: Engine, name: str) -> str:
    """The ``refId`` of the sense ``name``'s entries: this host's sense, on a store several
    hosts share (``<name>@<host>``; a name with its ``@<host>`` names another host's)."""
    ref = sense_ref(name, engine.store.host_id)
    if engine.senses.worker_state(name) is not None:
        return ref
    if engine.store.committed.query_logs(source="sense", ref_id=ref, limit=1):
        return ref  # removed by a reload, its entries still kept
    raise RpcError(NOT_FOUND, f"no sense named {name!r} (none configured, no entries kept)")
