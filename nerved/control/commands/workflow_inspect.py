"""workflow.inspect {runId, afterId?}: one run and its history, a page at a time.

``runId`` may be a unique prefix of 8+ characters. Result: the run, its ``triggerPayload``,
``events: [{id, type, ts, payload}]`` oldest first (after ``afterId`` if given), and ``more``.
The events hold at most 4 MiB of payloads (and always at least one event): while ``more`` is
true, ask again with ``afterId`` = the last event's id. An event (or a trigger payload)
whose stored value cannot be read back has ``payload: null`` and ``unreadable``: why (for the
trigger payload, ``triggerPayloadUnreadable``). An active run has ``progress``: the step in
flight (see ``workflow.list``); every failed try is an event (``step_failed``, with the try
and ``retryAt``), and so is each resume after a crash or restart (``resumed``). A waiting
run has ``waitFor`` (the signal; null: it sleeps) and ``wakeAt`` (its deadline, ms since the
epoch, or null). ``pendingSignals: [{id, name, payload, ts}]``: the signals sent to the run
that no wait has taken yet, oldest first (the first 100).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import Params
from nerved.store import Unreadable

if TYPE_CHECKING:
    from nerved.control.engine import Engine

PENDING_SHOWN = 100  # pending signals listed, oldest first

NAME = "workflow.inspect"
PARAMS = ("runId", "afterId")
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    after_id = params.integer("afterId") or 0
    record = find_run(engine.store.committed, params.string("runId", required=True))
    entries, more = engine.store.committed.run_history_page(record.run_id, after_id)
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
    return {**answer, "events": events, "more": more}
