"""``workflow.inspect`` answers a bounded page (issue 14), through a real nerved: the newest
100 entries of a long run by default, with ``earlier`` and ``more`` to page on as
``logs.query`` pages (``limit``, ``afterId``, ``beforeId``); a short run whole, as before
there were pages; the run's own fields of the whole run whatever the page; and
``nervectl workflow inspect`` showing the page and how to see the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from support import Nerved, waiting

from nervectl.client import RemoteError

STEPS = 150  # a run of 152 entries: started, the steps, completed (or waiting, then more)

LONG = f"""
    from nerved import WorkflowDefinition, wait_for

    def step(prompt, ctx):
        return {{"type": "stepped", "n": prompt}}

    def moderate(thread, event):
        kind = event["type"]
        done = sum(1 for e in thread.events if e["type"] == "stepped")
        if kind in ("thread_start", "stepped") and done < {STEPS}:
            return {{"role": "step", "prompt": done}}
        options = thread.events[0]["payload"] or {{}}
        if kind == "stepped" and options.get("wait"):
            return wait_for("go")
        return None

    workflow = WorkflowDefinition(roles={{"step": step}}, moderate=moderate)
"""

SHORT = """
    from nerved import WorkflowDefinition

    def step(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        return {"role": "step", "prompt": 1} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""

CONFIG = "workflows:\n  long: {}\n  short: {}\n"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from support import make_root

    base = tmp_path_factory.mktemp("pages")
    daemon = Nerved(make_root(base, CONFIG, workflows={"long": LONG, "short": SHORT}), base)
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="module")
def long_run(daemon: Nerved) -> str:
    run_id = daemon.trigger("long")
    assert daemon.wait_run(run_id, timeout=60)["status"] == "completed"
    return run_id


def every_id(daemon: Nerved, run_id: str) -> list[int]:
    """The run's entries, from logs.query (which pages on its own terms)."""
    ids: list[int] = []
    while True:
        page = daemon.rpc("logs.query", runId=run_id, afterId=ids[-1] if ids else 0, limit=50)
        if not page:
            return ids
        ids += [e["id"] for e in page]


def ids_of(answer: dict[str, Any]) -> list[int]:
    return [e["id"] for e in answer["events"]]


def test_a_long_run_shows_its_newest_page_with_a_cursor(daemon: Nerved, long_run: str) -> None:
    ids = every_id(daemon, long_run)
    assert len(ids) == STEPS + 2
    page = daemon.rpc("workflow.inspect", runId=long_run)
    assert ids_of(page) == ids[-100:]
    assert page["earlier"] == len(ids) - 100 and page["more"] is False
    assert page["events"][-1]["type"] == "completed"
    # The run's fields are the whole run's, whatever the page.
    assert page["status"] == "completed" and page["steps"] == STEPS
    first = daemon.rpc("workflow.inspect", runId=long_run, afterId=0, limit=1)
    assert [e["type"] for e in first["events"]] == ["started"]
    assert first["earlier"] == 0 and first["more"] is True
    assert first["steps"] == STEPS and first["status"] == "completed"
    assert {k: v for k, v in first.items() if k not in ("events", "earlier", "more")} == {
        k: v for k, v in page.items() if k not in ("events", "earlier", "more")
    }


def test_the_cursor_walks_every_entry_exactly_once(daemon: Nerved, long_run: str) -> None:
    ids = every_id(daemon, long_run)
    back: list[int] = []
    page = daemon.rpc("workflow.inspect", runId=long_run, limit=40)
    while True:  # paging back from the newest, with beforeId
        back[:0] = ids_of(page)
        if not page["earlier"]:
            break
        assert page["earlier"] == ids.index(page["events"][0]["id"])
        page = daemon.rpc("workflow.inspect", runId=long_run, beforeId=back[0], limit=40)
    assert back == ids

    forward: list[int] = []
    page = daemon.rpc("workflow.inspect", runId=long_run, afterId=0, limit=40)
    while True:  # paging on from the start, with afterId
        forward += ids_of(page)
        if not page["more"]:
            break
        page = daemon.rpc("workflow.inspect", runId=long_run, afterId=forward[-1], limit=40)
    assert forward == ids
    assert (
        daemon.rpc("workflow.inspect", runId=long_run, limit=10**6)["events"][0]["id"]
        == (ids[-10_000:][0])
    )


def test_a_short_run_answers_as_it_did_before_pages(daemon: Nerved) -> None:
    run_id = daemon.trigger("short")
    daemon.wait_run(run_id)
    answer = daemon.rpc("workflow.inspect", runId=run_id)
    assert [e["type"] for e in answer["events"]] == ["started", "step_complete", "completed"]
    assert answer["earlier"] == 0 and answer["more"] is False
    shown = daemon.ctl_json("workflow", "inspect", run_id)
    assert "earlier" not in shown and "more" not in shown
    assert shown["events"] == answer["events"]
    human = daemon.ctl("workflow", "inspect", run_id)
    assert human.returncode == 0 and "not shown" not in human.stdout


def test_a_page_leaves_pending_signals_and_the_wait_of_the_whole_run(daemon: Nerved) -> None:
    run_id = daemon.trigger("long", {"wait": True})
    waiting(daemon, run_id, timeout=60)
    daemon.rpc("workflow.signal", runId=run_id, name="other", payload={"n": 1})
    oldest = daemon.rpc("workflow.inspect", runId=run_id, afterId=0, limit=1)
    assert [e["type"] for e in oldest["events"]] == ["started"] and oldest["more"] is True
    assert oldest["status"] == "waiting" and oldest["waitFor"] == "go"
    assert oldest["steps"] == STEPS and oldest["progress"]["step"] == STEPS + 1
    assert [s["name"] for s in oldest["pendingSignals"]] == ["other"]
    newest = daemon.rpc("workflow.inspect", runId=run_id, limit=2)
    assert [e["type"] for e in newest["events"]] == ["waiting", "signal"]
    assert newest["earlier"] == STEPS + 1  # started and the steps
    daemon.rpc("workflow.cancel", runId=run_id, reason="done with it")


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"afterId": -1}, "afterId"),
        ({"beforeId": -1}, "beforeId"),
        ({"beforeId": 2**63}, "beforeId"),
        ({"beforeId": "1"}, "beforeId"),
        ({"page": 2}, "page"),
    ],
)
def test_bad_paging_params_are_refused(
    daemon: Nerved, long_run: str, params: dict[str, Any], name: str
) -> None:
    with pytest.raises(RemoteError) as caught:
        daemon.rpc("workflow.inspect", runId=long_run, **params)
    assert caught.value.code == -32602 and repr(name) in caught.value.message


def test_nervectl_shows_the_page_and_how_to_see_more(daemon: Nerved, long_run: str) -> None:
    ids = every_id(daemon, long_run)
    human = daemon.ctl("workflow", "inspect", long_run[:8])
    assert human.returncode == 0, human.stderr
    table = human.stdout.split("ID ", 1)[1].splitlines()[2:]  # past the header and its rule
    rows = [line for line in table if line[:1].isdigit() and "not shown" not in line]
    assert [int(line.split()[0]) for line in rows] == ids[-100:]
    hint = f"{len(ids) - 100} earlier events not shown (--before {ids[-100]} shows the ones"
    assert hint in human.stdout and "--all every event" in human.stdout
    # The timeline numbers the page's steps as the run does: its last is step STEPS.
    timeline = human.stdout.split("TIMELINE\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert timeline[-1].split()[0] == str(STEPS)
    assert int(timeline[0].split()[0]) > 1

    older = daemon.ctl("workflow", "inspect", long_run, "--before", str(ids[-100]), "--limit", "5")
    assert older.returncode == 0, older.stderr
    assert f"more events after {ids[-101]} not shown (--after {ids[-101]}" in older.stdout
    assert "TIMELINE" not in older.stdout  # a page in the middle: its steps' numbers unknown

    every = daemon.ctl_json("workflow", "inspect", long_run, "--all")
    assert [e["id"] for e in every["events"]] == ids
    assert "earlier" not in every and "more" not in every
    page = daemon.ctl_json("workflow", "inspect", long_run, "--after", str(ids[9]), "--limit", "3")
    assert [e["id"] for e in page["events"]] == ids[10:13]
    assert page["earlier"] == 10 and page["more"] is True
    raw = daemon.ctl("--json", "workflow", "inspect", long_run)
    assert json.loads(raw.stdout)["earlier"] == len(ids) - 100  # one JSON document

    refused = daemon.ctl("workflow", "inspect", long_run, "--all", "--limit", "5")
    assert refused.returncode == 2 and "--all" in refused.stderr


def test_nervectl_reads_a_page_across_answers(
    daemon: Nerved, long_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 10,000 (or past the 4 MiB budget) a page takes several answers: nervectl reads
    them all, forward and back, as one page (here through a client limited to 7 a call)."""
    from nervectl import history

    monkeypatch.setattr(history, "MAX_QUERY_LIMIT", 7)
    ids = every_id(daemon, long_run)
    with daemon.client() as client:
        ctx: Callable[..., Any] = client.call

        class Ctx:
            def call(self, method: str, params: dict[str, Any]) -> Any:
                return ctx(method, params)

        run = history.inspect_run(Ctx(), long_run, 30)  # type: ignore[arg-type]
        assert [e["id"] for e in run["events"]] == ids[-30:]
        assert run["earlier"] == len(ids) - 30
        run = history.inspect_run(Ctx(), long_run, whole=True)  # type: ignore[arg-type]
        assert [e["id"] for e in run["events"]] == ids and run["earlier"] == 0
        run = history.inspect_run(Ctx(), long_run, 20, after=ids[4])  # type: ignore[arg-type]
        assert [e["id"] for e in run["events"]] == ids[5:25] and run["more"] is True
