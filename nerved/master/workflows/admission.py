"""Admission: where a new run goes, decided from its workflow's settings and load alone.

A pure function, so that the rule is read (and tested) in one place: a run starts when its
workflow has a free slot and no run queued before it (FIFO: a newcomer never overtakes the
queue); otherwise ``overflow: drop`` drops it, and ``overflow: queue`` queues it, dropping the
queue's oldest run first when the queue is full (``maxQueue``). See SPEC §3 (workflow
settings) and the transitions in :mod:`nerved.states`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nerved.config import Overflow
from nerved.states import Transition


@dataclass(frozen=True, slots=True)
class Admission:
    transition: Transition  # START, ENQUEUE or REJECT: how the new run is created
    evict: bool = False  # the queue's oldest run is dropped first (Transition.EVICT)


def reasons(workflow: str, concurrency: int, max_queue: int) -> tuple[str, str]:
    """Why a new run is dropped (REJECT), and why the queue's oldest run is (EVICT)."""
    return (
        f"{workflow} is at its concurrency limit ({concurrency}) with overflow: drop",
        f"the queue of {workflow} was full (maxQueue {max_queue}) and this was its oldest run",
    )


def admit(
    *, active: int, queued: int, concurrency: int, max_queue: int, overflow: Overflow
) -> Admission:
    """Where a new run goes, for a workflow with ``active`` started and ``queued`` queued
    runs, ``concurrency`` slots and room for ``max_queue`` queued runs."""
    if active < concurrency and not queued:
        return Admission(Transition.START)
    if overflow is Overflow.DROP:
        return Admission(Transition.REJECT)
    return Admission(Transition.ENQUEUE, evict=queued >= max_queue)
