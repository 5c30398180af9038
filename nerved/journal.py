"""journald's native protocol: one datagram per entry, with fields, never blocking.

Text on stderr gives journald a line and its priority; a datagram to its socket gives it
fields too (``NERVE_RUN_ID``, ``MESSAGE_ID``...), so that ``journalctl NERVE_RUN_ID=<id>``
finds a run's lines. The protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL) is small: ``KEY=value``
lines, and for a value that holds a newline (a traceback) the key, a newline, the value's
length as 64-bit little-endian, the value, a newline. python-systemd speaks it, through
libsystemd's C; nothing else needs that, so these fifty lines are nerve's own.

The socket is non-blocking: a journald that reads slowly (its queue is short:
``/proc/sys/net/unix/max_dgram_qlen``, 10 on some hosts) must never stall the master. What
cannot be sent now waits in a bounded queue that the next send, or the loop's turn, tries
again (:meth:`JournalSocket.flush`); what overflows it is handed back to the caller, which
writes it to stderr as text: a line without its fields, never a lost line. No memfd for
very large entries: a value is cut at :data:`MAX_VALUE` bytes, journald's own line limit.
"""

from __future__ import annotations

import errno
import re
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

SOCKET_PATH: Final = "/run/systemd/journal/socket"
MAX_VALUE: Final = 48 * 1024  # bytes of one value (LINE_MAX of journald's stream reader)
MAX_PENDING: Final = 256  # entries waiting for the socket, at most
_CUT: Final = b"\n[... cut by nerved: longer than 48 KiB]"
_NAME: Final = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")

Fields = Mapping[str, str]


def valid_name(name: str) -> bool:
    """A field name journald keeps: upper-case letters, digits and ``_``, not starting with
    ``_`` (those are journald's own, trusted fields), at most 64 characters."""
    return _NAME.fullmatch(name) is not None


def encode(fields: Fields) -> bytes:
    """One entry as a datagram; fields with invalid names are left out."""
    out = bytearray()
    for name, text in fields.items():
        if not valid_name(name):
            continue
        value = text.encode("utf-8", "backslashreplace")
        if len(value) > MAX_VALUE:
            value = value[: MAX_VALUE - len(_CUT)] + _CUT
        key = name.encode("ascii")
        if b"\n" in value:
            out += key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += key + b"=" + value + b"\n"
    return bytes(out)


class JournalSocket:
    """Sends entries to journald; what it cannot send goes to ``fallback``.

    ``fallen_back`` counts entries that went to the fallback instead of the journal.
    """

    def __init__(self, fallback: Callable[[Fields], None], path: str | None = None) -> None:
        self.path = path or SOCKET_PATH
        self.fallback = fallback
        self.fallen_back = 0
        self._pending: deque[tuple[bytes, Fields]] = deque()
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def send(self, fields: Fields) -> None:
        """Send now, or after what already waits; never blocks, never raises."""
        self._pending.append((encode(fields), fields))
        self.flush()
        while len(self._pending) > MAX_PENDING:
            self._give_up(self._pending.popleft()[1])

    def flush(self) -> None:
        """Send what waits, oldest first, until the socket would block. Cheap when empty."""
        while self._pending:
            datagram, fields = self._pending[0]
            try:
                self._socket().sendto(datagram, self.path)
            except BlockingIOError:
                return
            except OSError as exc:
                self._pending.popleft()
                if exc.errno == errno.EMSGSIZE:  # over the socket's buffer: smaller values
                    self._retry_smaller(fields)
                else:  # no journald (ENOENT, ECONNREFUSED): stderr still reaches someone
                    self._give_up(fields)
                continue
            self._pending.popleft()

    def _retry_smaller(self, fields: Fields) -> None:
        small = {name: value[: MAX_VALUE // 8] for name, value in fields.items()}
        try:
            self._socket().sendto(encode(small), self.path)
        except OSError:
            self._give_up(fields)

    def _give_up(self, fields: Fields) -> None:
        self.fallen_back += 1
        self.fallback(fields)

    def forget(self) -> None:
        """In a forked child: what waits is the parent's to send, and the socket's fd is
        closed at the fd level (:mod:`nerved.process`), never through this object."""
        self._pending.clear()
        self.fallen_back = 0
        if self._sock is not None:
            self._sock.detach()
            self._sock = None

    def close(self) -> None:
        """Whatever still waits goes to the fallback; the socket is closed."""
        self.flush()
        while self._pending:
            self._give_up(self._pending.popleft()[1])
        if self._sock is not None:
            self._sock.close()
            self._sock = None
