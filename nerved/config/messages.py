"""How values are shown in nerve.yaml's messages: in YAML's words rather than Python's, clipped.

An operator reads ``got 'ten'``, ``got null``, ``got a list``, never ``None`` or a megabyte
of a value pasted back at them. Its own module because the grammars (``grammar.py``), which
``nervectl`` imports, word their errors with it too.
"""

from __future__ import annotations

import datetime


class Shape:
    """Stands in for a collection where only its kind matters to a message."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description


A_LIST = Shape("a list")
A_MAPPING = Shape("a mapping")
# A scalar whose tag could not be constructed; its error is already recorded.
UNREADABLE = Shape("an unreadable value")

# Integers from here on are refused by every setting, and are not worth printing: Python
# refuses to convert more than 4,300 digits between int and str at all.
HUGE = 10**30
_HUGE_TEXT = "an integer of more than 30 digits"


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters: a message quotes a key or value, never a megabyte."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def printable(text: str) -> str:
    """``text`` with its control characters (C0, DEL, C1) shown as ``\\xNN``."""
    return text.translate(_CONTROLS)


def show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= HUGE:
        return _HUGE_TEXT
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(clip(value))
    if isinstance(value, Shape):
        return value.description
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, bytes):
        return "binary data"
    return f"a value of type {type(value).__name__}"


def describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({show(value)})"
    if isinstance(value, int) and abs(value) < HUGE:
        return f"an integer ({show(value)})"
    if isinstance(value, float):
        return f"a number ({show(value)})"
    if isinstance(value, str):
        return f"a string ({show(value)})"
    return show(value)
