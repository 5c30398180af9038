"""Signals that arrive before the master's loop is up: a reload request never kills nerved.

SIGHUP's default action is death, and the loop installs its handlers (``nerved.loop``) only
part-way through the start: importing the daemon, reading nerve.yaml, locking the state and
opening logs.db all come first, and a ``kill -HUP`` (or ``systemctl reload``) in that time
used to kill nerved (exit 129). The entry points (``nerved/__main__.py`` and
``nerved.cli.main``) call :func:`hold` as their first statement; from then on a SIGHUP is
only recorded, and the daemon, once ready, reloads once if one came
(:func:`reload_requested`). Always once, whenever it came: the configuration nerved started
with may predate the edit the operator meant, and reloading an unchanged root changes
nothing.

SIGTERM and SIGINT keep their default action while nerved starts, death by the signal (what
systemd expects of a stop during start-up): nothing is acknowledged before READY and
everything written is crash-safe, so such a death loses nothing. SIGINT's default is
restored because Python's own would raise KeyboardInterrupt half-way through a start.

At the other end, the loop restores SIGHUP's default when it closes, and so does the
interpreter's shutdown for any handler written in Python: :func:`ignore` makes a SIGHUP mean
nothing from then until the process ends, so that it cannot turn a clean exit into a death.

What runs before the first statement (the interpreter's start-up, then importing the
``nerved`` package, ``nerved.cli`` and this module) is out of any handler's reach, so those
imports are kept to a minimum (``nerved/__init__.py`` imports its names lazily; nothing here
or in ``nerved.cli`` imports typing at run time): the handler is in place about 25 ms after
exec on this project's VM, 1-2 ms after a bare interpreter could install one (it was 55-90
ms). A supervisor that must be safe there too can start nerved with these signals blocked:
:func:`hold` unblocks them once the handler is in place, and a SIGHUP that was pending is
then recorded.
"""

from __future__ import annotations

import signal

TYPE_CHECKING = False  # typing's would import typing before SIGHUP is held (see cli.py)
if TYPE_CHECKING:
    from types import FrameType
    from typing import Final

# The signals the master's loop waits for: they must not stay blocked by whoever started us.
_LOOP_SIGNALS: Final = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}

_reload_requested = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _reload_requested
    _reload_requested = True


def hold() -> None:
    """Record SIGHUP instead of dying of it, until the loop installs its own handlers."""
    signal.signal(signal.SIGHUP, _record)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _LOOP_SIGNALS)


def ignore() -> None:
    """Take no notice of SIGHUP any more: for the end of the process, once nothing reloads.

    An ignored signal stays ignored through the interpreter's shutdown, unlike a handler.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def reload_requested() -> bool:
    """Whether a SIGHUP came since :func:`hold`; it is answered once, so this clears it."""
    global _reload_requested
    requested, _reload_requested = _reload_requested, False
    return requested
