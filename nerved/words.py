"""Counts in the words operators read: ``1 group``, ``2 groups``, ``0 runs``.

One helper for nerved's messages (its status line, ``nerved check``, its log) and nervectl's
human output alike, so that no message says "1 groups" because a count changed under a
hard-coded plural. A shared leaf: it imports nothing, so any part (and nervectl) may use it.
"""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun``, agreeing: ``noun + "s"`` unless ``count`` is 1, or
    ``plural_form`` for a noun that takes another (``plural(2, "reflex", "reflexes")``)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"
