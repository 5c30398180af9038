"""workflow.inspect {runId, afterId?, beforeId?, limit?}: one run and a page of its history.

``runId`` may be a unique prefix of 8+ characters. Result: the run, its ``triggerPayload``,
``events: [{id, type, ts, payload}]`` oldest first, ``earlier`` and ``more``. The page is
paged as ``logs.query`` pages: with ``afterId``, the first ``limit`` events after it; else
the newest ``limit`` (before ``beforeId`` if given). ``limit``: default 100, at most 10000
(more asks for 10000). A run of up to 100 entries is whole in the default page, as before
there were pages. ``earlier``: how many of the run's entries come before the first event
(ask with ``beforeId`` = its id); ``more``: whether one follows the last (ask with
``afterId`` = its id, and the same ``beforeId``). The events hold at most 4 MiB of payloads
(and always at least one event): past that the page ends early, ``more`` true.

Everything else is of the whole run, whatever the page: its fields (``status``, ``steps``)
are its row's; ``earlier`` is counted in SQL. An event (or a trigger payload) whose stored
value cannot be read back has ``payload: null`` and ``unreadable``: why (for the trigger
payload, ``triggerPayloadUnreadable``). An active run has ``progress``: the step in flight
(see ``workflow.list``); every failed try is an event (``step_failed``, with the try and
``retryAt``), and so is each resume after a crash or restart (``resumed``). A waiting run
has ``waitFor`` (the signal; null: it sleeps) and ``wakeAt`` (its deadline, ms since the
epoch, or null). ``pendingSignals: [{id, name, payload, ts}]``: the signals sent to the run
that no wait has taken yet, oldest first (the first 100).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import Params
from nerved.store import Unreadable
from nerved.store.query import DEFAULT_LIMIT, MAX_QUERY_LIMIT

if TYPE_CHECKING:
    from nerved.control.engine import Engine

PENDING_SHOWN = 100  # pending signals listed, oldest first

NAME = "workflow.inspect"
PARAMS = ("runId", "afterId", "beforeId", "limit")
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    after_id, before_id = params.integer("afterId"), params.integer("beforeId")
    limit = params.integer("limit", minimum=1)
    limit = DEFAULT_LIMIT if limit is None else min(limit, MAX_QUERY_LIMIT)
    record = find_run(engine.store.committed, params.string("runId", required=True))
    entries, earlier, more = engine.store.committed.run_history(
        record.run_id, after_id=after_id, before_id=before_id, limit=limit
    )
    answer = {**record.to_wire(), "triggerPayload": record.trigger_payload}
    answer["progress"] = (
        engine.workflows.progress(record.run_id) if record.status.is_active else None
    )
    pending = engine.store.committed.pending_signals(record.run_id, limit=PENDING_SHOWN)
    answer["pendingSignals"] = [
        {"id": e.id, "name": e.payload.get("name"), "payload": e.payload.get("payload"),
         "ts": e.ts}
        for e in pending if isinstance(e.payload, dict)
    ]  # fmt: skip
    if isinstance(record.trigger_payload, Unreadable):
        answer["triggerPayload"] = None
        answer["triggerPayloadUnreadable"] = record.trigger_payload.reason
    events = []
    for entry in entries:
        event = entry.to_wire()
        del event["source"], event["refId"]
        events.append(event)
    return {**answer, "events": events, "earlier": earlier, "more": more}
