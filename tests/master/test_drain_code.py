"""What a run held by a worker drained for a code change runs: the old code, to its end (or
until drainTimeout). The guide said such runs "finish their step and go on in the new
code"; the drained worker's threads run on (``stop``: exit once every thread is done)."""

from __future__ import annotations

from pathlib import Path

from support import Nerved, wait_until

TWO_STEPS = """
    import pathlib, time
    from nerved import WorkflowDefinition

    def first(prompt, ctx):
        while not pathlib.Path(prompt["go"]).exists():
            time.sleep(0.005)
        return {"type": "first", "code": CODE}

    def second(prompt, ctx):
        return {"type": "second", "code": CODE}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "first", "prompt": event["payload"]}
        if event["type"] == "first":
            return {"role": "second", "prompt": None}
        return None

    CODE = 1
    workflow = WorkflowDefinition(roles={"first": first, "second": second}, moderate=moderate)
"""


def test_a_run_in_a_worker_drained_for_new_code_runs_on_in_the_old(
    nerved_factory, tmp_path: Path
) -> None:
    daemon: Nerved = nerved_factory(
        "workflows:\n  w: {drainTimeout: 30s}\n", workflows={"w": TWO_STEPS},
        args=("--no-watch",),
    )  # fmt: skip
    daemon.start()
    go = tmp_path / "go"
    held = daemon.trigger("w", {"go": str(go)})
    wait_until(lambda: "w" in daemon.worker_pids("workflow"), what="its worker")
    package = daemon.root / "workflows" / "w" / "__init__.py"
    package.write_text(package.read_text().replace("CODE = 1", "CODE = 2"))
    assert daemon.rpc("reload") == {"changed": ["workflow w code"]}
    go.touch()
    run = daemon.wait_run(held)
    assert run["status"] == "completed" and run["attempts"] == 0, run
    codes = [s["payload"]["event"]["code"] for s in daemon.entries(held, "step_complete")]
    assert codes == [1, 1]  # its next step too: the old code, in the drained worker
    fresh = daemon.trigger("w", {"go": str(go)})
    assert daemon.wait_run(fresh)["status"] == "completed"
    codes = [s["payload"]["event"]["code"] for s in daemon.entries(fresh, "step_complete")]
    assert codes == [2, 2]
