"""What the engine answers when it cannot do what it was asked, and answers that come later.

The engine (nerved.master) speaks in these terms; only nerved.control turns them into
JSON-RPC error codes (:func:`nerved.control.rpc.as_rpc`), so that the engine knows nothing
of the protocol and a reflex, a reload or a test can call it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Refused(Exception):
    """The engine would not, or could not, do it: the message says why, for the operator;
    ``data`` is what a client may act on (JSON)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class NotFound(Refused):
    """No such workflow, sense or run."""


class ShuttingDown(Refused):
    """nerved is stopping, or cannot write now: nothing was changed, try again later."""


class BadInput(Refused):
    """A value nerve will not keep (a payload JSON cannot carry, one too large)."""


class Conflict(Refused):
    """The run is not in a status that allows it: cancelling a final run, retrying an
    active one (-32004). ``data``: ``{status}``, the run's status."""


class Failed(Refused):
    """It was tried and did not succeed (a reload refused, a wait that timed out)."""


class Pending:
    """A result that is not known yet (``workflow.wait``, a reload, a trigger awaiting its
    commit): resolved with a value or rejected with an exception, once."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Any, Exception | None], None]] = []
        self.done = False
        self._outcome: tuple[Any, Exception | None] = (None, None)

    def on_done(self, callback: Callable[[Any, Exception | None], None]) -> None:
        """Call ``callback(result, error)`` when known: at once if it is known already."""
        if self.done:
            callback(*self._outcome)
        else:
            self._callbacks.append(callback)

    def resolve(self, result: Any) -> None:
        self._finish(result, None)

    def reject(self, error: Exception) -> None:
        self._finish(None, error)

    def _finish(self, result: Any, error: Exception | None) -> None:
        if self.done:
            return
        self.done = True
        self._outcome = (result, error)
        for callback in self._callbacks:
            callback(result, error)
        self._callbacks.clear()
