"""The control side of a call: method names, refusals and the codes the engine's refusals
get. The engine here is a small stand-in for the daemon, which is all a command may see
(nerved.control.engine); tests/control/test_protocol.py drives the real one."""

from __future__ import annotations

from typing import Any

import pytest

from nerved.control.dispatch import Dispatcher
from nerved.control.rpc import RpcError, as_rpc
from nerved.outcome import BadInput, Failed, NotFound, Pending, Refused, ShuttingDown


class Engine:
    def __init__(self, refusal: str | None = None) -> None:
        self.refusal = refusal
        self.reloads: list[str] = []

    def refuses_writes(self) -> str | None:
        return self.refusal

    def status(self) -> dict[str, Any]:
        return {"state": "running"}

    def request_reload(self, source: str) -> Pending:
        self.reloads.append(source)
        return Pending()

    senses: Any = None
    workflows: Any = None
    store: Any = None


def test_an_unknown_method_is_a_protocol_error() -> None:
    with pytest.raises(RpcError) as caught:
        Dispatcher(Engine())("no.such.method", {})
    assert caught.value.code == -32601


def test_a_change_is_refused_while_the_engine_refuses_writes_and_reads_go_on() -> None:
    engine = Engine("nerved is shutting down")
    with pytest.raises(ShuttingDown, match="shutting down"):
        Dispatcher(engine)("reload", {})
    assert engine.reloads == []
    assert Dispatcher(engine)("status", {}) == {"state": "running"}


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (NotFound("no run x"), -32001),
        (ShuttingDown("stopping"), -32002),
        (BadInput("NaN is not JSON"), -32602),
        (Failed("configuration not reloaded", {"errors": ["x"]}), -32603),
        (Refused("anything else"), -32603),
    ],
)
def test_each_refusal_of_the_engine_gets_its_code_in_control_alone(
    refusal: Refused, code: int
) -> None:
    error = as_rpc(refusal)
    assert (error.code, error.message, error.data) == (code, refusal.message, refusal.data)
