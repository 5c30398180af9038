"""Clean up after a full disk: scan for stale files, then delete them.

Started by the `disk-alert` sense (see nerve.yaml) with its signal as the trigger payload,
`{"path": "/", "used": 0.93}`, or by hand: `nervectl workflow trigger cleanup --payload
'{"path": "/tmp"}'`. It scans `path` (a string payload is the path itself; no payload, /tmp),
on that filesystem only. Any other payload fails the run, saying what it takes. It runs with
`overflow: drop`: one cleanup at a time is enough, and a crashed one is simply started
afresh. The example only *reports* what it would delete, so it is safe to run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from nerved import CommandEvent, ModerateResult, ThreadState, WorkflowContext, WorkflowDefinition

STALE_AFTER_DAYS = 30
SCAN_LIMIT = 1000  # stale files reported at most
VISIT_LIMIT = 100_000  # files looked at at most: a scan of / ends in bounded time
DEFAULT_PATH = "/tmp"


def scan_path(payload: Any) -> str:
    """The directory a trigger payload asks to scan: its ``path``, or the payload itself when
    it is a string, or DEFAULT_PATH without one. Anything else is refused here, in words,
    rather than failing later on a missing attribute."""
    if payload is None:
        return DEFAULT_PATH
    if isinstance(payload, str):
        path = payload
    elif isinstance(payload, dict):
        path = payload.get("path", DEFAULT_PATH)
    else:
        path = None
    if not isinstance(path, str) or not path:
        raise ValueError(
            'cleanup takes a payload {"path": DIR} (or DIR as a string), not '
            + json.dumps(payload)[:80]
        )
    return path


def scanner(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Find files under the scan root, on its filesystem, not modified for STALE_AFTER_DAYS
    (at most SCAN_LIMIT of them, looking at VISIT_LIMIT files at most)."""
    root = prompt["root"]
    cutoff = time.time() - STALE_AFTER_DAYS * 86400
    stale: list[str] = []
    visited = 0
    try:
        device = os.stat(root).st_dev
    except OSError as exc:
        ctx.log(f"cannot scan {root}: {exc.strerror}")
        return {"type": "scan_complete", "resources": []}
    for dirpath, dirs, files in os.walk(root):
        # stay on the filesystem that is full: /proc, /sys or a mounted share are not it
        dirs[:] = [d for d in dirs if _device(os.path.join(dirpath, d)) == device]
        for name in files:
            path = os.path.join(dirpath, name)
            visited += 1
            try:
                if os.stat(path, follow_symlinks=False).st_mtime < cutoff:
                    stale.append(path)
            except OSError:
                continue
        if len(stale) >= SCAN_LIMIT or visited >= VISIT_LIMIT:
            break
    ctx.log(f"found {len(stale)} stale files under {root} ({visited} looked at)")
    return {"type": "scan_complete", "resources": stale[:SCAN_LIMIT]}


def _device(path: str) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_dev
    except OSError:
        return None


def cleaner(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Delete what the scanner found; this example only counts (a dry run)."""
    resources = prompt["resources"]
    ctx.log(f"would delete {len(resources)} files (dry run)")
    return {"type": "cleanup_done", "count": len(resources), "dryRun": True}


def moderate(thread: ThreadState, event: CommandEvent) -> ModerateResult | None:
    if event["type"] == "thread_start":
        return {"role": "scanner", "prompt": {"root": scan_path(event.get("payload"))}}
    if event["type"] == "scan_complete" and event["resources"]:
        return {"role": "cleaner", "prompt": {"resources": event["resources"]}}
    return None


workflow = WorkflowDefinition(roles={"scanner": scanner, "cleaner": cleaner}, moderate=moderate)
