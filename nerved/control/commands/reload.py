"""reload: re-read nerve.yaml and the user packages, and apply what changed.

Changed packages are first imported in a throwaway process. Result: ``{changed: [...]}``.
A bad configuration or a package that does not import is an error (-32603, every problem in
the message and in ``data.errors``), and the running configuration stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "reload"
PARAMS: tuple[str, ...] = ()
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    return engine.request_reload("nervectl reload")
