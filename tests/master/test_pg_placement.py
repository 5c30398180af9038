"""Several nerved hosts on one PostgreSQL store (issue 15, SPEC v2 §9): ``placement: any``
runs shared over the hosts, takeover after a host's death, fencing of a host that lost its
lease, and the fleet view. Every host is a real nerved with its own state directory and
socket, all on one real PostgreSQL database; leases are 2 s (``$NERVE_LEASE_MS``) so that a
takeover comes within seconds.

What the roles see is the truth about concurrency: each appends ``+ <pid of its nerved>`` as
it begins and ``-`` as it ends to one file, so that the runs at once over all hosts are
counted from inside, not from what nerve says of itself.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from pg_support import lapsed, pg_unavailable
from support import wait_until

from nervectl.client import RemoteError

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

import psycopg  # after the skip: where it is missing, the module skips

LEASE_MS = "2000"
WORKFLOW = """
    import asyncio, os
    from pathlib import Path
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        with open(prompt["marks"], "a") as marks:
            marks.write(f"+ {os.getppid()} {prompt['i']}\\n")
        gate = prompt.get("gate")
        if gate:
            while not Path(gate).exists():
                await asyncio.sleep(0.01)
        await asyncio.sleep(prompt.get("sleep", 0))
        with open(prompt["marks"], "a") as marks:
            marks.write(f"- {os.getppid()} {prompt['i']}\\n")
        return {"type": "done", "nerved": os.getppid()}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "step", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def config(concurrency: int) -> str:
    return f"""
workflows:
  w: {{concurrency: {concurrency}, placement: any, idleTimeout: 1h}}
  here: {{concurrency: 4, idleTimeout: 1h}}
  d: {{concurrency: 2, overflow: drop, placement: any, idleTimeout: 1h}}
  q: {{concurrency: 1, maxQueue: 3, placement: any, idleTimeout: 1h}}
"""


def hosts(nerved_factory, dsn: str, names: str, concurrency: int = 2) -> list[Any]:
    made = []
    for name in names:
        daemon = nerved_factory(
            config(concurrency),
            workflows={"w": WORKFLOW, "here": WORKFLOW, "d": WORKFLOW, "q": WORKFLOW},
            args=("--store", dsn, "--host-id", name), name=name,
        )  # fmt: skip
        daemon.env["NERVE_LEASE_MS"] = LEASE_MS
        made.append(daemon.start())
    return made


def at_most_at_once(marks: Path) -> tuple[int, set[int]]:
    """The most roles running at once, as they wrote it, and the nerved pids they ran under."""
    running, most, pids = 0, 0, set()
    for line in marks.read_text().splitlines():
        sign, pid, _ = line.split()
        running += 1 if sign == "+" else -1
        most = max(most, running)
        pids.add(int(pid))
    return most, pids


def run_of(dsn: str, run_id: str) -> tuple[str, str | None]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT status, host FROM workflow_runs WHERE run_id = %s", (run_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), row[1]


def started_order(dsn: str) -> list[str]:
    """The runs in the order their ``started`` entries were written (claims are serialized
    per workflow, so ids are claim order)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT ref_id FROM logs WHERE source = 'workflow' AND type = 'started' ORDER BY id"
        ).fetchall()
    return [row[0] for row in rows]


def test_any_runs_spread_over_the_hosts_in_fifo_order_within_concurrency(
    nerved_factory, pg_dsn, tmp_path
):
    a, b, c = hosts(nerved_factory, pg_dsn, "abc", concurrency=2)
    marks = tmp_path / "marks"
    triggered = [
        (a if i % 3 else b).trigger("w", {"marks": str(marks), "i": i, "sleep": 0.3})
        for i in range(12)
    ]
    for run_id in triggered:
        assert c.wait_run(run_id, timeout=60)["status"] == "completed"  # seen from any host
    most, pids = at_most_at_once(marks)
    assert most <= 2, marks.read_text()
    assert len(pids) >= 2, (pids, marks.read_text())  # spread: each host's share is one slot
    assert started_order(pg_dsn) == triggered  # FIFO over every host
    runs = {run["runId"]: run for run in c.rpc("workflow.list", all=True)}
    assert {runs[r]["host"] for r in triggered} <= {"a", "b", "c"}
    assert len({runs[r]["host"] for r in triggered}) >= 2
    assert all(runs[r]["placement"] == "any" for r in triggered)


def test_kill_9_of_a_host_its_any_runs_go_on_elsewhere_its_local_runs_wait_for_it(
    nerved_factory, pg_dsn, tmp_path
):
    a, b = hosts(nerved_factory, pg_dsn, "ab", concurrency=4)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    prompt = {"marks": str(marks), "gate": str(gate)}
    # b serves w too, but its share is 2 of the 4 slots: fill b's first, so that a's claims
    # get the next two.
    mine = [a.trigger("w", {**prompt, "i": i}) for i in range(4)]
    local = a.trigger("here", {**prompt, "i": 9})
    wait_until(lambda: marks.exists() and marks.read_text().count("+") == 5, timeout=20)
    on_a = [r for r in mine if run_of(pg_dsn, r)[1] == "a"]
    assert on_a, [run_of(pg_dsn, r) for r in mine]
    a.kill()  # kill -9 of the master; its workers die with it (PR_SET_PDEATHSIG)
    with pytest.raises(RemoteError) as refused:  # its lease is live still: a drives it
        b.rpc("workflow.cancel", runId=local)
    assert "on host a" in str(refused.value)
    gate.touch()
    for run_id in mine:
        run = b.wait_run(run_id, timeout=30)
        assert run["status"] == "completed" and run["host"] == "b", run
    for run_id in on_a:  # resumed on b from their events, with a note of the takeover
        assert b.entries(run_id, "taken")[0]["payload"] == {"from": "a", "by": "b"}
    assert run_of(pg_dsn, local) == ("started", "a")  # local: it waits for its host
    a.start()
    assert a.wait_run(local, timeout=30)["status"] == "completed"


def test_a_host_frozen_past_its_lease_writes_nothing_for_the_runs_taken_over(
    nerved_factory, pg_dsn, tmp_path
):
    a, b = hosts(nerved_factory, pg_dsn, "ab", concurrency=2)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    run_id = a.trigger("w", {"marks": str(marks), "gate": str(gate), "i": 0})
    wait_until(lambda: marks.exists() and marks.read_text().count("+") == 1, timeout=20)
    assert run_of(pg_dsn, run_id) == ("started", "a")
    a.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: run_of(pg_dsn, run_id)[1] == "b", timeout=30, what="b took it over")
        wait_until(lambda: marks.read_text().count("+") == 2, timeout=20)  # b resumed it
        gate.touch()  # a's worker finishes its step too, and tells its frozen master
    finally:
        a.signal(signal.SIGCONT)
    # It stops, writing nothing: its lease is overdue (it stops before renewing), or its
    # next batch fails its fence, or (stopped in the middle of one) it finds its session
    # ended by the server.
    assert a.wait(20) == 75
    said = ("stopping before it lapses", "taken over", "closed the connection")
    assert any(words in a.log() for words in said), a.log()
    run = b.wait_run(run_id, timeout=30)
    assert run["status"] == "completed" and run["host"] == "b"
    steps = b.entries(run_id, "step_complete")
    assert [s["payload"]["event"]["nerved"] for s in steps] == [b.pid], steps


def test_the_fleet_view_lists_every_hosts_runs_with_their_host(nerved_factory, pg_dsn, tmp_path):
    """Issue 15 item 5: every host lists every host's runs, each with the host that drove it
    (a HOST column; inspect names it and the placement); ``host`` filters, in the list and
    in its count alike; a host no run has lists none (not "not found")."""
    a, b = hosts(nerved_factory, pg_dsn, "ab")
    marks = tmp_path / "marks"
    on_a = a.trigger("here", {"marks": str(marks), "i": 0})
    on_b = b.trigger("here", {"marks": str(marks), "i": 1})
    assert a.wait_run(on_a)["host"] == "a"
    assert b.wait_run(on_b)["host"] == "b"
    listed = {run["runId"]: run["host"] for run in a.rpc("workflow.list", all=True)}
    assert listed == {on_a: "a", on_b: "b"}
    assert [r["runId"] for r in a.rpc("workflow.list", all=True, host="b")] == [on_b]
    shown = a.ctl("workflow", "list", "--all")
    assert shown.returncode == 0, shown.stderr
    header = shown.stdout.splitlines()[0].split()
    assert "HOST" in header
    only_b = a.ctl("workflow", "list", "--all", "--host", "b")
    assert on_b[:8] in only_b.stdout and on_a[:8] not in only_b.stdout
    assert a.rpc("workflow.count", all=True, host="b") == {"count": 1}
    assert a.rpc("workflow.count", all=True) == {"count": 2}
    assert a.rpc("workflow.list", all=True, host="nobody") == []
    assert a.rpc("workflow.count", all=True, host="nobody") == {"count": 0}
    assert a.rpc("workflow.list", host="b") == []  # active only: b's run is done
    assert [r["host"] for r in b.ctl_json("workflow", "list", "--all", "--host", "a")] == ["a"]
    inspected = b.ctl("workflow", "inspect", on_a)
    assert inspected.returncode == 0, inspected.stderr
    fields = dict(
        line.strip().split(":", 1) for line in inspected.stdout.splitlines()
        if line.strip().startswith(("host:", "placement:"))
    )  # fmt: skip
    assert {k: v.strip() for k, v in fields.items()} == {"host": "a", "placement": "local"}


def test_one_idempotency_key_on_two_hosts_at_once_makes_one_run(nerved_factory, pg_dsn, tmp_path):
    """The same key given to two hosts in the same instant (the attacker's finding 1: one
    host's batch broke the unique index, and it stopped): one run, both answers name it."""
    import concurrent.futures

    a, b = hosts(nerved_factory, pg_dsn, "ab")
    marks = tmp_path / "marks"
    for attempt in range(10):
        for workflow in ("w", "here"):
            key = f"{workflow}-{attempt}"

            def trigger(
                daemon: Any, key: str = key, workflow: str = workflow, i: int = attempt
            ) -> str:
                answer = daemon.rpc("workflow.trigger", workflow=workflow, idempotencyKey=key,
                                    payload={"marks": str(marks), "i": i})  # fmt: skip
                return str(answer["runId"])

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                ids = set(pool.map(trigger, (a, b)))
            assert len(ids) == 1, (workflow, attempt, ids)
    for daemon in (a, b):
        assert daemon.proc.poll() is None, daemon.log()
    assert len(a.rpc("workflow.list", all=True, limit=100)) == 20


def test_overflow_and_max_queue_hold_over_every_host_for_triggers_at_once(
    nerved_factory, pg_dsn, tmp_path
):
    """Admission of an ``any`` run counts every host's runs exactly (the hosts' write lock):
    ``overflow: drop`` keeps no more than ``concurrency`` runs, ``maxQueue`` no more queued
    (the attacker's finding 2: 5 to 9 of 30 were kept, and 6 to 8 queued of a maxQueue 5)."""
    import concurrent.futures

    a, b = hosts(nerved_factory, pg_dsn, "ab")
    marks, gate = tmp_path / "marks", tmp_path / "gate"

    def trigger(workflow: str, i: int) -> str:
        daemon = (a, b)[i % 2]
        prompt = {"marks": str(marks), "gate": str(gate), "i": i}
        return str(daemon.rpc("workflow.trigger", workflow=workflow, payload=prompt)["runId"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        dropping = list(pool.map(lambda i: trigger("d", i), range(30)))
        queueing = list(pool.map(lambda i: trigger("q", i), range(30)))
    kept = [r for r in dropping if run_of(pg_dsn, r)[0] != "dropped"]
    assert len(kept) == 2, [run_of(pg_dsn, r) for r in dropping]
    wait_until(lambda: all(run_of(pg_dsn, r)[0] == "started" for r in kept), timeout=10)
    statuses = [run_of(pg_dsn, r)[0] for r in queueing]
    assert statuses.count("started") == 1 and statuses.count("queued") == 3, statuses
    assert statuses.count("dropped") == 26, statuses
    gate.touch()
    for run_id in kept + [r for r in queueing if run_of(pg_dsn, r)[0] != "dropped"]:
        assert a.wait_run(run_id, timeout=30)["status"] == "completed"
    most, _ = at_most_at_once(marks)
    assert most <= 3, marks.read_text()  # d's two and q's one


def test_a_host_whose_code_does_not_load_claims_none_of_the_runs(nerved_factory, pg_dsn, tmp_path):
    """A bad deploy on one host (its code of an ``any`` workflow raises at import) does not
    cost the fleet its share of the runs (the attacker's finding 4: it claimed its share and
    failed each); the hosts where the code loads run them all."""
    a = hosts(nerved_factory, pg_dsn, "a", concurrency=4)[0]
    b = nerved_factory(
        config(4), workflows={"w": "raise RuntimeError('broken deploy')\n", "here": WORKFLOW,
                              "d": WORKFLOW, "q": WORKFLOW},
        args=("--store", pg_dsn, "--host-id", "b"), name="b",
    )  # fmt: skip
    b.env["NERVE_LEASE_MS"] = LEASE_MS
    b.start()
    marks = tmp_path / "marks"
    ids = [(a, b)[i % 2].trigger("w", {"marks": str(marks), "i": i, "sleep": 0.2})
           for i in range(12)]  # fmt: skip
    for run_id in ids:
        run = a.wait_run(run_id, timeout=30)
        assert run["status"] == "completed" and run["host"] == "a", run
    # Nor does it keep a share of the slots (the second attacker's finding 7: the fleet's
    # throughput halved): once it found its code broken, a runs all four at once.
    gated, gate = tmp_path / "gated", tmp_path / "gate"
    held = [a.trigger("w", {"marks": str(gated), "gate": str(gate), "i": i}) for i in range(4)]
    wait_until(lambda: gated.exists() and gated.read_text().count("+") == 4, timeout=20)
    gate.touch()
    for run_id in held:
        assert a.wait_run(run_id, timeout=30)["host"] == "a"


def test_a_dead_hosts_local_run_may_be_cancelled_once_its_lease_lapsed(
    nerved_factory, pg_dsn, tmp_path
):
    """The attacker's finding 8: a dead host's local run could be cancelled nowhere. Once
    its lease has lapsed another host cancels it, fencing the dead host first: started
    again, it finds the run cancelled and drives it no more."""
    a, b = hosts(nerved_factory, pg_dsn, "ab")
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    local = a.trigger("here", {"marks": str(marks), "gate": str(gate), "i": 0})
    wait_until(lambda: marks.exists() and marks.read_text().count("+") == 1, timeout=20)
    a.kill()
    wait_until(lambda: lapsed(pg_dsn, "a"), timeout=20, what="a's lease lapsed")
    run = b.rpc("workflow.cancel", runId=local, reason="host a is gone")
    assert run["status"] == "cancelled"
    gate.touch()
    a.start()
    assert a.wait_run(local)["status"] == "cancelled"
    assert not a.entries(local, "step_complete")


def test_queued_any_runs_are_run_once_no_host_serves_their_workflow_as_any(
    nerved_factory, pg_dsn, tmp_path
):
    """The attacker's finding 5: a reload that made a workflow ``local`` on every host while
    runs of it were queued left them queued forever; a host that has it (as ``local``) now
    claims them once no live host serves it as ``any``."""
    a, b = hosts(nerved_factory, pg_dsn, "ab")
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    ids = [a.trigger("w", {"marks": str(marks), "gate": str(gate), "i": i}) for i in range(5)]
    wait_until(lambda: marks.exists() and marks.read_text().count("+") == 2, timeout=20)
    for daemon in (a, b):
        yaml = daemon.root / "nerve.yaml"
        yaml.write_text(yaml.read_text().replace("placement: any, idleTimeout", "idleTimeout"))
        assert daemon.ctl("reload").returncode == 0
    gate.touch()
    for run_id in ids:
        assert a.wait_run(run_id, timeout=30)["status"] == "completed"


def test_a_cancel_never_races_another_hosts_claim(nerved_factory, pg_dsn, tmp_path):
    """Cancels of queued ``any`` runs from one host while another claims them (the second
    attacker's finding 1: a cancel read the run before the claim committed, and was answered
    ``cancelled`` for a run the other host had started, whose role then ran to its end). A
    cancel answered is the run's end: its role, if it began, is stopped; one that another
    host started is refused, naming it."""
    import concurrent.futures

    a, b = hosts(nerved_factory, pg_dsn, "ab", concurrency=2)
    marks = tmp_path / "marks"
    ids = [a.trigger("w", {"marks": str(marks), "i": i, "sleep": 0.05}) for i in range(150)]

    def cancel(run_id: str) -> str | None:
        try:
            return str(b.rpc("workflow.cancel", runId=run_id)["status"])
        except RemoteError:
            return None  # final already, or started on a: refused

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answered = dict(zip(ids, pool.map(cancel, ids), strict=True))
    for run_id in ids:
        a.wait_run(run_id, timeout=60)
    # A role a ran to its end, for a run b answered cancelled: b cancelled a's run. (A run
    # b drove itself may end its step as b's cancel reaches its worker: that is a cancel.)
    ended_on_a = {line.split()[2] for line in marks.read_text().splitlines()
                  if line.split()[:2] == ["-", str(a.pid)]}  # fmt: skip
    ran_on = [i for i, run_id in enumerate(ids) if answered[run_id] == "cancelled"
              and str(i) in ended_on_a]  # fmt: skip
    assert not ran_on, (ran_on, marks.read_text())


def test_a_copy_of_a_hosts_state_directory_is_refused_while_it_runs(
    nerved_factory, pg_dsn, tmp_path
):
    """The second attacker's finding 5: a machine cloned with nerved's state (its state
    directory, instance token and all, and its host id) took the original's lease, and the
    two fenced each other in turns, running the same roles again and again. The copy is
    refused (75) while the original's lease is live; the original goes on."""
    import shutil

    (a,) = hosts(nerved_factory, pg_dsn, "a")
    copy = nerved_factory(config(2), workflows={"w": WORKFLOW, "here": WORKFLOW,
                                                "d": WORKFLOW, "q": WORKFLOW},
                          args=("--store", pg_dsn, "--host-id", "a"), name="copy")  # fmt: skip
    copy.state.mkdir(parents=True, mode=0o700)
    shutil.copy2(a.state / "host-instance", copy.state / "host-instance")
    copy.start(wait=False)
    assert copy.wait(30) == 75
    assert "a copy of this state directory" in copy.log()
    assert a.proc.poll() is None
    run_id = a.trigger("here", {"marks": str(tmp_path / "marks"), "i": 0})
    assert a.wait_run(run_id)["status"] == "completed"


def test_a_host_started_again_under_a_new_host_id_keeps_its_runs(nerved_factory, pg_dsn, tmp_path):
    """The second attacker's finding 6: a nerved started again on its state directory with
    another --host-id (the machine id's default replaced by a chosen one, as the docs
    advise) left its local runs to the old id, started and queued forever. They are the new
    id's now, and the old host is gone from the hosts."""
    (a,) = hosts(nerved_factory, pg_dsn, "a")
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    held = a.trigger("here", {"marks": str(marks), "gate": str(gate), "i": 0})
    wait_until(lambda: marks.exists() and marks.read_text().count("+") == 1, timeout=20)
    a.kill()
    a.extra[a.extra.index("a")] = "renamed"
    gate.touch()
    a.start()
    run = a.wait_run(held, timeout=30)
    assert run["status"] == "completed" and run["host"] == "renamed", run
    assert [h["host"] for h in a.rpc("status")["hosts"]] == ["renamed"]


def test_an_idle_host_looks_at_all_its_any_queues_in_one_read(nerved_factory, pg_dsn):
    """The second attacker's finding 9: an idle host read the database four times a second
    for each ``any`` workflow (315 transactions a second for 40 of them on two hosts). One
    read a look for all of them: 30 workflows cost what one does."""
    import time

    workflows = "\n".join(f"  w{i}: {{placement: any}}" for i in range(30))
    daemon = nerved_factory(f"workflows:\n{workflows}\n",
                            workflows={f"w{i}": WORKFLOW for i in range(30)},
                            args=("--store", pg_dsn, "--host-id", "a"))  # fmt: skip
    daemon.start()

    def transactions() -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                " WHERE datname = current_database()"
            ).fetchone()
        return int(row[0])

    before, began = transactions(), time.monotonic()
    time.sleep(3)  # measuring a rate over time: what is counted is the daemon's own
    rate = (transactions() - before) / (time.monotonic() - began)
    assert rate < 30, rate  # about 8: four looks, renewals, the takeover's look
