"""Turning the daemon's JSON into what an operator reads: tables, one-line values, log lines.

Human output is for eyes at a terminal, so long values are cut to keep one row per line;
``--json`` is where the complete values are, and every command has it.
"""

from __future__ import annotations

import json
import sys

from nervectl.context import visible
from nervectl.times import format_local
from nerved.words import plural as plural  # nervectl's counts say it as nerved's do

# Cheap to import, as every handler imports it: tabulate is imported when a table is drawn
# (it alone costs more than the rest of a --json command), shutil when a terminal is
# measured, typing never (see nervectl.client).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Final, TextIO

ELLIPSIS: Final = "..."
CELL_WIDTH: Final = 60  # a table cell holding free text (an error, a payload)
PIPED_LINE_WIDTH: Final = 1000  # a log payload when stdout is not a terminal


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate  # imported when a table is drawn: --json does without

    return tabulate(list(rows), headers=list(headers), tablefmt="simple", disable_numparse=True)


MIN_CUT: Final = 12  # a column cut to fit the terminal keeps at least this many characters
_GAP: Final = 2  # tabulate's "simple" format puts two spaces between columns


def fit(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    width: int | None,
    cut: Sequence[int],
) -> list[list[str]]:
    """``rows`` as text, the columns named by ``cut`` (indexes, the first cut first) cut so
    that a table of them is at most ``width`` characters wide (None: as they are).

    A table wider than the terminal wraps each row over two lines, which no one can read;
    the free text (an error, where a run stands) is what can lose its end, and ``--json``
    has it whole. A column is never cut below :data:`MIN_CUT` or its header: a terminal
    narrower than that gets lines that wrap rather than columns that say nothing.
    """
    text = [[str(value) for value in row] for row in rows]
    if width is None or not text:
        return text
    # tabulate's "simple" format gives a header two more characters than it has
    widths = [max(len(h) + _GAP, *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    excess = sum(widths) + _GAP * (len(widths) - 1) - width
    for column in cut:
        if excess <= 0:
            break
        floor = max(MIN_CUT, len(headers[column]) + _GAP)
        target = max(widths[column] - excess, floor)
        if target < widths[column]:
            excess -= widths[column] - target
            widths[column] = target
            for row in text:
                row[column] = truncate(row[column], target)
    return text


def terminal_width(stream: TextIO) -> int | None:
    """The width to fit a table to: the terminal's ($COLUMNS first, as shutil reads it),
    or None when ``stream`` is no terminal (a pipe or a file gets whole rows, for grep)."""
    if not stream.isatty():
        return None
    import shutil

    return shutil.get_terminal_size().columns


LABELS: Final = {
    "runId": "run",
    "createdAt": "created",
    "updatedAt": "updated",
    "retryOf": "retry of",
    "idempotencyKey": "key",
    "attempts": "workers lost",  # under the run (maxAttempts), not tries of a step
    "tries": "failed tries",
    "retryAt": "next try",
    "waitFor": "waits for",
    "wakeAt": "wakes",
    "triggerPayload": "payload",
    "pendingSignals": "pending signals",
    "stateDir": "state dir",
    "activeWorkflows": "active runs",
    "queuedWorkflows": "queued runs",
}
"""The words human output gives the protocol's field names it shows; any other name is
split where its case changes (:func:`label`). ``--json`` keeps the names."""


def label(key: str) -> str:
    """A field's name as an operator reads it: its word from :data:`LABELS`, else the
    camelCase (or snake_case) name split into lower-case words, ``lastFiredAt`` ``last fired
    at``, ``workerPID`` ``worker pid``. Words pass unchanged, so a label may go through
    twice."""
    if key in LABELS:
        return LABELS[key]
    out: list[str] = []
    for i, char in enumerate(key):
        before = key[i - 1] if i else ""
        after = key[i + 1] if i + 1 < len(key) else ""
        starts_word = before.islower() or before.isdigit() or (before.isupper() and after.islower())
        if char.isupper() and starts_word:
            out.append(" ")
        out.append(" " if char == "_" else char.lower())
    return " ".join("".join(out).split())


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """A key/value block: one field per line, values aligned; a key is shown in words
    (:func:`label`), whoever built the pairs, so that no protocol name reaches an operator
    as it is on the wire."""
    from tabulate import tabulate

    return tabulate(
        [(f"{label(key)}:", value) for key, value in pairs], tablefmt="plain", disable_numparse=True
    )


def truncate(text: str, width: int = CELL_WIDTH) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - len(ELLIPSIS), 1)] + ELLIPSIS


def one_line(text: str) -> str:
    """The line of a multi-line message worth showing in a cell.

    For a Python traceback that is its last line (the exception), for anything else its
    first; the rest is one ``--json`` away.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].startswith("Traceback (most recent call last)"):
        return lines[-1]
    return lines[0] + (f" {ELLIPSIS}" if len(lines) > 1 else "")


def compact(value: Any) -> str:
    """A JSON value on one line; a plain string is shown as itself (log lines, errors)."""
    if isinstance(value, str) and value.isprintable():
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def cell(value: Any, width: int = CELL_WIDTH) -> str:
    """Free text or a JSON value, cut to fit a table cell; ``-`` for nothing."""
    if value is None or value == "":
        return "-"
    text = one_line(value) if isinstance(value, str) else compact(value)
    return truncate(visible(text), width)  # shown before measured: the table stays aligned


def unreadable(entry: Mapping[str, Any]) -> str | None:
    """The marker shown for an entry whose payload the daemon could not read back, or None."""
    why = entry.get("unreadable")
    return None if why is None else f"[unreadable: {why}]"


def mib(size: int | float | None) -> str:
    return "-" if size is None else f"{size / (1 << 20):.1f} MiB"


def dumps_line(value: Any) -> str:
    """One JSON document per line (``logs --follow --json``), for line-by-line readers."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class LogLines:
    """Log entries as aligned lines, for a batch or for a stream that is still growing.

    Columns only ever widen, so a ``--follow`` stream stays aligned as longer names arrive
    without redrawing what is already on the screen; the payload gets what is left of the
    terminal's width (or a generous cap when piped).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.widths = [6, 6, 8]  # source, type, refId

    def _payload_width(self, used: int) -> int:
        if not self.stream.isatty():
            return PIPED_LINE_WIDTH
        import shutil

        return max(shutil.get_terminal_size().columns - used, 40)

    def format(self, entry: Mapping[str, Any]) -> str:
        self.widen([entry])
        columns = _log_columns(entry)
        head = "  ".join(
            [format_local(entry.get("ts"), millis=True)]
            + [c.ljust(w) for c, w in zip(columns, self.widths, strict=True)]
        )
        payload = unreadable(entry) or compact(entry.get("payload"))
        return f"{head}  {truncate(payload, self._payload_width(len(head) + 2))}"

    def widen(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Size the columns for a whole batch first, so that it prints aligned."""
        for entry in entries:
            columns = _log_columns(entry)
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, columns, strict=True)]


def _log_columns(entry: Mapping[str, Any]) -> list[str]:
    return [str(entry.get(key) or "-") for key in ("source", "type", "refId")]
