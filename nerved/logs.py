"""Log lines on stderr or to journald, in the form whoever reads them wants.

Under systemd, journald reads stderr; systemd tells us so by setting ``JOURNAL_STREAM`` to
the device and inode of the stream. Then each record goes to journald's socket instead, as
an entry with fields (:mod:`nerved.journal`): ``PRIORITY`` (so that ``journalctl -u nerved
-p warning`` works), ``NERVE_RUN_ID``, ``NERVE_WORKFLOW`` and ``NERVE_SENSE`` where a line
concerns one, and a ``MESSAGE_ID`` per kind of run transition, which ``systemd/nerve.catalog``
explains to ``journalctl -x``. A record journald's socket cannot take now still reaches it,
as a line on stderr with a ``<N>`` priority prefix (sd-daemon(3)) and without its fields.
Anyone else (a terminal, a file) gets a timestamped line.

A log call that concerns a run or a sense says so with ``extra=logs.run(...)`` or
``extra=logs.sense(...)``. Workers inherit stderr and the environment, so they send to the
same journal, each entry naming its worker's workflow or sense group (:func:`relabel`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Final, TextIO

from nerved import journal
from nerved.states import RunStatus

# syslog(3) priorities, as sd-daemon(3) prefixes expect them.
_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# One MESSAGE_ID per status a run moves to (systemd/nerve.catalog explains each; they never
# change: journalctl MESSAGE_ID=... in scripts and alerts depends on them).
RUN_MESSAGE_IDS: Final[Mapping[RunStatus, str]] = {
    RunStatus.QUEUED: "d9fd675e4d3145f4bc8895899d48416b",
    RunStatus.STARTED: "04b0d652f8e94a73af843d33818a52b7",
    RunStatus.WAITING: "101752a8d8b1436bac5c4a0fe44fb791",
    RunStatus.COMPLETED: "0dff6e35b86244df9e589b988fa08579",
    RunStatus.FAILED: "75f6823d764d4f339109b51d09dd85f7",
    RunStatus.CRASHED: "5e5e855a47cf4fe4bd9127e3ada0767c",
    RunStatus.DROPPED: "3b20c845150f403b8cc8a56921eb1e71",
    RunStatus.CANCELLED: "b6c6401771dc49d1b176ff64f2992e5d",
}

_EXTRA: Final = "journal_fields"  # the LogRecord attribute ``extra=`` sets


def run(run_id: str, workflow: str, status: RunStatus | None = None) -> dict[str, object]:
    """``extra=`` for a line about a run; with ``status``, the line is that transition's."""
    fields = {"NERVE_RUN_ID": run_id, "NERVE_WORKFLOW": workflow}
    if status is not None:
        fields["MESSAGE_ID"] = RUN_MESSAGE_IDS[status]
        fields["NERVE_RUN_STATUS"] = status.value
    return {_EXTRA: fields}


def sense(name: str) -> dict[str, object]:
    """``extra=`` for a line about a sense."""
    return {_EXTRA: {"NERVE_SENSE": name}}


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def stream_is_journal(stream: TextIO) -> bool:
    """True when systemd connected this stream to journald (JOURNAL_STREAM=dev:ino matches)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Base(logging.Formatter):
    label = "nerved"

    def body(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text

    def labelled(self, record: logging.LogRecord) -> str:
        label = "" if self.label == "nerved" else f"{self.label}: "
        return label + self.body(record)


class JournalFormatter(_Base):
    """``<3>message`` per line: journald takes the prefix as the priority of each line."""

    def format(self, record: logging.LogRecord) -> str:
        return prefixed(_priority(record.levelno), self.labelled(record))


def prefixed(priority: int | str, text: str) -> str:
    return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


class HumanFormatter(_Base):
    """``2026-11-25 03:00:01.234 WARNING nerved[123]: message`` for terminals and files."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        millis = int(record.msecs)
        head = f"{stamp}.{millis:03d} {record.levelname:<7} {self.label}[{record.process}]: "
        return head + self.body(record).replace("\n", "\n    ")


class JournalHandler(logging.Handler):
    """Each record an entry of journald's, with fields; stderr (as text) when it cannot be."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.fields: dict[str, str] = {}  # a worker's: which workflow or sense group
        self.socket = journal.JournalSocket(self._to_stream)
        self.setFormatter(JournalFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            assert isinstance(formatter, _Base)
            fields = {
                "MESSAGE": formatter.labelled(record),
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": "nerved",
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
                **self.fields,
                **getattr(record, _EXTRA, {}),
            }
            self.socket.send(fields)
        except Exception:
            self.handleError(record)

    def _to_stream(self, fields: journal.Fields) -> None:
        try:
            self.stream.write(prefixed(fields["PRIORITY"], fields["MESSAGE"]) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # nowhere left to say it

    def flush(self) -> None:
        self.socket.flush()

    def close(self) -> None:
        self.socket.close()
        super().close()

    def forget_after_fork(self) -> None:
        """In a child: the master sends what waits; the socket's fd is the child's to close."""
        self.socket.forget()


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    handler: logging.Handler
    if stream_is_journal(stream):
        handler = JournalHandler(stream)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def flush() -> None:
    """Send what waits for journald's socket (the master's loop, at each turn)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, JournalHandler):
            handler.flush()


def fallen_back() -> int:
    """Records that reached stderr as text instead of the journal, with fields."""
    return sum(
        handler.socket.fallen_back
        for handler in logging.getLogger().handlers
        if isinstance(handler, JournalHandler)
    )


def relabel(label: str, **fields: str) -> None:
    """Name a worker in its log lines (``nerved[sense:system]``), and in its journal fields
    (``NERVE_WORKFLOW=...``)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _Base):
            handler.formatter.label = label
        if isinstance(handler, JournalHandler):
            handler.fields = dict(fields)


def _after_fork_in_child() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, JournalHandler):
            handler.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
