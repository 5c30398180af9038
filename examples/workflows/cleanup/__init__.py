"""Clean up after a full disk: scan for stale files, then delete them.

Started by the `disk-alert` sense (see nerve.yaml) with its signal as the trigger payload,
or by hand: `nervectl workflow trigger cleanup --payload '{"path": "/tmp", "used": 0.95}'`.
It runs with `overflow: drop`: one cleanup at a time is enough, and a crashed one is simply
started afresh. The example only *reports* what it would delete, so it is safe to run.
"""

from __future__ import annotations

import os
import time
from typing import Any

from nerved import CommandEvent, ModerateResult, ThreadState, WorkflowContext, WorkflowDefinition

STALE_AFTER_DAYS = 30
SCAN_LIMIT = 1000


def scanner(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Find files under the scan root not modified for STALE_AFTER_DAYS (at most SCAN_LIMIT)."""
    root = prompt.get("root", "/tmp")
    cutoff = time.time() - STALE_AFTER_DAYS * 86400
    stale: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if os.stat(path, follow_symlinks=False).st_mtime < cutoff:
                    stale.append(path)
            except OSError:
                continue
            if len(stale) >= SCAN_LIMIT:
                break
    ctx.log(f"found {len(stale)} stale files under {root}")
    return {"type": "scan_complete", "resources": stale}


def cleaner(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Delete what the scanner found; this example only counts (a dry run)."""
    resources = prompt["resources"]
    ctx.log(f"would delete {len(resources)} files (dry run)")
    return {"type": "cleanup_done", "count": len(resources), "dryRun": True}


def moderate(thread: ThreadState, event: CommandEvent) -> ModerateResult | None:
    if event["type"] == "thread_start":
        payload = event.get("payload") or {}
        return {"role": "scanner", "prompt": {"root": payload.get("scanRoot", "/tmp")}}
    if event["type"] == "scan_complete" and event["resources"]:
        return {"role": "cleaner", "prompt": {"resources": event["resources"]}}
    return None


workflow = WorkflowDefinition(roles={"scanner": scanner, "cleaner": cleaner}, moderate=moderate)
