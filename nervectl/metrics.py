"""``metrics``: nerve's metrics as Prometheus reads them (the OpenMetrics text).

One call (``metrics``); the text is printed as the daemon sent it, for a person, ``grep``
or a Prometheus text parser; ``--json`` prints the result, ``{text}``. nervectl has no
metrics library to import: the daemon builds the text.
"""

from __future__ import annotations

from nervectl.exits import OK

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Any

    from nervectl.context import Context


def metrics(ctx: Context) -> int:
    result: dict[str, Any] = ctx.call("metrics")
    if ctx.json:
        ctx.print_json(result)
        return OK
    ctx.print(str(result.get("text", "")).rstrip("\n"))
    return OK
