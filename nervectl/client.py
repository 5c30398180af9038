"""The one client of nerved's control socket: JSON-RPC 2.0 over a Unix stream socket, one
request per line, answers matched by id (SPEC §6).

Every command of nervectl talks to the daemon through :class:`Client`, and so do the tests.
Whatever goes wrong in a call ends as one of three exceptions, each with a message fit for
the operator:

- :class:`Unreachable`: no usable answer. The socket cannot be connected to (no daemon,
  wrong path, no permission), the connection was lost, the answer did not come in time, or
  what came is not JSON-RPC. nervectl exits 3: to the operator all of these mean the daemon
  is not answering. ``__cause__`` holds the ``OSError`` or ``ValueError`` behind it.
- :class:`RemoteError`: the daemon answered with a JSON-RPC error (``code``, ``message``,
  ``data``); nothing is wrong with the connection, which stays open for the next call.
- :class:`RequestTooLarge`: the request line would be over the daemon's cap; it is not sent
  (nothing is connected for it).

The module is cheap to import (``json`` and ``socket``, no part of the daemon): it is on
the path of every command, and ``nervectl --json status`` is meant to cost little more than
the interpreter's own start.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import time

from nervectl import limits

# typing is not imported at run time (a few ms of every command); type checkers take any
# name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

DEFAULT_TIMEOUT: Final = 30.0
"""Seconds a call waits for its answer (and a connect for the daemon to accept) unless told."""

FOREVER: Final = math.inf
"""A timeout that waits as long as the daemon takes (``workflow.wait`` without a timeout)."""


MAX_ANSWER: Final = 256 * 1024 * 1024
"""Bytes of one answer line past which the peer is not nerved (a page holds 4 MiB of payloads
and 10,000 entries at most: far less, even with every character escaped)."""


class Unreachable(Exception):
    """No usable answer from the daemon: it cannot be connected to, the connection was lost,
    the answer did not come within the timeout, or it is not JSON-RPC.

    The message names the socket and what happened (``cannot connect to PATH: No such file or
    directory``, ``no answer from PATH within 30s``); ``__cause__`` is the ``OSError`` or
    ``ValueError`` it stands for. The connection is closed: the next call connects anew.
    """


class RequestTooLarge(Exception):
    """The request line would be over the daemon's cap (:data:`nervectl.limits.MAX_LINE`
    bytes, its newline not counted): it is not sent. The message gives both sizes."""


class RemoteError(Exception):
    """The daemon answered with a JSON-RPC error object.

    ``code`` is the JSON-RPC error code (an int: -32001 not found, -32002 not now, -32602
    bad params, -32603 failed, ...: SPEC §6), ``message`` its text, ``data`` whatever the
    daemon attached (``None`` if nothing; ``{"timeout": true, "status": ...}`` for a
    ``workflow.wait`` that timed out). ``str(exc)`` is the message.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Client:
    """One connection to the control socket at ``path``, opened by the first call and kept
    for the next ones (``logs --follow`` polls on one connection); closed by :meth:`close`
    or at the end of a ``with`` block.

    ``timeout`` is in seconds: how long each call waits for its answer unless the call says
    otherwise, and (capped at :data:`DEFAULT_TIMEOUT` when it is :data:`FOREVER`) how long
    connecting waits for a daemon whose backlog is full.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect now, if not connected yet; raises :class:`Unreachable` if it cannot.

        Waits at most ``timeout`` seconds (:data:`DEFAULT_TIMEOUT` if that is
        :data:`FOREVER`): a call that may wait for its answer forever must not wait forever
        for a full backlog.
        """
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if math.isfinite(self.timeout) else DEFAULT_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise Unreachable(f"cannot connect to {self.path}: {exc.strerror or exc}") from exc
        self._sock = sock

    def close(self) -> None:
        """Close the connection, if open; the next call connects again."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = b""

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Send one request and return its ``result`` (any JSON value, as decoded).

        ``params`` entries whose value is ``None`` are left out (an option not given is a
        param not sent). ``timeout`` is in seconds, the client's when ``None``;
        :data:`FOREVER` waits as long as the daemon takes.

        Raises :class:`RequestTooLarge` before connecting for a request over the daemon's
        line cap, :class:`Unreachable` when no usable answer comes (the connection is then
        closed), :class:`RemoteError` for an error answer. A value JSON cannot carry (NaN, a
        lone surrogate...) is the caller's to refuse first; ``ValueError`` if it does not.
        """
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            request["params"] = {k: v for k, v in params.items() if v is not None}
        line = _encode(request)
        if len(line) > limits.MAX_LINE + 1:  # the newline is not counted
            raise RequestTooLarge(
                f"the request would be {len(line) - 1:,} bytes; the daemon takes at most"
                f" {limits.MAX_LINE:,} bytes ({limits.MAX_LINE / (1 << 20):.1f} MiB) in one"
                " request"
            )
        self.connect()
        assert self._sock is not None
        wait = self.timeout if timeout is None else timeout
        # One deadline for the whole answer: a peer that keeps sending lines for other ids,
        # or an endless line, must not hold the call past its timeout.
        deadline = time.monotonic() + wait if math.isfinite(wait) else math.inf
        try:
            self._sock.settimeout(wait if math.isfinite(wait) else None)
            try:  # noqa: SIM105 (contextlib is an import nervectl does not otherwise pay for)
                self._sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                # A daemon that refuses a connection (a full table: -32002) says why in one
                # line and closes, maybe before this request went out: the why is still to
                # be read, and is the answer.
                pass
            while True:
                answer = self._read_answer(deadline)
                if answer.get("id") == request_id or answer.get("id") is None:
                    break
            error = answer.get("error")
            if error is not None:
                code = int(error.get("code", 0))  # an error object, or not JSON-RPC
                raise RemoteError(code, str(error.get("message")), error.get("data"))
        except RemoteError:
            raise
        except ConnectionError as exc:
            self.close()
            raise Unreachable(f"connection to {self.path} lost: {exc}") from exc
        except TimeoutError as exc:
            self.close()
            raise Unreachable(f"no answer from {self.path} within {wait:g}s") from exc
        except OSError as exc:
            self.close()
            raise Unreachable(f"connection to {self.path} failed: {exc.strerror or exc}") from exc
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            # Not JSON (or JSON nested past what json decodes), or JSON but not a JSON-RPC
            # answer (an error that is no error object, a code of 1e400).
            self.close()
            raise Unreachable(f"{self.path} answered something that is not JSON-RPC") from exc
        return answer.get("result")

    def _read_answer(self, deadline: float) -> dict[str, Any]:
        """The next line from the daemon, decoded: ``ConnectionError`` when it hung up or
        sent JSON that is no object, ``ValueError`` for a line that is not JSON or longer
        than any answer (:data:`MAX_ANSWER`), ``TimeoutError`` past ``deadline``
        (``time.monotonic()``)."""
        assert self._sock is not None
        if b"\n" not in self._buf:
            # Chunks joined once, each searched once: a long answer costs linear time.
            chunks, size = [self._buf], len(self._buf)
            while True:
                if size > MAX_ANSWER:
                    raise ValueError(f"an answer line over {MAX_ANSWER:,} bytes")
                if math.isfinite(deadline):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self._sock.settimeout(left)
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("the daemon closed the connection")
                chunks.append(chunk)
                size += len(chunk)
                if b"\n" in chunk:
                    break
            self._buf = b"".join(chunks)
        line, self._buf = self._buf.split(b"\n", 1)
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ConnectionError("the daemon sent something that is not a JSON-RPC answer")
        return answer


def _encode(request: dict[str, Any]) -> bytes:
    """One request line, as the daemon measures it: UTF-8, not ``\\u`` escapes that would
    triple a payload's size against the line cap. Never NaN or Infinity (``ValueError``).

    A lone surrogate (``surrogateescape`` makes one of a byte of argv that is not UTF-8)
    has no UTF-8 form: it goes as its JSON escape, for the daemon to refuse naming the param.
    """
    text = json.dumps(request, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"
