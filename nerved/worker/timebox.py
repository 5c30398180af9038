"""A bound on each moderator call, in the workflow worker: a moderator is pure and quick.

The moderator runs on the worker's event loop, in its main thread, between steps. While it
runs nothing else in that worker moves: no other thread's moderator, no async role, no ack
from the master. So one moderator that loops (``while True: pass`` on one payload) would
freeze every thread of its workflow, for good. Each call is therefore boxed by two timers,
armed before it and disarmed as it returns:

- **The soft bound**, :data:`MODERATOR_TIMEOUT`: ``setitimer(ITIMER_REAL)``, whose SIGALRM
  handler raises :class:`Overrun` in the moderator. It is a ``BaseException``, so that the
  ``except Exception`` of ordinary user code does not swallow it, and it is raised again every
  :data:`REFIRE` seconds for code that swallows it anyway. A call that overran fails its run
  alone, even if the moderator caught the exception and returned: the worker and its other
  threads go on.
- **The hard bound**, :data:`MODERATOR_KILL`: a Python signal handler runs only between
  bytecodes of the main thread, so a moderator stuck in C code (a C loop that holds the GIL
  and checks no signal, such as ``any(itertools.repeat(False))``, or a call made with
  SIGALRM blocked) never sees the soft bound. A second, independent timer (a POSIX
  ``timer_create`` on CLOCK_MONOTONIC) then sends :data:`KILL_SIGNAL`, whose handler is
  faulthandler's, in C: it writes every thread's traceback to stderr (the daemon's log), then
  lets the signal's default action end the worker, needing neither the GIL nor the loop. The
  master sees its worker die and applies the crash rules: the run resumes in a new worker,
  counts an attempt, and ends ``crashed`` after ``maxAttempts``.
- **The last resort**, :data:`LAST_RESORT` later: a third timer sends SIGKILL, for a
  moderator that blocked both signals itself while it spins. (Both are unblocked in the
  worker's main thread at each call, so a library that blocked them at import, as the
  sigwait-thread pattern does, takes no bound away.)

The box holds the checks of the decision too (nerved.worker.workflow): what a moderator
returns is user code as well (a mapping whose ``get`` loops, a prompt sharing one list a
million times, seconds to encode).

Why these bounds: a moderator decides from the history it is given; the one of the
benchmark takes a few microseconds, and one that replays a thousand steps a millisecond or
so. A second is a thousand times that, and short enough that a runaway moderator holds the
worker's other threads for about a second. The hard bound leaves the soft one time to work
(twenty more chances at :data:`REFIRE`), and kills a worker that cannot be helped otherwise
after 3 s.

Why not ``faulthandler.dump_traceback_later`` for the hard bound: it starts an OS thread when
armed and joins it when cancelled, 36 µs a call here, and the moderator is on the hot path
(four calls a run, about 8,000 a second in the benchmark). The two timers cost about 4 µs a
call (``python -m bench.timebox``), half of it the hard timer's two ``timer_settime`` through
ctypes: some 16 µs of the 240 µs a run of the benchmark costs its worker.

The worker's SIGALRM and SIGVTALRM belong to nerve: user code that installs its own handlers
for them, or arms ``ITIMER_REAL``, disturbs the bounds.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Final, TypeVar

log = logging.getLogger(__name__)

MODERATOR_TIMEOUT: Final = 1.0
"""Seconds a moderator call may take before it is interrupted and its run fails."""

MODERATOR_KILL: Final = 3.0
"""Seconds after which a moderator call that could not be interrupted ends its worker."""

LAST_RESORT: Final = 2.0
"""Seconds after the hard bound when a third timer sends SIGKILL, which nothing can block or
catch: for a moderator that blocked the hard bound's signal itself while it spins."""

REFIRE: Final = 0.1
"""Seconds between two :class:`Overrun` raised in a moderator that swallows them."""

KILL_SIGNAL: Final = signal.SIGVTALRM
"""The hard bound's signal: its default action ends the process (no core dump)."""

KILLED: Final = f"killed by {KILL_SIGNAL.name}"
"""How the master describes the end of a worker the hard bound ended (nerved.process)."""

_CLOCK_MONOTONIC: Final = 1
_SIGEV_SIGNAL: Final = 0
_SIGEV_SIZE: Final = 64  # struct sigevent on Linux, whatever the architecture

T = TypeVar("T")


class Overrun(BaseException):
    """Raised in a moderator that ran past :data:`MODERATOR_TIMEOUT`.

    A BaseException: user code's ``except Exception`` must not turn it into a decision.
    """


def overrun_message(exc: Overrun) -> str:
    """What the run's ``error`` says: the bound, where the moderator was, and the rule."""
    from nerved.code.importing import user_frame  # a worker's: the master reads KILLED only

    frames = traceback.extract_tb(exc.__traceback__)
    if exc.__cause__ is not None:  # raised again, as another exception, by the moderator
        frames += traceback.extract_tb(exc.__cause__.__traceback__)
    frame = user_frame(frames)
    where = "" if frame is None else f" (it was at {frame.filename}:{frame.lineno})"
    return (
        f"moderator did not return within {MODERATOR_TIMEOUT:g}s{where}; a moderator must be"
        " pure and quick: it decides from the events it is given, without I/O, waiting or"
        " long computations (do those in a role)"
    )


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigevent(ctypes.Structure):
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_rest", ctypes.c_byte * (_SIGEV_SIZE - ctypes.sizeof(ctypes.c_void_p) - 8)),
    ]


class _KillTimer:
    """A one-shot POSIX timer of the process, on CLOCK_MONOTONIC, that sends ``signum``.

    Its arguments are made once: arming and disarming are one ``timer_settime`` each.
    """

    def __init__(self, signum: int, seconds: float) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "timer_create"):  # glibc before 2.34: in librt
            from ctypes.util import find_library  # only here: it imports subprocess

            libc = ctypes.CDLL(find_library("rt") or "librt.so.1", use_errno=True)
        event = _Sigevent(sigev_signo=signum, sigev_notify=_SIGEV_SIGNAL)
        self._timer = ctypes.c_void_p()
        if libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(self._timer)):
            errno = ctypes.get_errno()
            raise OSError(errno, f"timer_create: {signal.strsignal(signum)}: errno {errno}")
        whole = int(seconds)
        self._on = _Itimerspec(_Timespec(0, 0), _Timespec(whole, int((seconds - whole) * 1e9)))
        self._off = _Itimerspec()
        self._settime = libc.timer_settime
        self._on_ref = ctypes.byref(self._on)
        self._off_ref = ctypes.byref(self._off)

    def arm(self) -> None:
        self._settime(self._timer, 0, self._on_ref, None)

    def disarm(self) -> None:
        self._settime(self._timer, 0, self._off_ref, None)


class Timebox:
    """Calls a moderator within the bounds. Made and used in the main thread (signals)."""

    def __init__(self, soft: float = MODERATOR_TIMEOUT, hard: float = MODERATOR_KILL) -> None:
        self.soft = soft
        self.hard = hard
        self._installed = False
        self._inside = False  # a call is under way: only then does SIGALRM raise
        self._fired = False
        self._kill: _KillTimer | None = None
        self._last: _KillTimer | None = None

    def _install(self) -> None:
        """Take the signals, at the first call: after the user package was imported, so
        that its import-time code cannot have replaced the handlers since."""
        self._installed = True
        signal.signal(signal.SIGALRM, self._alarm)
        try:
            faulthandler.register(KILL_SIGNAL, file=sys.stderr, all_threads=True, chain=True)
            self._kill = _KillTimer(KILL_SIGNAL, self.hard)
            self._last = _KillTimer(signal.SIGKILL, self.hard + LAST_RESORT)
        except (OSError, AttributeError, ValueError, RuntimeError) as exc:
            # Without it a moderator stuck in C code holds this worker until it is killed
            # by hand; every other moderator is still bounded. Said once, in the log.
            log.warning("no hard bound on moderator calls in this worker: %s", exc)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._inside:
            self._fired = True
            raise Overrun

    def call(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)``, or :class:`Overrun` past the soft bound: raised in it, or
        once it returns or raises if it caught the first one. Whatever happens, both timers
        are disarmed when this returns."""
        if not self._installed:
            self._install()
        kill, last = self._kill, self._last
        self._fired = False
        self._inside = True
        try:
            # A library may have blocked them (the sigwait-thread pattern): with no other
            # thread to take them, the bounds would never fire.
            _sigmask(_SIG_UNBLOCK, _SIGNALS)
            _setitimer(_ITIMER_REAL, self.soft, REFIRE)
            if kill is not None:
                kill.arm()
            if last is not None:
                last.arm()
            result = function(*args)
        except Overrun:
            raise
        except BaseException as exc:
            if self._fired:  # the moderator turned the Overrun into an exception of its own
                raise Overrun from exc
            raise
        finally:
            # First of all: from here the handler raises nothing, so the disarming below
            # cannot be cut short (Python runs a handler only between bytecodes).
            self._inside = False
            if last is not None:
                last.disarm()
            if kill is not None:
                kill.disarm()
            _setitimer(_ITIMER_REAL, 0)
        if self._fired:
            raise Overrun  # caught and swallowed: the decision came too late all the same
        return result


_setitimer: Final = signal.setitimer
_ITIMER_REAL: Final = signal.ITIMER_REAL
_sigmask: Final = signal.pthread_sigmask
_SIG_UNBLOCK: Final = signal.SIG_UNBLOCK
_SIGNALS: Final = frozenset({signal.SIGALRM, KILL_SIGNAL})
