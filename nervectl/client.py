"""A JSON-RPC 2.0 client for the control socket: one request per line, answers matched by id."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

from nerved import wire


class Unreachable(Exception):
    """The daemon's socket cannot be reached (no daemon, wrong path, no permission)."""


class RequestTooLarge(Exception):
    """The request line would be over the daemon's cap (``wire.MAX_LINE``): not sent."""


class RemoteError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Client:
    def __init__(self, path: Path | str, timeout: float | None = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.connect_timeout = 30.0 if timeout is None else timeout
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, waiting at most ``connect_timeout`` seconds (a call that may wait for its
        answer forever must not wait forever for a full backlog)."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise Unreachable(f"cannot connect to {self.path}: {exc.strerror or exc}") from exc
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Send one request and return its result; raises RemoteError for an error answer,
        RequestTooLarge (before connecting) for a request over the daemon's line cap."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            request["params"] = {k: v for k, v in params.items() if v is not None}
        line = _encode(request)
        if len(line) > wire.MAX_LINE + 1:  # the newline is not counted
            raise RequestTooLarge(
                f"the request would be {len(line) - 1:,} bytes; the daemon takes at most"
                f" {wire.MAX_LINE:,} bytes ({wire.size_text(wire.MAX_LINE)}) in one request"
            )
        self.connect()
        assert self._sock is not None
        self._sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            self._sock.sendall(line)
            while True:
                answer = self._read_line()
                if answer.get("id") == request_id or answer.get("id") is None:
                    break
        except (ConnectionError, BrokenPipeError) as exc:
            self.close()
            raise Unreachable(f"connection to {self.path} lost: {exc}") from exc
        if "error" in answer:
            error = answer["error"]
            raise RemoteError(
                int(error.get("code", 0)), str(error.get("message")), error.get("data")
            )
        return answer.get("result")

    def _read_line(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self._buf += chunk
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
