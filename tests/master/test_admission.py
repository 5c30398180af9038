"""Admission: where a new run goes, from its workflow's settings and load alone.

The rule (nerved.master.workflows.admission) as a table, then as a property over every small
load: a newcomer never overtakes the queue, never takes more than the free slots, and a full
queue makes room by dropping its oldest run, never by refusing the newcomer.
"""

from __future__ import annotations

import itertools

import pytest

from nerved.config import Overflow
from nerved.master.workflows.admission import Admission, admit
from nerved.states import Transition


@pytest.mark.parametrize(
    ("active", "queued", "overflow", "expected"),
    [
        (0, 0, Overflow.QUEUE, Admission(Transition.START)),
        (1, 0, Overflow.QUEUE, Admission(Transition.START)),
        (2, 0, Overflow.QUEUE, Admission(Transition.ENQUEUE)),
        (1, 1, Overflow.QUEUE, Admission(Transition.ENQUEUE)),  # FIFO: a slot, but a queue
        (2, 2, Overflow.QUEUE, Admission(Transition.ENQUEUE)),
        (2, 3, Overflow.QUEUE, Admission(Transition.ENQUEUE, evict=True)),
        (0, 0, Overflow.DROP, Admission(Transition.START)),
        (2, 0, Overflow.DROP, Admission(Transition.REJECT)),
    ],
)
def test_admission_table(active, queued, overflow, expected):
    got = admit(active=active, queued=queued, concurrency=2, max_queue=3, overflow=overflow)
    assert got == expected


@pytest.mark.parametrize("overflow", list(Overflow))
def test_admission_keeps_fifo_and_the_limits_for_every_small_load(overflow):
    for concurrency, max_queue, active, queued in itertools.product(range(1, 4), range(1, 4),
                                                                    range(5), range(5)):  # fmt: skip
        if active > concurrency or queued > max_queue or (queued and overflow is Overflow.DROP):
            continue  # a load the manager never holds
        got = admit(active=active, queued=queued, concurrency=concurrency,
                    max_queue=max_queue, overflow=overflow)  # fmt: skip
        if got.transition is Transition.START:
            assert active < concurrency and queued == 0
        elif got.transition is Transition.REJECT:
            assert overflow is Overflow.DROP and active >= concurrency
        else:
            assert overflow is Overflow.QUEUE and got.transition is Transition.ENQUEUE
            assert got.evict == (queued == max_queue)
        assert got.transition in (Transition.START, Transition.ENQUEUE, Transition.REJECT)
