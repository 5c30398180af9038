"""The control socket's bounds, all in one place: per connection, over all connections, and
per loop turn (:class:`TurnBudget`).

The master serves the socket in its only loop, so every cost a client can cause is bounded
here: what one connection reads and holds (:mod:`nerved.control.connection` applies those),
what all of them hold together, how many there are, and how much of a loop turn their
requests may take (:mod:`nerved.control.server` applies those). ``bench.abuse`` holds the
master to the bounds these give. A module of its own so that the numbers are read together,
and so that connection and server share them without importing each other.
"""

from __future__ import annotations

import time
from typing import Final

from nerved.control.rpc import MAX_LINE

KiB: Final = 1024
MiB: Final = 1024 * KiB

# -- one connection (nerved.control.connection) ------------------------------------------
RECV_SIZE: Final = 64 * KiB
RECVS_PER_TURN: Final = 4  # at most this many reads of RECV_SIZE per readiness
QUEUED_LINES: Final = 32  # complete requests a connection may have waiting
MAX_PENDING: Final = 64  # requests answered later (a wait, a reload) a connection may have open
INPUT_PAUSE: Final = MAX_LINE + RECV_SIZE  # bytes of waiting input (a whole line always fits)
OUTPUT_PAUSE: Final = 256 * KiB  # unread answers past which a client's requests wait
SMALL_LINE: Final = 4 * KiB  # a longer request is heavy whatever its method (decoding costs)

# -- all connections, and the loop turn (nerved.control.server) --------------------------
ROOT_RESERVE: Final = 16  # of the connections allowed, only root may take the last ones
SWEEP_EVERY: Final = 1.0  # seconds between two looks for idle and stalled clients
TURN_BUDGET: Final = 0.02  # seconds of heavy requests per loop turn (at least one runs)
LIGHT_PER_TURN: Final = 256  # light requests per loop turn, over all clients
INPUT_BUDGET: Final = 16 * MiB  # waiting requests of all clients before busy ones stop reading
OUTPUT_BUDGET: Final = 32 * MiB  # unread answers of all clients before heavy requests wait
ACCEPTS_PER_TURN: Final = 64
ACCEPT_PAUSE: Final = (0.1, 2.0)  # seconds: first and longest pause of accept() without fds
ACCEPT_CALM: Final = 10.0  # seconds without a failed accept() that end an episode
REFUSAL_LOG_EVERY: Final = 10.0  # seconds: refused connections are counted, logged this often


class TurnBudget:
    """One turn's allowance: :data:`LIGHT_PER_TURN` light requests, and heavy ones until
    :data:`TURN_BUDGET` seconds have gone (at least one, unless unread answers are over
    :data:`OUTPUT_BUDGET`)."""

    __slots__ = ("heavy_ran", "heavy_waited_last_turn", "heavy_waits", "light_left",
                 "light_ran", "started", "turn")  # fmt: skip

    def __init__(self, turn: int, *, heavy_waited: bool) -> None:
        self.turn = turn
        self.started = time.monotonic()
        self.light_left = LIGHT_PER_TURN
        self.light_ran = False
        self.heavy_ran = False
        self.heavy_waits = False  # this turn leaves heavy requests to the next
        self.heavy_waited_last_turn = heavy_waited

    def take(self, heavy: bool, output_full: bool) -> bool:
        if not heavy:
            if self.light_left <= 0:
                return False
            self.light_left -= 1
            return True
        if output_full:
            return False
        if self.heavy_ran and time.monotonic() - self.started >= TURN_BUDGET:
            return False
        self.heavy_ran = True
        return True
