"""Reflexes: what happens when a sense signals, and which senses run on a clock.

The bus is deliberately narrow: only a sense's *signal* enters it. Threads write their logs
straight to logs.db and have no path to this module, which is how RFC-002 §2.2's rule
(thread logs never trigger reflexes) holds by construction rather than by a filter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from nerved import wire
from nerved.config import NerveConfig, SenseReflex, WorkflowReflex
from nerved.loop import Loop, Timer

log = logging.getLogger(__name__)

TriggerSense = Callable[[str], bool]
StartWorkflow = Callable[[str, Any, str | None], None]  # workflow, payload, idempotency key

_ABSENT = object()


def resolve(pointer: str, document: Any) -> Any:
    """The value RFC 6901's JSON ``pointer`` names in ``document``, or ``_ABSENT``.

    Fifteen lines rather than a dependency: the pointer's syntax is checked when nerve.yaml
    is read (nerved.config.schedules), and only resolution is left. ``-`` (the element past
    an array's end) and an index with a leading zero name nothing.
    """
    if pointer == "":
        return document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(document, dict):
            if token not in document:
                return _ABSENT
            document = document[token]
        elif isinstance(document, list):
            digits = token.isascii() and token.isdigit()  # RFC 6901: ASCII digits alone
            if not digits or (token != "0" and token.startswith("0")):
                return _ABSENT
            if int(token) >= len(document):
                return _ABSENT
            document = document[int(token)]
        else:
            return _ABSENT
    return document


def key_of(reflex: WorkflowReflex, payload: Any) -> str | None:
    """The idempotency key ``reflex`` reads from a signal's ``payload``: a string as it is,
    any other JSON value as its compact JSON text, an object's members sorted (``42``,
    ``{"a":1,"b":2}``); None, with a
    warning that names the reflex, when the pointer names nothing or the value is no key
    (an empty string, past 256 characters): then no run starts, since a run without its
    key could repeat one the key would have held back."""
    assert reflex.key is not None
    value = resolve(reflex.key, payload)
    where = (
        f"the workflow reflex of {reflex.workflow} (nerve.yaml:{reflex.line}, key: {reflex.key!r})"
    )
    if value is _ABSENT:
        log.warning("%s: the signal's payload has nothing at the pointer; no run started", where)
        return None
    try:
        # Members sorted: an object's key must not depend on the order its sender wrote.
        key = value if isinstance(value, str) else wire.dumps(_sorted(value))
    except wire.Invalid as exc:
        log.warning("%s: %s; no run started", where, exc)
        return None
    problem = wire.key_problem(key)
    if problem is not None:
        log.warning("%s: the key read %s; no run started", where, problem)
        return None
    return key


class _Interval:
    """A sense recomputed every ``period`` seconds, first at start-up."""

    def __init__(self, loop: Loop, sense: str, period: float, fire: TriggerSense) -> None:
        self.loop = loop
        self.sense = sense
        self.period = period
        self.fire = fire
        self.timer: Timer = loop.call_later(0, self._tick)
        self.next = time.monotonic()

    def _tick(self) -> None:
        self.fire(self.sense)
        now = time.monotonic()
        self.next += self.period
        if self.next <= now:  # the loop fell behind: skip the missed ticks, keep the phase
            self.next = now + self.period - ((now - self.next) % self.period)
        self.timer = self.loop.call_at(self.next, self._tick)

    def cancel(self) -> None:
        self.timer.cancel()


class Reflexes:
    def __init__(self, loop: Loop, trigger_sense: TriggerSense, start_workflow: StartWorkflow):
        self.loop = loop
        self.trigger_sense = trigger_sense
        self.start_workflow = start_workflow
        self._intervals: dict[tuple[str, float], _Interval] = {}
        self._on: dict[str, list[SenseReflex | WorkflowReflex]] = {}

    def apply(self, config: NerveConfig) -> None:
        """Rebuild the subscriptions; an interval that did not change keeps its phase."""
        on: dict[str, list[SenseReflex | WorkflowReflex]] = {}
        wanted: set[tuple[str, float]] = set()
        for reflex in config.reflexes:
            for source in reflex.on:
                on.setdefault(source, []).append(reflex)
            if isinstance(reflex, SenseReflex) and reflex.interval_ms is not None:
                wanted.add((reflex.sense, reflex.interval_ms / 1000))
        for key in list(self._intervals):
            if key not in wanted:
                self._intervals.pop(key).cancel()
        for key in wanted:
            if key not in self._intervals:
                self._intervals[key] = _Interval(self.loop, key[0], key[1], self.trigger_sense)
        self._on = on

    def on_signal(self, sense: str, payload: Any) -> None:
        for reflex in self._on.get(sense, ()):
            if isinstance(reflex, SenseReflex):
                self.trigger_sense(reflex.sense)
            elif reflex.key is None:
                self.start_workflow(reflex.workflow, payload, None)
            elif (key := key_of(reflex, payload)) is not None:
                self.start_workflow(reflex.workflow, payload, key)

    def stop(self) -> None:
        for interval in self._intervals.values():
            interval.cancel()
        self._intervals.clear()
        self._on = {}


def _sorted(value: Any) -> Any:
    """``value`` with every object's members in sorted order (JSON objects are unordered)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value
