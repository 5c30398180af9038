"""Framed JSON messages between the master and a worker, over one end of a socketpair.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding one object,
encoded and decoded by :mod:`nerved.wire`'s rules; a message may nest :data:`ENVELOPE_DEPTH`
levels deeper than a value, for the envelope around the values it carries. Each direction
has its own size limit, which the sender checks before it writes (:func:`frame`) and the
receiver before it reads: :data:`TO_MASTER` (a step carries a prompt and an event) and
:data:`TO_WORKER` (a resume carries a whole history).

A frame that does not decode is consumed and handed on as :class:`Garbled`, in its place
among the messages: it never stays at the head of the buffer, and the frames after it are
read as usual. What to do about it is the receiver's decision. A frame longer than the limit
leaves no way to find the next one, so it ends the channel (:class:`ProtocolError`).

Both directions are non-blocking and buffered, so neither side ever waits on the other:
the master must never stall on a worker that stopped reading, and a worker must keep
answering while its user code runs.
"""

from __future__ import annotations

import json
import mmap
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from nerved import wire

_HEADER: Final = struct.Struct(">I")
_RECV_SIZE: Final = 256 * 1024
_RECVS_PER_CALL: Final = 16  # at most 4 MiB read in one receive()

ENVELOPE_DEPTH: Final = 5
"""Levels a message adds around the deepest value it carries: a query reply's
``entries[i].payload.event`` (an event inside a stored step), 5 levels down."""

TO_MASTER: Final = 4 * wire.MiB
"""Bytes of one frame from a worker: a step carries a prompt and an event of at most
:data:`wire.MAX_VALUE` each; the rest is room for the role's name and the envelope."""

TO_WORKER: Final = wire.MAX_HISTORY + wire.MiB
"""Bytes of one frame from the master: a resume carries a run's trigger payload and events,
which its history (at most :data:`wire.MAX_HISTORY`) holds with room to spare."""

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Garbled:
    """A frame that arrived whole but does not decode to a message; ``reason`` says why."""

    reason: str


Received = Message | Garbled


class ChannelClosed(Exception):
    """The other end went away (EOF, reset, or a broken pipe)."""


class ProtocolError(Exception):
    """The other end announced a frame longer than this side accepts: the stream is lost."""


def frame(message: Message, limit: int, raw: Mapping[str, str | None] | None = None) -> bytes:
    """``message`` as one frame for a receiver that accepts ``limit`` bytes.

    ``raw`` adds members whose values are JSON text already checked by wire's rules (a
    stored payload): spliced in as they are, not decoded and encoded again (None is null).
    Raises :class:`wire.Invalid` (nothing is written) for a message that breaks wire's rules
    or is longer than ``limit``: the receiver would refuse it.
    """
    data = wire.encode(message, max_depth=wire.MAX_DEPTH + ENVELOPE_DEPTH)
    if raw:
        members = ",".join(f"{json.dumps(k)}:{'null' if v is None else v}" for k, v in raw.items())
        data = b"%s,%s}" % (data[:-1], members.encode())
    if len(data) > limit:
        raise wire.Invalid(
            f"a message of {wire.size_text(len(data))} is larger than a frame may be"
            f" ({wire.size_text(limit)})"
        )
    return _HEADER.pack(len(data)) + data


def ack_frame(run_id: str, n: int) -> bytes:
    """The frame of ``{"t": "ack", "run": run_id, "n": n}``, as :func:`frame` makes it, made
    directly: the master sends one per step, and its shape never varies."""
    data = b'{"t":"ack","run":%s,"n":%d}' % (json.dumps(run_id, ensure_ascii=False).encode(), n)
    return _HEADER.pack(len(data)) + data


_SCRATCH: list[memoryview] = []


def _scratch() -> memoryview:
    """The buffer every :meth:`Channel.receive` of this process reads into, made at first
    use: ``recv`` would allocate (and, at this size, mmap, shrink and unmap) one per call.
    Its bytes are copied out at once, and each process reads from one thread only (the
    master has no other; a worker's loop thread reads for its role threads).

    An anonymous private mapping, not a bytearray, which would write its 256 KiB of zeros:
    only the pages a read reaches are resident (a message is most often a few hundred
    bytes), where a bytearray's 256 KiB were held by the master and again by each worker
    (issue 14). Private, so that a forked child's reads never reach its parent's copy."""
    if not _SCRATCH:
        _SCRATCH.append(memoryview(mmap.mmap(-1, _RECV_SIZE, flags=mmap.MAP_PRIVATE)))
    return _SCRATCH[0]


class Channel:
    """One end of a socketpair. ``receive_limit`` and ``send_limit`` are frame sizes in bytes:
    the master's ends accept :data:`TO_MASTER` and send :data:`TO_WORKER`, a worker's the
    reverse; the default (:data:`TO_MASTER` both ways) suits the short-lived probe children.
    """

    def __init__(
        self, sock: socket.socket, *, receive_limit: int = TO_MASTER, send_limit: int = TO_MASTER
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.receive_limit = receive_limit
        self.send_limit = send_limit
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self.closed = False

    @property
    def unsent(self) -> int:
        """Bytes queued that the other end has not taken yet."""
        return len(self._wbuf)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> bool:
        """Encode a message, queue it and write what the socket takes now; True if nothing is
        left over. Raises :class:`wire.Invalid` as :func:`frame` does.
        """
        return self.write(frame(message, self.send_limit))

    def write(self, data: bytes) -> bool:
        """Queue a frame made by :func:`frame` and write what the socket takes now."""
        self._wbuf += data
        return self.flush()

    def queue(self, data: bytes) -> None:
        """Queue a frame made by :func:`frame` for the next :meth:`flush`."""
        self._wbuf += data

    def flush(self) -> bool:
        if self.closed:
            raise ChannelClosed("channel is closed")
        while self._wbuf:
            try:
                sent = self.sock.send(self._wbuf)
            except (BlockingIOError, InterruptedError):
                return False
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed(str(exc)) from exc
            del self._wbuf[:sent]
        return True

    def flush_blocking(self, timeout: float) -> None:
        """Write out the queue, blocking up to ``timeout``: for a worker about to exit."""
        if self.closed or not self._wbuf:
            return
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(self._wbuf)
            self._wbuf.clear()
        finally:
            self.sock.setblocking(False)

    def receive_blocking(self, timeout: float) -> list[Received]:
        """Wait up to ``timeout`` for at least one more complete frame."""
        self.sock.settimeout(timeout)
        try:
            while True:
                messages = self._decode()
                if messages:
                    return messages
                chunk = self.sock.recv(_RECV_SIZE)
                if not chunk:
                    raise ChannelClosed("end of stream")
                self._rbuf += chunk
        finally:
            self.sock.setblocking(False)

    def receive(self) -> list[Received]:
        """Read what is available and return the complete frames in it, in order.

        Raises ChannelClosed at end of stream (after the messages before it were returned
        by earlier calls) and ProtocolError on a frame longer than ``receive_limit``.
        """
        eof = False
        scratch = _scratch()
        for _ in range(_RECVS_PER_CALL):  # bounded: a peer that keeps writing waits a turn
            try:
                got = self.sock.recv_into(scratch)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                eof = True
                break
            if not got:
                eof = True
                break
            self._rbuf += scratch[:got]
            if got < _RECV_SIZE:
                break
        messages = self._decode()
        if eof and not messages:
            raise ChannelClosed("end of stream")
        # With messages and EOF together, deliver the messages: the socket stays readable
        # at end of stream, so the next call reports the end.
        return messages

    def _decode(self) -> list[Received]:
        messages: list[Received] = []
        offset = 0
        buf = self._rbuf
        while len(buf) - offset >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buf, offset)
            if length > self.receive_limit:
                raise ProtocolError(
                    f"a frame of {wire.size_text(length)} is larger than"
                    f" {wire.size_text(self.receive_limit)}"
                )
            end = offset + _HEADER.size + length
            if len(buf) < end:
                break
            with memoryview(buf) as view:
                body = view[offset + _HEADER.size : end]
                try:
                    message = wire.loads(body, max_depth=wire.MAX_DEPTH + ENVELOPE_DEPTH)
                except wire.Invalid as exc:
                    message = Garbled(str(exc))
                finally:
                    body.release()
            offset = end  # consumed, whatever it held
            if not isinstance(message, dict | Garbled):
                message = Garbled("a frame must hold a JSON object")
            messages.append(message)
        if offset:
            del buf[:offset]
        return messages

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
