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

from nerved.config import NerveConfig, SenseReflex, WorkflowReflex
from nerved.loop import Loop, Timer

log = logging.getLogger(__name__)

TriggerSense = Callable[[str], bool]
StartWorkflow = Callable[[str, Any], None]


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
            else:
                self.start_workflow(reflex.workflow, payload)

    def stop(self) -> None:
        for interval in self._intervals.values():
            interval.cancel()
        self._intervals.clear()
        self._on = {}
