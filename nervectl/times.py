"""Times as the daemon sends them (milliseconds since the epoch) and as an operator types them.

The wire carries UTC epoch milliseconds only; everything an operator reads or types here is
local time, because that is what the rest of their terminal (journalctl, date, ls) shows.
"""

from __future__ import annotations

import re
import time

from nervectl.limits import MAX_INTEGER

# Cheap to import (the parser takes SINCE_HELP from here): datetime and nerve.yaml's grammar
# are imported by the functions that use them, and typing not at all (see nervectl.client).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime
    from typing import Final

# Seconds since the epoch as journalctl and date(1) write them: ``@1700000000``, ``@1.5``.
_EPOCH_SECONDS_RE: Final = re.compile(r"@([0-9]+)(?:\.([0-9]*))?")
# A bare number is no time: seconds? milliseconds? a duration missing its unit? Never guessed.
_BARE_NUMBER_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]*)?")

SINCE_HELP: Final = (
    "an ISO date or time (2024-05-01, 2024-05-01T12:00, 12:30 for today, local time unless "
    "it has an offset), a duration ago (30s, 10m, 2h, 1d, 1h30m), or seconds since the epoch "
    "as journalctl takes them (@1700000000); a bare number is refused, never guessed; a "
    "time before 1970 means from the first entry"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_duration_ms(text: str) -> int | None:
    """``1h30m`` -> 5400000; None when ``text`` is not a duration with units.

    nerve.yaml's grammar (``nerved.config.grammar``), units required. At most MAX_INTEGER:
    ``9999...9w`` is taken as that.
    """
    from nerved.config.grammar import duration_ms

    return duration_ms(text, at_most=MAX_INTEGER)


def parse_since(text: str, now: int | None = None) -> int:
    """Epoch milliseconds for ``--since``, from 0 to MAX_INTEGER as the daemon takes them;
    ValueError with the accepted forms otherwise.

    ``@1700000000`` is seconds since the epoch, as journalctl and ``date -d`` read it. A bare
    number is refused: ``1700000000`` was once read as milliseconds (1970, so every entry),
    and no reading of it is safe to guess.

    A time before 1970 (a date, or a duration longer ago) is sent as 0: there is no entry
    before it, so the answer is the same and the daemon, which refuses a negative ``since``,
    is not asked for one. A time past MAX_INTEGER milliseconds is refused, as it would be.
    """
    now = now_ms() if now is None else now
    text = text.strip()
    epoch = _EPOCH_SECONDS_RE.fullmatch(text)
    if epoch is not None:
        return _epoch_ms(text, epoch[1], epoch[2] or "")
    if _BARE_NUMBER_RE.fullmatch(text):
        shown = text if len(text) <= 20 else "SECONDS"
        raise ValueError(
            f"a bare number is not read as a time (seconds? milliseconds? a duration missing "
            f"its unit?): write @{shown} for seconds since the epoch, or a duration with its "
            f"unit such as 10m"
        )
    ago = parse_duration_ms(text)
    if ago is not None:
        return max(now - ago, 0)
    moment = _parse_iso(text, now)
    if moment is None:
        raise ValueError(f"cannot read {text!r} as a time; use {SINCE_HELP}")
    if moment.tzinfo is None:
        moment = _local(moment)
    return max(int(moment.timestamp() * 1000), 0)


def _epoch_ms(text: str, seconds: str, fraction: str) -> int:
    """``@SECONDS[.FRACTION]`` in milliseconds (the fraction cut to them); ValueError past
    MAX_INTEGER milliseconds, as the daemon would refuse it."""
    limit = MAX_INTEGER // 1000
    # Compared as text first: int() refuses numbers of more than 4,300 digits.
    if len(seconds.lstrip("0")) > len(str(limit)) or int(seconds) > limit:
        raise ValueError(f"seconds since the epoch must be at most @{limit}, got {text}")
    return int(seconds) * 1000 + int((fraction + "000")[:3])


def _local(moment: datetime.datetime) -> datetime.datetime:
    """A naive time as local time, as the operator reads their clock.

    On the first and last days datetime holds (years 1 and 9999) the local offset may take
    it out of range: it is taken as UTC there, hours that change nothing (before 1970 is 0).
    """
    import datetime

    try:
        return moment.astimezone()
    except (OverflowError, ValueError):
        return moment.replace(tzinfo=datetime.UTC)


def _parse_iso(text: str, now: int) -> datetime.datetime | None:
    import datetime

    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        pass
    if ":" not in text:
        return None  # time.fromisoformat reads "10" as 10:00: too easily a mistyped "10m"
    try:
        clock = datetime.time.fromisoformat(text)
    except ValueError:
        return None
    today = datetime.datetime.fromtimestamp(now / 1000).date()
    return datetime.datetime.combine(today, clock)


def format_local(ms: int | float | None, *, millis: bool = False) -> str:
    """``2024-05-01 12:00:03`` in local time (with ``.123`` when ``millis``); ``-`` for none."""
    if ms is None:
        return "-"
    import datetime

    moment = datetime.datetime.fromtimestamp(ms / 1000)
    if millis:
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float) -> str:
    """``2d 3h``, ``5m 12s``, ``42s``: the two largest units, enough to read at a glance."""
    total = int(seconds)
    if total < 60:
        return f"{seconds:.1f}s" if 0 < seconds < 10 and seconds != total else f"{total}s"
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount or parts:
            parts.append(f"{amount}{unit}")
    return " ".join(p for p in parts[:2] if not p.startswith("0"))


def format_ago(ms: int | float | None, now: int | None = None) -> str:
    """``3s ago``, ``5m ago``; ``never`` for none (a sense that has not computed yet)."""
    if ms is None:
        return "never"
    now = now_ms() if now is None else now
    delta = (now - ms) / 1000
    if -1 < delta < 1:
        return "just now"
    if delta < 0:
        return f"in {_coarse(-delta)}"  # another host's clock, or ours was set back
    return f"{_coarse(delta)} ago"


def _coarse(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
