"""The daemon's bounds that nervectl holds a command line to before it sends anything.

They are :mod:`nerved.wire`'s (a test holds them equal), repeated here because importing the
codec costs every command a few milliseconds (typing, compiled patterns) for three numbers;
the codec itself is imported only where a value is checked (a trigger payload).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MAX_LINE: Final = 1024 * 1024
"""Bytes of one control request line, its newline not counted (``nerved.wire.MAX_LINE``)."""

MAX_INTEGER: Final = 2**63 - 1
"""The largest integer a param may hold (``nerved.wire.MAX_INTEGER``)."""

MAX_QUERY_LIMIT: Final = 10_000
"""Entries or runs in one answer at most (``nerved.wire.MAX_QUERY_LIMIT``)."""

MAX_REPLAY_RUNS: Final = 1000
"""Runs one ``workflow replay`` checks at most (``nerved.wire.MAX_REPLAY_RUNS``)."""

MAX_KEY: Final = 256
"""Characters of an idempotency key at most (``nerved.wire.MAX_KEY``)."""
