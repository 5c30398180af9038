"""The grammars of the values an operator writes: durations, sizes and names.

One rule of each, for nerve.yaml and ``nervectl`` alike, so that a duration or a name written
in one is read the same way in the other:

- **Durations**: one or more parts ``<number><unit>``, the units ``ms``, ``s``, ``m``, ``h``,
  ``d`` and ``w``, spaces allowed between them: ``500ms``, ``10s``, ``1.5h``, ``1h30m``,
  ``2d 12h``, ``2w``. In nerve.yaml a bare number is milliseconds (:func:`parse_duration`);
  on a command line it is not a duration at all (:func:`duration_ms`): there a bare number is
  likelier a unit left out, or epoch milliseconds.
- **Sizes**: ``<number>`` bytes, or with ``K``, ``M``, ``G``, ``T``, powers of 1024.
- **Names** of senses, groups and workflows (:data:`NAME_RE`).

Numbers are read exactly (``0.1h`` is 360000 ms, not a float's 359999.99...) and rounded half
up once, at the end. A leaf: it imports neither PyYAML nor anything of the daemon's, because
every ``nervectl`` command imports it, and nervectl's start-up time is the operator's wait.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from nerved.config.messages import show
from nerved.wire import KiB, MiB

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS

# Ceilings that only reject absurd values: beyond them timers overflow (threading's
# TIMEOUT_MAX is ~292 years) and SQLite refuses to bind integers wider than 64 bits.
MAX_DURATION_MS = 36_500 * DAY_MS
# memoryMax: 1024T is far past any host.
MAX_SIZE = 1 << 50

# Names become directory and file names, so they must be harmless path components.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = (
    "use letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64 characters"
)

# An exact amount: (numerator, denominator).
_Exact = tuple[int, int]

_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_NUMBER_RE = re.compile(_NUMBER)
# Digits past these are never needed: a whole part this long is past every maximum, and
# further digits of a fraction are worth less than 10**-30 of a unit.
_DIGITS = 30


def _number(text: str) -> _Exact:
    """A number as :data:`_NUMBER` matches it (``12``, ``1.5``, ``.25``, ``3.``), exactly."""
    whole, _, fraction = text.partition(".")
    whole = whole.lstrip("0")
    if len(whole) > _DIGITS:  # and int() refuses more than 4,300 digits
        return 10**_DIGITS, 1
    fraction = fraction[:_DIGITS]
    return int(whole + fraction or "0"), 10 ** len(fraction)


def _round(exact: _Exact) -> int:
    """Half up: 0.5 ms is 1 ms."""
    numerator, denominator = exact
    return (2 * numerator + denominator) // (2 * denominator)


# --------------------------------------------------------------------------------------------
# Durations

_UNIT_MS: dict[str, int] = {
    "ms": 1,
    "s": SECOND_MS,
    "m": MINUTE_MS,
    "h": HOUR_MS,
    "d": DAY_MS,
    "w": WEEK_MS,
}
_UNIT = "ms|s|m|h|d|w"  # ms before m
_PART_RE = re.compile(rf"({_NUMBER})\s*({_UNIT})")
# Each part ends with its unit, so a text matches in one way only, in one pass.
_DURATION_RE = re.compile(rf"(?:(?:{_NUMBER})\s*(?:{_UNIT})\s*)+")
_DURATION_HINT = "expected a duration such as 500ms, 10s, 5m or 1h, or a number of milliseconds"


def _with_units(text: str) -> _Exact | None:
    """The milliseconds of a duration with units (``1h30m``), exactly; None if it is not one."""
    if not _DURATION_RE.fullmatch(text):
        return None
    total, scale = 0, 1
    for number, unit in _PART_RE.findall(text):
        numerator, denominator = _number(number)  # powers of ten: one divides the other
        if denominator > scale:
            total *= denominator // scale
            scale = denominator
        total += numerator * _UNIT_MS[unit] * (scale // denominator)
    return total, scale


def _in_file(text: str) -> _Exact | None:
    """A duration as nerve.yaml takes it: with units, or a bare number of milliseconds."""
    if _NUMBER_RE.fullmatch(text):
        return _number(text)
    return _with_units(text)


def parse_duration(value: object) -> int:
    """Milliseconds from a YAML duration value.

    Raises ValueError with a message meant for the operator, because the caller puts it in
    front of them verbatim with only the file, line and key prepended.
    """
    return _amount(value, _in_file, _DURATION_HINT, "a duration", MAX_DURATION_MS,
                   "36500d (100 years)")  # fmt: skip


def duration_ms(text: str, *, at_most: int) -> int | None:
    """Milliseconds of a duration written with units (``500ms``, ``1h30m``, ``2w``), as typed
    on a command line; None if ``text`` is not one.

    A bare number is not a duration here (see the module docstring), nor is a negative one.
    One longer than ``at_most`` is taken as ``at_most``: ``9999...9w`` is simply "ever".
    """
    exact = _with_units(text.strip())
    if exact is None:
        return None
    numerator, denominator = exact
    return at_most if numerator > at_most * denominator else _round(exact)


def _amount(
    value: object,
    read: Callable[[str], _Exact | None],
    hint: str,
    what: str,
    maximum: int,
    maximum_text: str,
) -> int:
    """An integer amount from a YAML number or a string that ``read`` takes (after an optional
    ``-``), rounded half up: what :func:`parse_duration` and :func:`parse_size` share."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{hint}; got {show(value)}")
    if isinstance(value, int):
        negative, exact = value < 0, (abs(value), 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{hint}; got {show(value)}")
        negative, exact = value < 0, abs(value).as_integer_ratio()
    else:
        text = value.strip()
        negative = text.startswith("-")
        found = read(text[1:] if negative else text)
        if found is None:
            raise ValueError(f"{hint}; got {show(value)}")
        exact = found
    numerator, denominator = exact
    if negative and numerator:  # -0 is 0
        raise ValueError(f"{what} cannot be negative; got {show(value)}")
    if numerator > maximum * denominator:
        raise ValueError(f"{what} cannot exceed {maximum_text}; got {show(value)}")
    return _round(exact)


# --------------------------------------------------------------------------------------------
# Sizes

_SIZE_RE = re.compile(rf"({_NUMBER})\s*([KMGT]?)")
_SIZE_UNIT: dict[str, int] = {
    "": 1,
    "K": KiB,
    "M": MiB,
    "G": 1024 * MiB,
    "T": 1024 * 1024 * MiB,
}
_SIZE_HINT = "expected a size such as 256M or 1G (K, M, G, T: powers of 1024), or a number of bytes"


def _size(text: str) -> _Exact | None:
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        return None
    numerator, denominator = _number(match[1])
    return numerator * _SIZE_UNIT[match[2]], denominator


def parse_size(value: object) -> int:
    """Bytes from a YAML size value: ``256M``, ``1.5G``, ``1048576``.

    The suffixes are powers of 1024, as in systemd's ``MemoryMax=``. Raises ValueError with a
    message meant for the operator, as :func:`parse_duration` does.
    """
    return _amount(value, _size, _SIZE_HINT, "a size", MAX_SIZE, "1024T")
