"""What nerved tells systemd (sd_notify(3)), through the sdnotify package.

Without ``NOTIFY_SOCKET`` every call is a cheap no-op, so the daemon calls these
unconditionally. Only the main process may notify (``NotifyAccess=main``): workers drop the
variable after fork, and the master removes it from its own environment once read.

The socket is non-blocking. A datagram socket blocks its sender once the receiver's queue is
full (``/proc/sys/net/unix/max_dgram_qlen``, often 10), so a slow or stuck reader of
``NOTIFY_SOCKET`` would otherwise freeze the whole master in ``send``. A message that cannot go
now waits, and :meth:`Notifier.flush` (once per loop turn) retries. What waits stays bounded,
at most six messages, without losing a state change: a newer ``STATUS=`` replaces an older
waiting one, ``WATCHDOG=1`` waits once, and ``READY=1``, ``RELOADING=1`` and ``STOPPING=1`` are
never dropped, except that a reload whose ``RELOADING=1`` and ``READY=1`` both still wait
when the next one starts is folded into it (systemd ends in the same state).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final

import sdnotify

log = logging.getLogger(__name__)

_WATCHDOG = "WATCHDOG=1"
_EXTEND = "EXTEND_TIMEOUT_USEC="
EXTEND_WINDOW: Final = 30.0  # seconds each EXTEND_TIMEOUT_USEC= grants, from when it is sent
EXTEND_EVERY: Final = 5.0  # seconds between two of them, at least
_RELOADING = "RELOADING=1"
_READY = "READY=1"


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self._notifier: sdnotify.SystemdNotifier | None = None
        if address:
            try:
                # debug=True: sdnotify raises instead of swallowing, so EAGAIN can be told apart.
                self._notifier = sdnotify.SystemdNotifier(debug=True)
                self._notifier.socket.setblocking(False)
            except OSError as exc:
                log.warning("cannot notify systemd at %s: %s", address, exc)
                self._notifier = None
        self._pending: list[str] = []
        self._extended_at = -EXTEND_EVERY
        self.watchdog_interval = _watchdog_interval()
        os.environ.pop("NOTIFY_SOCKET", None)
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)

    def _send(self, message: str) -> None:
        if self._notifier is None:
            return
        self._enqueue(message)
        self.flush()

    def _enqueue(self, message: str) -> None:
        if message == _WATCHDOG and _WATCHDOG in self._pending:
            return
        if message.startswith(_EXTEND):  # the newest grant replaces one still waiting
            self._pending = [
                waiting for waiting in self._pending if not waiting.startswith(_EXTEND)
            ]
        if _is_status_only(message):
            self._pending = [waiting for waiting in self._pending if not _is_status_only(waiting)]
        elif message.startswith(_RELOADING):
            self._fold_reload()
        self._pending.append(message)

    def _fold_reload(self) -> None:
        """Drop a waiting reload, its RELOADING=1 and the READY=1 after it: a new one begins."""
        pending = self._pending
        begun = next((i for i, m in enumerate(pending) if m.startswith(_RELOADING)), None)
        if begun is None:
            return
        done = next(
            (i for i in range(begun + 1, len(pending)) if pending[i].startswith(_READY)), None
        )
        if done is not None:
            del pending[done], pending[begun]

    def flush(self) -> None:
        """Send what waits, oldest first, until the socket would block again. Never raises.

        Cheap when nothing waits (one truth test), so the loop calls it at every turn.
        """
        while self._pending and self._notifier is not None:
            try:
                self._notifier.notify(self._pending[0])
            except BlockingIOError:
                return
            except OSError as exc:
                # The reader is gone or refuses this message: retrying would not help.
                log.warning("sd_notify failed, message dropped (%s): %r", exc, self._pending[0])
            del self._pending[0]

    def ready(self, status: str) -> None:
        self._send(f"{_READY}\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"{_RELOADING}\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading")

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self._send(_WATCHDOG)

    def extend(self) -> None:
        """Ask systemd for :data:`EXTEND_WINDOW` more seconds of the start or stop under way,
        at most once per :data:`EXTEND_EVERY` (so a loop may call this at each step).

        Recovery at start and a drain at stop are bounded by nerve itself (the runs in the
        store, ``drainTimeout``), not by ``TimeoutStartSec=``/``TimeoutStopSec=``, which nerved
        cannot read. systemd holds a service to such a grant only once the unit's own timeout
        has passed, so asking early costs nothing; a start or stop that stops making progress
        asks no more, and systemd's timeout applies again ``EXTEND_WINDOW`` later.

        The watchdog is fed with it: a start can come after ``READY=1`` (the one that
        follows a wait for the store: nerved.master.storewait), when the watchdog runs
        already and the loop, in which the Upkeep feeds it, does not turn yet.
        """
        now = time.monotonic()
        if now - self._extended_at < EXTEND_EVERY:
            return
        self._extended_at = now
        self._send(f"{_EXTEND}{int(EXTEND_WINDOW * 1_000_000)}")
        if self.watchdog_interval:
            self.watchdog()


def _is_status_only(message: str) -> bool:
    return message.startswith("STATUS=") and "\n" not in message


def _watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
