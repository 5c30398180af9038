"""JSON-RPC 2.0 vocabulary of the control socket (SPEC §6): error codes, errors, params."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from nerved import wire
from nerved.outcome import BadInput, Conflict, NotFound, Pending, Refused, ShuttingDown

__all__ = ["Pending", "RpcError", "as_rpc"]  # Pending: nerved.outcome's, here for the commands

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
NOT_FOUND: Final = -32001
SHUTTING_DOWN: Final = -32002
PERMISSION_DENIED: Final = -32003
CONFLICT: Final = -32004  # the run's status does not allow it (cancel a final run)

MAX_LINE: Final = wire.MAX_LINE
MAX_INTEGER: Final = wire.MAX_INTEGER  # SQLite's INTEGER: a wider one cannot be compared
MAX_NUMBER: Final = 1e9  # seconds (31 years): past it, a number is a mistake, not a wish

T = TypeVar("T")


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def bad_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


class Params:
    """Typed access to a request's params; every mistake becomes -32602 naming the param.

    Numbers are bounded as well as typed: an integer must fit SQLite's 64 bits and a number
    be finite and at most :data:`MAX_NUMBER`, so that no value a client can send reaches the
    store or a timer as something they cannot hold.
    """

    def __init__(
        self, raw: Mapping[str, Any], allowed: frozenset[str], uid: int | None = None
    ) -> None:
        self.uid = uid  # the caller's, from SO_PEERCRED (None: not over the socket)
        unknown = sorted(set(raw) - allowed)
        if unknown:
            allowed_list = ", ".join(sorted(allowed)) or "none"
            raise bad_params(f"unknown param {unknown[0]!r} (allowed: {allowed_list})")
        self._raw = raw

    def _get(self, name: str, kind: type[T] | tuple[type, ...], what: str, required: bool) -> Any:
        if name not in self._raw or self._raw[name] is None:
            if required:
                raise bad_params(f"param {name!r} is required")
            return None
        value = self._raw[name]
        if isinstance(value, bool) and kind is not bool:
            raise bad_params(f"param {name!r} must be {what}, not a boolean")
        if not isinstance(value, kind):
            raise bad_params(f"param {name!r} must be {what}")
        return value

    def string(self, name: str, *, required: bool = False) -> Any:
        value = self._get(name, str, "a string", required)
        if value is not None and not value:
            raise bad_params(f"param {name!r} must not be empty")
        return value

    def integer(
        self, name: str, *, required: bool = False, minimum: int = 0, maximum: int = MAX_INTEGER
    ) -> Any:
        value = self._get(name, int, "an integer", required)
        if value is not None:
            self._within(name, value, minimum, maximum)
        return value

    def number(
        self,
        name: str,
        *,
        required: bool = False,
        minimum: float = 0,
        maximum: float = MAX_NUMBER,
    ) -> Any:
        value = self._get(name, (int, float), "a number", required)
        if value is not None:
            # An int is compared as it is: math.isfinite would overflow on a 400-digit one.
            if isinstance(value, float) and not math.isfinite(value):
                raise bad_params(f"param {name!r} must be a finite number")
            self._within(name, value, minimum, maximum)
        return value

    @staticmethod
    def _within(name: str, value: float, minimum: float, maximum: float) -> None:
        for bound, word, broken in (
            (minimum, "least", value < minimum),
            (maximum, "most", value > maximum),
        ):
            if broken:
                shown = str(bound) if isinstance(bound, int) else f"{bound:g}"
                raise bad_params(f"param {name!r} must be at {word} {shown}")

    def json(self, name: str) -> tuple[Any, str | None]:
        """A param holding any JSON value that nerve will keep: (value, its encoding).

        The encoding is checked here, before anything changes, and handed on, so that the
        value is encoded once (``None`` when the param is absent or null).
        """
        value = self._raw.get(name)
        if value is None:
            return None, None
        try:
            text = wire.dumps(value)
        except wire.Invalid as exc:
            at = wire.where(exc.path, name)
            raise bad_params(
                f"param {name!r} holds what JSON cannot carry: {exc.reason} (at {at})"
            ) from None
        size = len(text.encode())
        if size > wire.MAX_VALUE:
            limit = wire.size_text(wire.MAX_VALUE)
            raise bad_params(f"param {name!r} is {wire.size_text(size)}; at most {limit}")
        return value, text

    def flag(self, name: str) -> bool:
        return bool(self._get(name, bool, "true or false", False))

    def raw(self, name: str, default: Any = None) -> Any:
        return self._raw.get(name, default)

    def has(self, name: str) -> bool:
        return name in self._raw


def as_rpc(error: Exception) -> RpcError:
    """The JSON-RPC error for what the engine said (nerved.outcome), or for an RpcError
    itself: the one place where the engine's refusals get their codes."""
    if isinstance(error, RpcError):
        return error
    if isinstance(error, Refused):
        code = INTERNAL_ERROR
        if isinstance(error, NotFound):
            code = NOT_FOUND
        elif isinstance(error, ShuttingDown):
            code = SHUTTING_DOWN
        elif isinstance(error, BadInput):
            code = INVALID_PARAMS
        elif isinstance(error, Conflict):
            code = CONFLICT
        return RpcError(code, error.message, error.data)
    return RpcError(INTERNAL_ERROR, f"internal error: {error}")
