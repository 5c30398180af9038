"""The master imports what it runs, and nothing that only its workers or some roots need.

Every worker is forked from the master, and a forked process's resident memory counts each
page of the master's heap again: a module the master imports without running it is paid once
per process of the tree (issue 14: the tree's RSS). Held here by the modules a real nerved's
master had imported when it exited, after a sense group's worker and a workflow's worker ran,
a run completed, a reload and the control methods those take, on a root with no cron
reflex, no metrics, started with ``--no-watch``.
"""

from __future__ import annotations

import sys

from support import Nerved, wait_until

# nerved as `python -m nerved` runs it, writing the master's sys.modules when it exits. The
# workers it forks end in os._exit: atexit runs in the master alone.
RECORDING = """
import atexit, os, sys
path = os.environ.pop("NERVE_TEST_MODULES")
atexit.register(lambda: open(path, "w").write("\\n".join(sorted(sys.modules))))
from nerved import early
early.hold()
from nerved.cli import main
raise SystemExit(main())
"""

# (module, why the master must not import it)
NOT_IN_THE_MASTER = (
    ("asyncio", "a worker's event loop: imported by the worker after the fork"),
    ("nerved.worker.sense", "a sense group's worker (nerved.worker.sense_main)"),
    ("nerved.worker.workflow", "a workflow's worker (nerved.worker.workflow_main)"),
    ("nerved.worker.replay", "the replay check's child"),
    ("nerved.worker.port", "a worker's end of the channel"),
    ("nerved.code.importing", "imports user code, which the master never does"),
    ("nerved.api", "what user code imports"),
    ("importlib.abc", "nerved.code.importing's, with tempfile, random and shutil"),
    ("shutil", "argparse's terminal width (nerved.cli) and tempfile's"),
    ("hashlib", "package digests are BLAKE2b (nerved.code.reading)"),
    ("uuid", "run ids are made without it (nerved.store.refs)"),
    ("difflib", "a did-you-mean hint in an error only"),
    ("cronsim", "cron reflexes only"),
    ("zoneinfo", "cron reflexes only"),
    ("inotify_simple", "a daemon that watches its root only"),
    ("subprocess", "inotify_simple's ctypes.util, and timebox's on an old glibc, only"),
    ("prometheus_client", "the first metrics asked for only"),
    ("psycopg", "a PostgreSQL store only (nerved.store.postgres)"),
    ("nerved.store.postgres", "a PostgreSQL store only"),
    ("tabulate", "nervectl's tables"),
    ("nervectl", "the client"),
)

SENSE = """
    def compute(ctx):
        return {"ok": True}
"""

WORKFLOW = """
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        return {"role": "step", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def test_the_master_imports_nothing_only_its_workers_or_other_roots_need(nerved_factory, tmp_path):
    daemon: Nerved = nerved_factory(
        """
        senses:
          probe: {}
        workflows:
          w: {}
        reflexes:
          - {kind: sense, sense: probe, interval: 1h}
        """,
        {"probe": SENSE},
        {"w": WORKFLOW},
        args=("--no-watch",),
    )
    record = tmp_path / "modules.txt"
    daemon.command = [sys.executable, "-c", RECORDING]
    daemon.env = {"NERVE_TEST_MODULES": str(record)}
    daemon.start()
    run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    assert daemon.rpc("workflow.wait", runId=run_id)["status"] == "completed"
    wait_until(lambda: daemon.sense("probe")["computes"] >= 1, what="the sense's compute")
    daemon.rpc("reload")
    status = daemon.rpc("status")
    assert {w["kind"] for w in status["workers"] if w["pid"] is not None} == {"sense", "workflow"}
    assert daemon.stop() == 0
    modules = set(record.read_text().split())
    assert {"nerved.master.daemon", "yaml", "sqlite3", "ssl"} <= modules  # the master's, whole
    held = [f"{name} ({why})" for name, why in NOT_IN_THE_MASTER if name in modules]
    assert not held, "the master imported:\n" + "\n".join(held)
