"""Cron schedules (``cron:``, ``timezone:``): when a five-field crontab fires, as instants.

The expression is read by cronsim (healthchecks.io's, no dependencies), never by hand; what
is nerve's here is how a crontab's wall-clock times become instants on the days a time zone
changes its offset, so that a daily job neither runs twice nor is missed:

- An expression whose **hour is a wildcard or a step** (``0 * * * *``, ``*/15 */2 * * *``)
  runs in real time: it fires at every instant whose wall-clock time it matches, and at
  no other (23 hourly runs on the day the clocks go forward, 25 on the day they go back,
  one per real hour; on Lord Howe's half-hour changes, each wall-clock time that exists
  once fires once).
- Any other expression (a **fixed hour**, a list or a range of hours: ``30 2 * * *``) is a
  time of day, on the local wall clock: a time the clocks skip fires once, at the end of the
  jump (``30 2 * * *`` at 03:00 on Europe/Berlin's spring day; several times in the skipped
  hour collapse into that one firing); a time the clocks go through twice fires once, the
  first time. This is Debian cron's rule for times of day, as cronsim documents it,
  carried to every expression with a fixed hour.

Instants are milliseconds since the epoch, as everywhere in nerve. Each schedule is
computed from an instant (the next firing strictly after it, the last one at or before it),
so a caller that never asks for an instant it has fired before cannot fire one twice,
whatever the wall clock did in between. A leaf: zoneinfo and cronsim, nothing of nerve's,
both imported where they are used, so that a root with no cron reflex never imports them
(with calendar, a quarter of a megabyte in the master and again in each worker it forks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo

MAX_CRON_LENGTH = 200  # an expression longer than this is a mistake, not a schedule
HOST_ZONE = "host"  # how a reflex without ``timezone:`` names its zone in listings
_LOOK_BACK = timedelta(hours=3)  # past the longest offset change (1 h; 30 min at Lord Howe)
_SCAN = 5000  # firings looked at for one answer, at most: every answer is within a few
_MINUTE = timedelta(minutes=1)
_GAP = 48 * 60  # minutes a skipped stretch may last (Samoa skipped a whole day in 2011)


class CronError(ValueError):
    """An expression or a time zone that is not one; the message says why, for nerve.yaml."""


def check_expression(expr: str) -> None:
    """Raise :class:`CronError` unless ``expr`` is a five-field crontab that fires."""
    if len(expr) > MAX_CRON_LENGTH:
        raise CronError(f"is longer than {MAX_CRON_LENGTH} characters")
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(
            f"expected five fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    from cronsim import CronSim, CronSimError

    try:
        next(CronSim(expr, datetime(2000, 1, 1)))
    except CronSimError as exc:
        raise CronError(f"is not a crontab expression: {str(exc).lower()} field") from None
    except StopIteration:
        raise CronError("never fires") from None


def zone(name: str | None) -> tzinfo:
    """The zone named ``name`` (an IANA name, from the system's tzdata); None: the host's.

    The host's is ``$TZ`` when that names a zone, else ``/etc/localtime``, else UTC: the
    zone itself, with its rules, not today's offset (which would be wrong after a change).
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name is not None:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise CronError(f"unknown time zone {name!r} (an IANA name: Europe/Berlin)") from None
    configured = os.environ.get("TZ", "").removeprefix(":")
    if configured:
        try:
            if configured.startswith("/"):
                with open(configured, "rb") as file:
                    return ZoneInfo.from_file(file, key=configured)
            return ZoneInfo(configured)
        except (OSError, ValueError, ZoneInfoNotFoundError):
            pass
    try:
        with open("/etc/localtime", "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        return UTC


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _real(naive: datetime, where: tzinfo) -> bool:
    aware = naive.replace(tzinfo=where, fold=0)
    return aware.astimezone(UTC).astimezone(where).replace(tzinfo=None) == naive


def _instants(naive: datetime, where: tzinfo) -> list[int]:
    """Every instant whose wall-clock time in ``where`` is ``naive``, in order: none (the
    clocks skip it), one, or two (they go through it twice)."""
    found = {_ms(naive.replace(tzinfo=where, fold=fold)) for fold in (0, 1)}
    return sorted(ms for ms in found if _wall(ms, where) == naive)


def _wall(ms: int, where: tzinfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, where).replace(tzinfo=None)


def _instant(naive: datetime, where: tzinfo) -> int:
    """A wall-clock time of ``where`` as an instant: a time the clocks skip is the end of
    the jump, a time they go through twice is its first pass."""
    for _ in range(_GAP):
        if _real(naive, where):
            return _ms(naive.replace(tzinfo=where, fold=0))
        naive += _MINUTE
    return _ms(naive.replace(tzinfo=where, fold=0))  # no zone skips two days


class Schedule:
    """One expression in one zone; :meth:`next_after` and :meth:`last_until` in ms."""

    def __init__(self, expr: str, where: tzinfo) -> None:
        check_expression(expr)
        self.expr = expr
        self.zone = where
        self.real_time = expr.split()[1].startswith("*")

    def _firings(self, naive_times: Iterator[datetime]) -> Iterator[tuple[datetime, int]]:
        """(wall-clock time, instant) of each firing the expression's times make, in the
        order of the times: a time of day once (:func:`_instant`); in real time, each
        instant that shows the time (:func:`_instants`)."""
        for naive in naive_times:
            if self.real_time:
                for instant in _instants(naive, self.zone):
                    yield naive, instant
            else:
                yield naive, _instant(naive, self.zone)

    def next_after(self, ms: int) -> int | None:
        """The first firing strictly after ``ms``; None: none in cronsim's 50 years.

        Wall-clock times are walked from :data:`_LOOK_BACK` before ``ms``'s: where clocks go
        back, a later time may be an earlier instant, but never by more than that, so the
        walk ends once past the best firing's time by as much."""
        from cronsim import CronSim

        start = _wall(ms - ms % 1000, self.zone) - _LOOK_BACK
        best: tuple[datetime, int] | None = None
        for count, (naive, firing) in enumerate(self._firings(CronSim(self.expr, start))):
            if (best is not None and naive > best[0] + _LOOK_BACK) or count > _SCAN:
                break
            if firing > ms and (best is None or firing < best[1]):
                best = naive, firing
        return None if best is None else best[1]

    def last_until(self, ms: int) -> int | None:
        """The last firing at or before ``ms``; None: none in cronsim's 50 years (the same
        walk as :meth:`next_after`, backwards)."""
        from cronsim import CronSim

        start = _wall(ms - ms % 1000 + 1000, self.zone) + _LOOK_BACK
        best: tuple[datetime, int] | None = None
        walk = CronSim(self.expr, start, reverse=True)
        for count, (naive, firing) in enumerate(self._firings(walk)):
            if (best is not None and naive < best[0] - _LOOK_BACK) or count > _SCAN:
                break
            if firing <= ms and (best is None or firing > best[1]):
                best = naive, firing
        return None if best is None else best[1]
