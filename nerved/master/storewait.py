"""Opening the store at start, and waiting for a PostgreSQL database that cannot be reached.

logs.db (SQLite) opens as it always did: its one wait, for a write lock another process
holds, is :class:`nerved.store.sqlite.Store`'s (``locked_since``). A PostgreSQL database may
simply not be up: at boot, while it restarts, or when the network to it is down; and the
start that follows a storage failure's exit 75 (systemd's ``Restart=``) is most often met
with the database still gone. Waiting for it in a blocking loop left the control socket
unserved (clients hung in its backlog, or met ECONNREFUSED) and the loop stopped. Instead,
once the first try finds the database unreachable, the master's own loop (single-threaded,
as ever) runs in a **waiting mode** until it is reached:

- the control socket is served: ``status`` answers ``state: "waiting for the store"`` and
  ``store: {where, reachable: false, error, since, tries, nextTry}`` (the URL without its
  password: :func:`nerved.store.postgres.connection.display`); every other method is
  refused with -32002 (nerved.outcome's ShuttingDown: nothing was done, try again later),
  the reads too, since they need the store, so that no client hangs and no trigger is
  acknowledged that could not be durable;
- tries are loop timers with exponential backoff (:data:`FIRST_DELAY` doubling up to
  :data:`MAX_DELAY`, each drawn in its upper half: jitter, so that the nerveds of many hosts
  do not knock on a database coming back all at once), and each try is bounded by
  libpq's ``connect_timeout`` (nerved.store.postgres.connection): nothing sleeps;
- ``READY=1`` is sent once the socket is served, with ``STATUS=`` saying the store is
  unreachable, and the watchdog is fed from then on. Ready here means *answering on its
  socket*, as it does while logs.db is locked or while nerved stops: ``systemctl start``
  and the units ordered after nerved do not wait on a database nerve cannot bring back
  (with ``EXTEND_TIMEOUT_USEC=`` they would wait forever; without, systemd would kill and
  restart nerved every ``TimeoutStartSec=``, the socket unserved in between). Whoever must
  know the store is up asks ``status`` (``state: running``) or retries its -32002;
- SIGTERM or SIGINT end the wait at once: nothing was started, the exit is 0;
- what a retry cannot mend (a refused login, a database that does not exist: Refused) ends
  the start as it did, with the StoreError, and so does a database reached but unusable
  (a newer schema, a failed migration).

Once a try reaches the database, the loop is stopped and the daemon's start goes on as it
always did (the lease, recovery, then the daemon's dispatcher, ``READY=1`` again with its
summary). The :class:`ControlServer` made here is handed over with its clients: a
connection opened during the wait stays open, and is served normally from then on.

psycopg is imported only for a PostgreSQL store (nerved.store.opening), never for logs.db.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

from nerved import _version, logs
from nerved.control.commands import COMMANDS
from nerved.control.dispatch import HEAVY
from nerved.control.rpc import METHOD_NOT_FOUND, RpcError
from nerved.control.server import ControlServer
from nerved.loop import Loop, Timer
from nerved.master import memory
from nerved.master.notify import Notifier
from nerved.master.startup import EX_OK, Options, Prepared, Started
from nerved.outcome import ShuttingDown
from nerved.store import Storage, StoreError
from nerved.store.opening import open_store
from nerved.store.records import now_ms

log = logging.getLogger(__name__)

FIRST_DELAY: Final = 0.5  # seconds before the second try (the first is made at once)
MAX_DELAY: Final = 15.0  # seconds between two tries, at most
STATE: Final = "waiting for the store"
"""``status``'s ``state`` while the store cannot be reached."""


class Unreachable(Exception):
    """The database did not answer a try (not a refusal: a retry may reach it)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def store_url(options: Options, prepared: Prepared) -> str | None:
    """The PostgreSQL URL the daemon uses (``--store``, over nerve.yaml's ``store:``), or
    None for logs.db (no ``store:``, or ``--store sqlite`` over nerve.yaml's PostgreSQL)."""
    url = options.store or prepared.config.store
    return None if url == "sqlite" else url


def open_or_wait(
    loop: Loop,
    notifier: Notifier,
    options: Options,
    prepared: Prepared,
    started: Started,
    started_at: float,
) -> tuple[Storage | None, ControlServer | None]:
    """The daemon's store, and the control server made if it had to wait for it (see the
    module's doc); the store None if a SIGTERM or SIGINT ended the wait. Raises StoreError
    for what a retry cannot mend; logs.db's lock is waited for as ever (``STATUS=``)."""
    url = store_url(options, prepared)
    if url is None:

        def locked(why: str) -> None:  # another process holds logs.db's write lock
            notifier.status(why)
            notifier.extend()

        return open_store(options.state_dir, None, locked), None
    try:
        return _open_once(options, url), None
    except Unreachable as exc:
        waiting = StoreWait(loop, notifier, options, prepared, url, exc.why, started_at)
    store = waiting.run(started)
    return store, waiting.control


def _open_once(options: Options, url: str) -> Storage:
    """One try at the database: the store, or Unreachable at its first failure to connect
    (PgStore retries while its ``on_wait`` returns: here it raises)."""

    def unreachable(why: str) -> None:
        raise Unreachable(why.removeprefix("waiting for "))

    return open_store(options.state_dir, url, unreachable)


class StoreWait:
    """The waiting mode: the control socket served, and the database tried on timers.

    Made once the first try failed (``error``, why); :meth:`run` serves until a try
    reaches the database, a signal stops it, or a try meets what a retry cannot mend.
    """

    def __init__(
        self,
        loop: Loop,
        notifier: Notifier,
        options: Options,
        prepared: Prepared,
        url: str,
        error: str,
        started_at: float,
    ) -> None:
        from nerved.store.postgres.connection import display

        self.loop = loop
        self.notifier = notifier
        self.options = options
        self.prepared = prepared
        self.url = url
        self.where = display(url)
        self.error = self._bare(error)
        self.started_at = started_at
        self.since = now_ms()  # when the first try failed
        self.tries = 1
        self.delay = FIRST_DELAY
        self.next_try = 0.0  # monotonic
        self.store: Storage | None = None
        self.failure: StoreError | None = None
        self.control: ControlServer | None = None
        self._timers: list[Timer] = []

    def run(self, started: Started) -> Storage | None:
        """Serve and retry until the store is reached (returned), or a signal stops the
        wait (None); raises StoreError for what a retry cannot mend."""
        loop = self.loop
        loop.install_signal_wakeup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, gated=False)
        loop.at_end_of_turn(_flush(self.notifier))
        config = self.prepared.config.control
        self.control = ControlServer(
            loop, self.prepared.listener, self.dispatch, heavy=HEAVY,
            idle_timeout=config.idle_timeout_ms / 1000, max_connections=config.max_connections,
        )  # fmt: skip
        self._schedule()
        if self.notifier.watchdog_interval:
            self._watchdog()
        log.warning(
            "cannot reach the store %s; answering on the control socket (status; every"
            " other method refused with -32002) and retrying with backoff up to %gs",
            self.where, MAX_DELAY,
        )  # fmt: skip
        self.notifier.ready(self._line())
        started(EX_OK, self._line())
        loop.run()
        for timer in self._timers:
            timer.cancel()
        if self.failure is not None:
            raise self.failure
        return self.store

    # -- tries --------------------------------------------------------------------------

    def _schedule(self) -> None:
        """The next try in ``delay`` seconds, drawn in its upper half; the delay doubles."""
        jitter = int.from_bytes(os.urandom(2), "big") / 65_536  # not random: no hashlib
        wait = self.delay * (0.5 + 0.5 * jitter)
        self.delay = min(MAX_DELAY, self.delay * 2)
        self.next_try = time.monotonic() + wait
        self._timers = [t for t in self._timers if not t.cancelled]
        self._timers.append(self.loop.call_later(wait, self._try, gated=False))

    def _try(self) -> None:
        """A try, bounded by connect_timeout: a bare connection first (PgStore would log
        each failure to make one), then, once one was made, the store. A database reached
        but refusing (a login, a newer schema, a failed migration) ends the start, as it
        does at the first try."""
        from nerved.store.postgres.connection import Refused, connect

        self.tries += 1
        try:
            connect(self.url, autocommit=True, application_name="nerved (waiting)").close()
        except Refused as exc:
            self._fail(exc)
            return
        except StoreError as exc:
            self._still(str(exc))
            return
        try:
            self.store = _open_once(self.options, self.url)
        except Unreachable as exc:  # gone again since the bare connection
            self._still(exc.why)
        except StoreError as exc:
            self._fail(exc)
        else:
            log.info("reached the store %s (try %d)", self.where, self.tries)
            self.loop.stop()

    def _bare(self, why: str) -> str:
        """``why`` without the name of the database it begins with (status names it)."""
        return why.removeprefix(f"{self.where}: ")

    def _still(self, why: str) -> None:
        why = self._bare(why)
        if why != self.error:
            log.warning("still cannot reach the store: %s", why)
        else:
            log.debug("still cannot reach the store (try %d): %s", self.tries, why)
        self.error = why
        self._schedule()
        self.notifier.status(self._line())

    def _fail(self, exc: StoreError) -> None:
        self.failure = exc
        self.loop.stop()

    def _stop(self, signum: int) -> None:
        log.info("stopping (%s) while waiting for the store", signal.Signals(signum).name)
        self.notifier.stopping(f"stopping ({signal.Signals(signum).name})")
        self.loop.stop()

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval
        if interval:
            self._timers.append(self.loop.call_later(interval, self._watchdog, gated=False))

    # -- the control socket -------------------------------------------------------------

    def dispatch(self, method: str, raw_params: dict[str, Any], uid: int | None = None) -> Any:
        """``status``, or -32002 (nerved.outcome.ShuttingDown) for any other method: every
        one changes something or reads the store. An unknown method is -32601 still."""
        if method not in COMMANDS:
            raise RpcError(METHOD_NOT_FOUND, f"no method {method!r}")
        if method == "status":
            return self.status()
        raise ShuttingDown(
            f"the store {self.where} is unreachable ({self.error}); nothing was done, try"
            " again once nerved has reached it (nervectl status)",
            {"store": "unreachable"},
        )

    def status(self) -> dict[str, Any]:
        """``status`` while waiting: the daemon's facts that need no store, and the store's."""
        config = self.prepared.config
        return {
            "version": _version.__version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started_at, 3),
            "state": STATE,
            "root": str(self.options.root.resolve()),
            "stateDir": str(self.options.state_dir),
            "senses": len(config.senses),
            "groups": len(config.groups()),
            "workflows": len(config.workflows),
            "workers": [],
            "rss": memory.total_rss([os.getpid()]),
            "commits": 0,
            "host": self.options.host_id,
            "hosts": [],
            "store": {
                "where": self.where,
                "reachable": False,
                "error": self.error,
                "since": self.since,
                "tries": self.tries,
                "nextTry": now_ms() + max(0, round((self.next_try - time.monotonic()) * 1000)),
            },
        }

    def _line(self) -> str:
        """STATUS=: what systemctl status shows while waiting."""
        wait = max(0.0, self.next_try - time.monotonic())
        return (
            f"{STATE}: unreachable, next try in {wait:.1f}s (tries: {self.tries}):"
            f" {self.error}; only status is answered"
        )


def _flush(notifier: Notifier) -> Callable[[], None]:
    """The end of a waiting turn: what systemd and journald have yet to hear (the daemon's
    Upkeep does the same from the normal start on; one more flush then costs nothing)."""

    def flush() -> None:
        notifier.flush()
        logs.flush()

    return flush
