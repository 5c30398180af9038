"""Framed JSON messages between the master and a worker, over one end of a socketpair.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding one object.
Both directions are non-blocking and buffered, so neither side ever waits on the other:
the master must never stall on a worker that stopped reading, and a worker must keep
answering while its user code runs.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Final

_HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 64 * 1024 * 1024
_RECV_SIZE: Final = 256 * 1024

Message = dict[str, Any]


class ChannelClosed(Exception):
    """The other end went away (EOF, reset, or a broken pipe)."""


class ProtocolError(Exception):
    """The other end sent something that is not a frame of this protocol."""


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    data = body.encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(data)) + data


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> bool:
        """Queue a message and write what the socket takes now; True if nothing is left over."""
        self._wbuf += encode(message)
        return self.flush()

    def queue(self, message: Message) -> None:
        """Queue a message for the next :meth:`flush`."""
        self._wbuf += encode(message)

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

    def receive_blocking(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` for at least one more complete message."""
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

    def receive(self) -> list[Message]:
        """Read what is available and return the complete messages in it.

        Raises ChannelClosed at end of stream (after the messages before it were returned
        by earlier calls) and ProtocolError on a frame that cannot be decoded.
        """
        eof = False
        while True:
            try:
                chunk = self.sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self._rbuf += chunk
            if len(chunk) < _RECV_SIZE:
                break
        messages = self._decode()
        if eof and not messages:
            raise ChannelClosed("end of stream")
        # With messages and EOF together, deliver the messages: the socket stays readable
        # at end of stream, so the next call reports the end.
        return messages

    def _decode(self) -> list[Message]:
        messages: list[Message] = []
        offset = 0
        buf = self._rbuf
        while len(buf) - offset >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buf, offset)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit")
            end = offset + _HEADER.size + length
            if len(buf) < end:
                break
            try:
                message = json.loads(bytes(buf[offset + _HEADER.size : end]))
            except ValueError as exc:
                raise ProtocolError(f"undecodable frame: {exc}") from exc
            if not isinstance(message, dict):
                raise ProtocolError("a frame must hold a JSON object")
            messages.append(message)
            offset = end
        if offset:
            del buf[:offset]
        return messages

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
