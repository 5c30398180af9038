"""From a method name and its params to a command's answer, for the control server.

The JSON-RPC side of every call: an unknown method, a change refused while nothing may be
changed (-32002), a read of the store that failed (-32603). The commands' own refusals come
back as nerved.outcome's and are given their codes by the connection (rpc.as_rpc).
"""

from __future__ import annotations

import logging
from typing import Any

from nerved.control.commands import COMMANDS
from nerved.control.engine import Engine
from nerved.control.rpc import INTERNAL_ERROR, METHOD_NOT_FOUND, Params, RpcError
from nerved.outcome import ShuttingDown
from nerved.store import StoreError

log = logging.getLogger(__name__)

HEAVY = frozenset(command.name for command in COMMANDS.values() if command.heavy)
"""Methods whose requests may cost milliseconds: the server shares a budget between them."""


class Dispatcher:
    """Calls the commands on ``engine``; see the module's docstring for the errors."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, method: str, raw_params: dict[str, Any], uid: int | None = None) -> Any:
        """The answer to ``method``; ``uid``: the caller's (SO_PEERCRED), which a command may
        record (a cancel says who asked)."""
        command = COMMANDS.get(method)
        if command is None:
            raise RpcError(METHOD_NOT_FOUND, f"no method {method!r}")
        if command.mutates:
            refusal = self.engine.refuses_writes()
            if refusal is not None:
                raise ShuttingDown(refusal)
        try:
            return command.run(self.engine, Params(raw_params, command.params, uid))
        except StoreError as exc:
            if command.mutates:
                raise  # a write failed: the daemon stops (nerved.master.daemon)
            log.error("%s: %s", method, exc)
            raise RpcError(INTERNAL_ERROR, f"cannot read the store: {exc}") from None
