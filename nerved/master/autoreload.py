"""Reloads nobody asked for: when a file change may reload, and how soon.

The watch (nerved.master.watch) asks for a reload whenever a file of the root changes; an
operator asks with SIGHUP or ``nervectl reload``. The reload itself is the same
(nerved.master.reloader); what differs is how far it is trusted and paced:

- after strict modes refused something, what others could write meanwhile must be looked at
  first: reloads from file changes are refused until an explicit one (:meth:`untrusted`);
- a package that changes itself whenever it is imported would reload forever: automatic
  reloads that keep changing code back off (:meth:`pace`).

Apart from the daemon because it is a policy of its own over a few numbers, and the daemon's
loop, start and stop need none of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from nerved import modes
from nerved.code.packages import Package
from nerved.loop import Loop, Timer
from nerved.outcome import Pending

log = logging.getLogger(__name__)

WATCH_SOURCE: Final = "inotify"  # the source of reloads nobody asked for: a file changed
STORM_WINDOW: Final = 2.0  # s: automatic reloads changing code this close together are a storm
AUTO_BACKOFF_MAX: Final = 60.0  # s: the longest an automatic reload is held back in a storm
UNTRUSTED_SINCE_REFUSAL: Final = (
    "not reloaded on a file change: strict modes were violated since the last accepted"
    " reload: check the packages' content, then run `nervectl reload` (or send nerved SIGHUP)"
)


def explicit(source: str) -> bool:
    """Whether someone asked for a reload from ``source`` (SIGHUP, ``nervectl reload``),
    not only the watch: sources of requests served together are joined with ", "
    (nerved.master.reloader)."""
    return any(part != WATCH_SOURCE for part in source.split(", "))


class AutomaticReloads:
    """The daemon's pacing and trust of reloads from file changes.

    ``request_reload(source)`` asks for a reload (nerved.master.reloader); ``stopping()``
    says whether nerved stops (no reload is asked for then).
    """

    def __init__(
        self,
        loop: Loop,
        request_reload: Callable[[str], Pending],
        stopping: Callable[[], bool],
    ) -> None:
        self.loop = loop
        self.request_reload = request_reload
        self._stopping = stopping
        self._refusals_accepted = modes.refusals()  # at the last explicit reload (or start)
        # Pacing, in monotonic seconds: when code last changed in an automatic reload, the
        # current backoff, the time until which automatic reloads wait, the timer that waits.
        self._last_auto_code = -STORM_WINDOW
        self._auto_backoff = 0.0
        self._auto_hold = 0.0
        self._auto_timer: Timer | None = None

    def untrusted(self, source: str) -> list[str]:
        """Why a reload from ``source`` may not be trusted, if so.

        Once strict modes refused something since the last reload an operator asked for, the
        files may hold what others wrote while they could: a reload from a file change is
        refused until someone looked and ran ``nervectl reload`` (or SIGHUP). Otherwise the
        very ``chmod go-w`` the refusal suggested would load what was written meanwhile.
        """
        if modes.refusals() != self._refusals_accepted and not explicit(source):
            return [UNTRUSTED_SINCE_REFUSAL]
        return []

    def trust_now(self) -> None:
        """What strict modes refused so far was seen (the start): file changes may reload."""
        self._refusals_accepted = modes.refusals()

    def accept_refusals(self, source: str) -> None:
        """A reload from ``source`` is being applied: if asked for, whatever strict modes
        refused before was looked at."""
        if explicit(source):
            self._refusals_accepted = modes.refusals()

    def pace(self, source: str, units: list[tuple[Package, ...]]) -> None:
        """Back off automatic reloads while code keeps changing as soon as it is reloaded.

        A package that writes into its own directory when it is imported (a cache, a
        timestamp) changes itself in every import check and every new worker: each reload
        would bring the next, forever. When automatic reloads change code again within
        STORM_WINDOW of the last one (or of the end of its wait), the next waits, 1 s doubling
        to AUTO_BACKOFF_MAX, said once a storm; an explicit reload, or an automatic one that
        changes no code, ends it. ``units``: the code the reload changed.
        """
        now = time.monotonic()
        if explicit(source) or not units:
            self._auto_backoff = self._auto_hold = 0.0
            return
        if now - max(self._last_auto_code, self._auto_hold) < STORM_WINDOW:
            first = self._auto_backoff == 0
            self._auto_backoff = min(AUTO_BACKOFF_MAX, max(1.0, 2 * self._auto_backoff))
            self._auto_hold = now + self._auto_backoff
            if first:
                log.warning(
                    "packages keep changing as soon as they are reloaded (%s): automatic"
                    " reloads now wait up to %gs (a package that writes into its own"
                    " directory does this: keep such files elsewhere)",
                    ", ".join(unit[0].label for unit in units), AUTO_BACKOFF_MAX,
                )  # fmt: skip
        else:
            self._auto_backoff = 0.0
        self._last_auto_code = now

    def files_changed(self) -> None:
        """The watch saw a change: a reload now, or once the backoff's wait is over."""
        if self._stopping():
            return
        wait = self._auto_hold - time.monotonic()
        if wait > 0:
            if self._auto_timer is None:

                def later() -> None:
                    self._auto_timer = None
                    self.files_changed()

                self._auto_timer = self.loop.call_later(wait, later)
            return
        self.request_reload(WATCH_SOURCE)
