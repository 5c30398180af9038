"""One request line of the control socket: decoded once, when first looked at, and what is
wrong with it, as the JSON-RPC error its client gets.

Apart from the connection (:mod:`nerved.control.connection`), which holds buffers and
decides nothing about JSON: here is only what a line means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nerved import wire
from nerved.control.rpc import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, RpcError


@dataclass(slots=True)
class Request:
    """A request line, decoded when first looked at (once), and what is wrong with it."""

    raw: bytes
    message: dict[str, Any] | None = None
    error: RpcError | None = None
    decoded: bool = False
    id: Any = None  # of a request refused as a whole, when it could still be read
    notification: bool = False  # a refused request that had no id: it gets no answer

    def decode(self) -> None:
        if self.decoded:
            return
        self.decoded = True
        try:
            # Two levels for the envelope ({"params": {"payload": ...}}): a payload may nest
            # as deep as any value nerve keeps, and the request line no deeper.
            message = wire.loads(self.raw, max_depth=wire.MAX_DEPTH + 2)
        except wire.Invalid as exc:
            self.error = invalid_line(exc)
            # JSON all the same (a value inside was refused): answer to its id, and not at
            # all to a notification, as for any other request.
            document = exc.document
            if isinstance(document, dict):
                self.notification = "id" not in document
                if valid_id(document.get("id")):
                    self.id = document.get("id")
            return
        if not isinstance(message, dict):
            what = (
                "batch requests are not supported"
                if isinstance(message, list)
                else "a request must be a JSON object"
            )
            self.error = RpcError(INVALID_REQUEST, what)
            return
        self.message = message

    @property
    def method(self) -> str | None:
        method = self.message.get("method") if self.message is not None else None
        return method if isinstance(method, str) else None


def valid_id(value: Any) -> bool:
    """JSON-RPC 2.0: an id is a string, a number (integers only here) or null; and one
    that can be written back (not a string holding a lone surrogate)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    try:
        wire.dumps(value)
    except wire.Invalid:
        return False
    return True


def invalid_line(exc: wire.Invalid) -> RpcError:
    """The JSON-RPC error for a request line :func:`wire.loads` refused.

    Not JSON at all is a parse error; a bad value inside one param names that param
    (-32602); anything else about the shape of the request is an invalid request.
    """
    if exc.reason.startswith(("not JSON", "not UTF-8")):
        return RpcError(PARSE_ERROR, exc.reason)
    path = exc.path
    if len(path) >= 2 and path[0] == "params" and isinstance(path[1], str):
        name = path[1]
        at = wire.where(path[2:], name)
        if exc.reason.startswith("nested deeper"):
            why = f"nests deeper than {wire.MAX_DEPTH} levels"
            return RpcError(INVALID_PARAMS, f"param {name!r} {why} (at {at})")
        return RpcError(
            INVALID_PARAMS, f"param {name!r} holds what JSON cannot carry: {exc.reason} (at {at})"
        )
    if exc.reason.startswith("nested deeper"):
        depth = wire.MAX_DEPTH
        return RpcError(
            INVALID_REQUEST,
            f"request nested deeper than {depth + 2} levels: a value may nest at most {depth}",
        )
    return RpcError(INVALID_REQUEST, f"invalid request: {exc}")
