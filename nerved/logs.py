"""Log lines on stderr, in the form whoever reads stderr wants.

Under systemd, journald reads stderr and learns each line's priority from a ``<N>`` prefix
(sd-daemon(3)), which is what makes ``journalctl -u nerved -p warning`` work; systemd tells
us it is reading by setting ``JOURNAL_STREAM`` to the device and inode of the stream. Anyone
else (a terminal, a file) gets a timestamped line instead. Workers inherit stderr, so their
lines land in the same place and name their process in the message.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Final, TextIO

# syslog(3) priorities, as sd-daemon(3) prefixes expect them.
_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

LEVELS: Final = ("debug", "info", "warning", "error", "critical")


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


class JournalFormatter(_Base):
    """``<3>message`` per line: journald takes the prefix as the priority of each line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        label = "" if self.label == "nerved" else f"{self.label}: "
        return "\n".join(prefix + label + line for line in self.body(record).splitlines() or [""])


class HumanFormatter(_Base):
    """``2026-11-25 03:00:01.234 WARNING nerved[123]: message`` for terminals and files."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        millis = int(record.msecs)
        head = f"{stamp}.{millis:03d} {record.levelname:<7} {self.label}[{record.process}]: "
        return head + self.body(record).replace("\n", "\n    ")


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    formatter: _Base = JournalFormatter() if stream_is_journal(stream) else HumanFormatter()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def relabel(label: str) -> None:
    """Name a worker in its log lines (``nerved[sense:system]``)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _Base):
            handler.formatter.label = label
