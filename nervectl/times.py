"""Times as the daemon sends them (milliseconds since the epoch) and as an operator types them.

The wire carries UTC epoch milliseconds only; everything an operator reads or types here is
local time, because that is what the rest of their terminal (journalctl, date, ls) shows.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Final

_UNIT_MS: Final = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
}
_PART = r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w)"
_DURATION_RE: Final = re.compile(rf"(?:{_PART}\s*)+")
_PART_RE: Final = re.compile(_PART)
# Ten or more digits: a bare small number is far likelier a typo for "10m" than a time in 1970.
_EPOCH_MS_RE: Final = re.compile(r"\d{10,}")

SINCE_HELP: Final = (
    "an ISO date or time (2024-05-01, 2024-05-01T12:00, 12:30 for today, local time unless "
    "it has an offset), a duration ago (30s, 10m, 2h, 1d, 1h30m), or epoch milliseconds"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_duration_ms(text: str) -> int | None:
    """``1h30m`` -> 5400000; None when ``text`` is not a duration."""
    text = text.strip()
    if not _DURATION_RE.fullmatch(text):
        return None
    return round(sum(float(n) * _UNIT_MS[unit] for n, unit in _PART_RE.findall(text)))


def parse_since(text: str, now: int | None = None) -> int:
    """Epoch milliseconds for ``--since``; ValueError with the accepted forms otherwise."""
    now = now_ms() if now is None else now
    text = text.strip()
    if _EPOCH_MS_RE.fullmatch(text):
        return int(text)
    ago = parse_duration_ms(text)
    if ago is not None:
        return now - ago
    moment = _parse_iso(text, now)
    if moment is None:
        raise ValueError(f"cannot read {text!r} as a time; use {SINCE_HELP}")
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive means local, as the operator reads their clock
    return int(moment.timestamp() * 1000)


def _parse_iso(text: str, now: int) -> datetime.datetime | None:
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
