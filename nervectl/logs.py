"""``logs``: the entries of logs.db, once or followed as they are appended.

The daemon ends an answer early once it holds 4 MiB of payloads, so every read here goes a
page at a time until it has what it wants or gets an empty page; a short page says nothing.
Following polls ``logs.query`` with ``afterId`` on one connection: the daemon keeps no
per-client state for it, so a follower can never slow the daemon down or be forgotten by it.
"""

from __future__ import annotations

import time

from nervectl import render
from nervectl.client import RemoteError
from nervectl.context import visible
from nervectl.exits import OK
from nervectl.limits import MAX_QUERY_LIMIT

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Final

    from nervectl.context import Context

NOT_FOUND_CODE: Final = -32001
POLL_INTERVAL: Final = 0.5  # seconds between two polls while following
PAGE: Final = 1000  # entries asked for at a time while following


def logs(ctx: Context) -> int:
    args = ctx.args
    filters = {
        "source": args.source,
        "type": args.type,
        "runId": args.run,  # a prefix: the daemon finds the run (exit 4 if none)
        "sense": args.sense,
        "since": args.since,
    }
    # Taken before the tail, so that whatever is appended between the two calls is not lost.
    newest = _newest_id(ctx) if args.follow else 0
    try:
        entries = _tail(ctx, filters, args.limit)
    except RemoteError as exc:
        if exc.code == NOT_FOUND_CODE and args.run is not None and not _like_run_id(args.run):
            # --run once took a sense's name too
            raise RemoteError(exc.code, f"{exc.message}; a sense's entries: --sense NAME") from None
        raise
    lines = render.LogLines(ctx.out)
    if not args.follow:
        if ctx.json:
            ctx.print_json(entries)
        elif not entries:
            ctx.print("no log entries")
        else:
            _emit(ctx, lines, entries)
        return OK
    try:
        _emit(ctx, lines, entries)
        # With --since the tail is the oldest entries since then, so the rest follows from its
        # end; otherwise it is the newest, and nothing older than it may be printed later.
        if args.since is not None and entries:
            cursor = int(entries[-1]["id"])
        else:
            cursor = max([newest, *(int(e["id"]) for e in entries[-1:])])
        _follow(ctx, lines, filters, cursor)
    except KeyboardInterrupt:
        pass  # ^C is how a follow ends
    return OK


def _like_run_id(text: str) -> bool:
    """8+ hex digits: what a run id (32 of them) or its prefix looks like."""
    return len(text) >= 8 and all(c in "0123456789abcdef" for c in text.lower())


def _tail(ctx: Context, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (with ``since``, the oldest since then), oldest first:
    paging back with ``beforeId`` (forward with ``afterId``) until ``limit`` or an empty page.
    """
    forward = filters["since"] is not None
    pages: list[list[dict[str, Any]]] = []
    cursor: dict[str, int] = {}
    wanted = limit
    while wanted > 0:
        page: list[dict[str, Any]] = ctx.call(
            "logs.query", {**filters, **cursor, "limit": min(wanted, MAX_QUERY_LIMIT)}
        )
        if not page:
            break
        pages.append(page)
        wanted -= len(page)
        cursor = {"afterId": page[-1]["id"]} if forward else {"beforeId": page[0]["id"]}
    if not forward:
        pages.reverse()
    return [entry for page in pages for entry in page]


def _follow(ctx: Context, lines: render.LogLines, filters: dict[str, Any], cursor: int) -> None:
    while True:
        time.sleep(POLL_INTERVAL)
        while batch := ctx.call("logs.query", {**filters, "afterId": cursor, "limit": PAGE}):
            _emit(ctx, lines, batch)
            cursor = int(batch[-1]["id"])


def _newest_id(ctx: Context) -> int:
    last: list[dict[str, Any]] = ctx.call("logs.query", {"limit": 1})
    return int(last[-1]["id"]) if last else 0


def _emit(ctx: Context, lines: render.LogLines, entries: Sequence[dict[str, Any]]) -> None:
    """Print a batch (aligned as a whole) and flush it: a follower's reader is waiting."""
    if not ctx.json:
        lines.widen(entries)
    for entry in entries:
        line = render.dumps_line(entry) if ctx.json else visible(lines.format(entry))
        ctx.out.write(line + "\n")
    ctx.out.flush()
