"""The master's event loop: one selector, timers, and signals turned into readable bytes.

The master is single-threaded on purpose: it forks, and a fork copies only the calling
thread, so any other thread's locks would be left held in the child. Everything the master
waits for (the signal wakeup fd, the control socket and its clients, the workers' channels,
inotify) is a file descriptor in one selector; everything it waits *until* is a timer.

Signals follow CPython's ``asyncio.unix_events``: ``signal.set_wakeup_fd`` makes the C-level
handler write the signal number to a socket, and the Python-level handler does nothing at
all. The loop reads the numbers and calls the registered handler between two selects, where
it is safe to do anything.

**The gate.** Most of what the loop runs may write to logs.db, and a write needs the store's
write lock, which another process (an operator's ``sqlite3`` shell) can hold. Waiting for it
would freeze the loop; failing half-way through a handler would leave memory and disk apart.
So each turn first asks the gate (the store taking its lock, without waiting). While it is
closed, the turn runs only what was registered ``gated=False`` (the control socket, whose
writing methods refuse with a clear error; the watchdog; stop deadlines), every other fd and
timer simply waits, and signals whose handlers write are kept until it opens. A turn whose
gate opened never meets a busy store: the lock is held until the turn's commit.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

log = logging.getLogger(__name__)

READ: Final = selectors.EVENT_READ
WRITE: Final = selectors.EVENT_WRITE
WIDEN: Final = 4  # extra zero-wait selects per turn, to let more work share one commit
GATE_RETRY: Final = 0.05  # seconds between two tries of a closed gate

FdCallback = Callable[[int], None]  # receives the ready mask


def _record_only(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wakeup fd already recorded the signal."""


class Timer:
    """A one-shot callback at a monotonic deadline; cancel() makes it a no-op."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._ungated = selectors.DefaultSelector()  # the fds served while the gate is closed
        self._timers: list[tuple[float, int, Timer]] = []
        self._ungated_timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._signal_handlers: dict[int, tuple[Callable[[int], None], bool]] = {}
        self._held_signals: dict[int, None] = {}  # gated signals that came while it was closed
        self._gate: Callable[[], bool] = lambda: True
        self.gate_open = True
        self._end_of_turn: list[Callable[[], None]] = []
        self._flushes: dict[int, Callable[[], None]] = {}
        self._stopping = False
        self.turn = 0  # counts turns: what is budgeted per turn starts afresh when it changes
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self.add_reader(self._wakeup_r.fileno(), self._read_signals, gated=False)

    def set_gate(self, gate: Callable[[], bool]) -> None:
        """``gate()`` is asked at the start of every turn; False closes it for that turn."""
        self._gate = gate

    # -- file descriptors ---------------------------------------------------------------

    def add_reader(self, fd: int, callback: FdCallback, *, gated: bool = True) -> None:
        self._selector.register(fd, READ, callback)
        if not gated:
            self._ungated.register(fd, READ, callback)

    def set_events(self, fd: int, events: int) -> None:
        """Change what an fd is watched for (READ, WRITE or both) without re-registering."""
        for selector in (self._selector, self._ungated):
            with contextlib.suppress(KeyError):
                key = selector.get_key(fd)
                if key.events != events:
                    selector.modify(fd, events, key.data)

    def remove(self, fd: int) -> None:
        for selector in (self._selector, self._ungated):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(fd)

    # -- timers -------------------------------------------------------------------------

    def call_later(
        self, delay: float, callback: Callable[[], None], *, gated: bool = True
    ) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heap = self._timers if gated else self._ungated_timers
        heapq.heappush(heap, (timer.deadline, next(self._seq), timer))
        return timer

    def call_at(
        self, deadline: float, callback: Callable[[], None], *, gated: bool = True
    ) -> Timer:
        return self.call_later(deadline - time.monotonic(), callback, gated=gated)

    # -- signals ------------------------------------------------------------------------

    def add_signal_handler(
        self, signum: int, handler: Callable[[int], None], *, gated: bool = True
    ) -> None:
        self._signal_handlers[signum] = (handler, gated)
        signal.signal(signum, _record_only)
        signal.siginterrupt(signum, False)

    def install_signal_wakeup(self) -> None:
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)

    def _read_signals(self, _mask: int) -> None:
        try:
            data = self._wakeup_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        # A burst of one signal is one event: SIGCHLD reaps every child anyway, and a
        # second SIGTERM while stopping means nothing more than the first.
        for signum in dict.fromkeys(data):
            self._signal(signum)

    def _signal(self, signum: int) -> None:
        entry = self._signal_handlers.get(signum)
        if entry is None:
            return
        handler, gated = entry
        if gated and not self.gate_open:
            self._held_signals[signum] = None
        else:
            handler(signum)

    # -- running ------------------------------------------------------------------------

    def at_end_of_turn(self, callback: Callable[[], None], *, first: bool = False) -> None:
        """Run ``callback`` after every turn: where the store commits its batch. ``first``:
        before those registered so far (work that joins the turn's batch, before its
        commit)."""
        if first:
            self._end_of_turn.insert(0, callback)
        else:
            self._end_of_turn.append(callback)

    def flush_at_end(self, owner: object, flush: Callable[[], None]) -> None:
        """Write ``owner``'s output once, after the turn's commit, however often it was asked.

        Replies and acks queued during a turn go out together, in one send per peer.
        """
        self._flushes[id(owner)] = flush

    def stop(self) -> None:
        self._stopping = True

    def _heaps(self) -> tuple[list[tuple[float, int, Timer]], ...]:
        if self.gate_open:
            return (self._timers, self._ungated_timers)
        return (self._ungated_timers,)

    def _next_timeout(self, max_wait: float) -> float:
        if not self.gate_open:
            max_wait = min(max_wait, GATE_RETRY)
        wait = max_wait
        for heap in self._heaps():
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
            if heap:
                wait = min(wait, max(0.0, heap[0][0] - time.monotonic()))
        return wait

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        for heap in self._heaps():
            while heap and heap[0][0] <= now:
                _, _, timer = heapq.heappop(heap)
                if not timer.cancelled:
                    timer.cancelled = True
                    timer.callback()

    def run_once(self, max_wait: float = 1.0) -> None:
        """One turn: wait, handle what is ready, then the end-of-turn callbacks (the commit).

        Before ending the turn, the loop looks again, without waiting, for input that
        arrived while it was busy, up to ``WIDEN`` times, running due timers after each look
        (the control server answers its queued requests in one): everything handled in a
        turn shares one commit, so under load each fsync carries more work and latency does
        not grow.
        """
        self.turn += 1
        self.gate_open = self._gate()
        if self.gate_open and self._held_signals:
            held, self._held_signals = self._held_signals, {}
            for signum in held:
                self._signal(signum)
        selector = self._selector if self.gate_open else self._ungated
        ready = selector.select(self._next_timeout(max_wait))
        for _ in range(WIDEN):
            self._dispatch(selector, ready)
            self._run_due_timers()  # the control server's queued requests among them
            ready = selector.select(0)
            if not ready:
                break
        else:
            self._dispatch(selector, ready)
            self._run_due_timers()
        for callback in self._end_of_turn:
            callback()
        while self._flushes:
            flushes, self._flushes = self._flushes, {}
            for flush in flushes.values():
                flush()

    def _dispatch(
        self, selector: selectors.BaseSelector, ready: list[tuple[selectors.SelectorKey, int]]
    ) -> None:
        registered = selector.get_map()
        for key, mask in ready:
            # A handler earlier in this list may have closed (or replaced) this fd.
            if registered.get(key.fd) is key:
                key.data(mask)

    def run(self) -> None:
        self._stopping = False
        while not self._stopping:
            self.run_once()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in self._signal_handlers:
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        self._ungated.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
