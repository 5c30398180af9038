"""A review loop: an author revises until the reviewer approves, or the rounds run out.

Trigger it with a change to review:

    nervectl workflow trigger code-review --payload '{"title": "fix typo", "lines": 12}' --wait

The payload is an object with an optional `title` (a string) and `lines` (a whole number of
at least 1, default 10); a string payload is the title alone, and no payload an untitled
change of 10 lines. Anything else (a list, a number, `"lines": "many"`) fails the run at
once with an error saying what the workflow takes.

The moderator branches on the events: a rejected review sends the change back to the author
with the reviewer's comments, an approval goes to the merger, and after MAX_ROUNDS rejected
reviews the thread ends without merging. The roles are stand-ins for real tools (a linter,
an LLM, a forge API): what matters is the shape of the conversation.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nerved import CommandEvent, ModerateResult, ThreadState, WorkflowContext, WorkflowDefinition

MAX_ROUNDS = 3
SMALL_ENOUGH = 50


async def reviewer(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Approve small changes; ask for a split of big ones."""
    await asyncio.sleep(0.05)  # stands in for a call to a review service
    lines = prompt["lines"]
    if lines <= SMALL_ENOUGH:
        return {"type": "approved", "lines": lines}
    ctx.log(f"round {prompt['round']}: {lines} lines is too big")
    return {"type": "changes_requested", "lines": lines, "comments": ["please split this change"]}


def author(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Address the comments: here, by halving the change."""
    return {"type": "revised", "lines": max(1, prompt["lines"] // 2)}


def merger(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    ctx.log(f"merging {prompt['title']!r}")
    return {"type": "merged", "title": prompt["title"]}


TAKES = 'a payload {"title": TEXT, "lines": N} (both optional), or the title as a string'


def read_change(payload: Any) -> dict[str, Any]:
    """The change a trigger payload describes, ``{title, lines}``; ValueError naming what
    the workflow takes when it describes none (the run fails with it, before any step)."""
    if payload is None:
        payload = {}
    elif isinstance(payload, str):
        payload = {"title": payload}
    if not isinstance(payload, dict):
        raise ValueError(f"code-review takes {TAKES}, not {json.dumps(payload)[:80]}")
    title, lines = payload.get("title", "untitled"), payload.get("lines", 10)
    if not isinstance(title, str):
        raise ValueError(f"code-review takes {TAKES}; its title is {json.dumps(title)[:80]}")
    if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
        raise ValueError(
            f"code-review takes {TAKES}; lines must be a whole number of at least 1,"
            f" not {json.dumps(lines)[:80]}"
        )
    return {"title": title, "lines": lines}


def moderate(thread: ThreadState, event: CommandEvent) -> ModerateResult | None:
    change = read_change(thread.events[0]["payload"])
    title = change["title"]
    rounds = sum(1 for e in thread.events if e["type"] == "changes_requested")
    kind = event["type"]
    if kind == "thread_start":
        return {"role": "reviewer", "prompt": {"lines": change["lines"], "round": 1}}
    if kind == "changes_requested":
        if rounds >= MAX_ROUNDS:
            return None  # given up: the thread completes unmerged
        return {
            "role": "author",
            "prompt": {"lines": event["lines"], "comments": event["comments"]},
        }
    if kind == "revised":
        return {"role": "reviewer", "prompt": {"lines": event["lines"], "round": rounds + 1}}
    if kind == "approved":
        return {"role": "merger", "prompt": {"title": title}}
    return None


workflow = WorkflowDefinition(
    roles={"reviewer": reviewer, "author": author, "merger": merger}, moderate=moderate
)
