"""reload: re-read nerve.yaml and the user packages, and apply what changed.

Result: ``{changed: [...]}``. A bad configuration is an error (-32603, every problem in the
message and in ``data.errors``) and the running configuration stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.config import ConfigError
from nerved.control.rpc import INTERNAL_ERROR, Params, RpcError

if TYPE_CHECKING:
    from nerved.daemon import Daemon

NAME = "reload"
PARAMS: tuple[str, ...] = ()
MUTATES = True


def run(daemon: Daemon, params: Params) -> Any:
    try:
        changed = daemon.reload("nervectl reload")
    except ConfigError as exc:
        raise RpcError(
            INTERNAL_ERROR,
            f"configuration not reloaded: {'; '.join(exc.errors)}",
            {"errors": list(exc.errors)},
        ) from exc
    return {"changed": changed}
