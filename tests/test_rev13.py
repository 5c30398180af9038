"""Review of issue 13 (the operator's toolkit), daemon side: defects found by trying it as
an operator would, from the docs. Each test fails on the code as reviewed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from support import REPO, Nerved, make_root, wait_until, write_package

from nerved import logs
from nerved.states import RunStatus

APPROVAL = (REPO / "examples" / "workflows" / "approval" / "__init__.py").read_text()
JOURNALD = REPO / "tests" / "tools" / "journald-sandbox"

# Inside the journald sandbox: a nerved whose stderr is "the journal" (JOURNAL_STREAM names
# it), a run that waits for a signal and gets it, then the run's entries as journalctl
# finds them by NERVE_RUN_ID, one JSON object per line.
DRIVER = """
    import json, os, socket, subprocess, sys, time
    root, base = sys.argv[1], sys.argv[2]
    stderr = open(os.path.join(base, "stderr"), "w")
    st = os.fstat(stderr.fileno())
    sock = os.path.join(base, "nerved.sock")
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    env.pop("NERVE_SOCKET", None)
    daemon = subprocess.Popen([sys.executable, "-m", "nerved", "--root", root, "--state-dir",
                               os.path.join(base, "state"), "--socket", sock],
                              stderr=stderr, env=env)
    def ctl(*args):
        done = subprocess.run([sys.executable, "-m", "nervectl", "--socket", sock, "--json",
                               *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    run = ctl("workflow", "trigger", "approval", "--payload", '{"change": "x"}')["runId"]
    for _ in range(100):
        if ctl("workflow", "inspect", run)["status"] == "waiting":
            break
        time.sleep(0.1)
    ctl("workflow", "signal", run, "approve", "--payload", '{"by": "ann"}')
    for _ in range(100):
        if ctl("workflow", "inspect", run)["status"] == "completed":
            break
        time.sleep(0.1)
    daemon.terminate()
    daemon.wait(30)
    subprocess.run(["journalctl", "--sync"], check=True)
    out = subprocess.run(["journalctl", f"NERVE_RUN_ID={run}", "-o", "json", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    print(json.dumps({"run": run, "entries": [json.loads(line) for line in out.splitlines()]}))
"""


def test_a_wait_and_its_end_reach_the_journal_with_the_runs_fields(tmp_path: Path) -> None:
    """README "The journal, with fields": NERVE_RUN_ID and NERVE_WORKFLOW on every line about
    a run, and on each run transition a MESSAGE_ID for the status it moves to, `waiting`
    included (systemd/nerve.catalog explains 101752a8...). But the lines of a run that
    begins to wait ("run R of W waits for signal 'approve'") and whose wait ends ("run R of
    W goes on: signal") are logged without extra= (nerved/master/workflows/waits.py): in
    `journalctl NERVE_RUN_ID=R` they are missing, and MESSAGE_ID for waiting is never sent,
    nor `started` for the waiting run that starts again."""
    if os.geteuid() != 0:
        pytest.skip("journald-sandbox needs root")
    root = make_root(tmp_path, "workflows:\n  approval: {}\n", workflows={"approval": APPROVAL})
    base = tmp_path / "d"
    (base / "state").mkdir(parents=True, mode=0o700)
    script = f"{shlex.quote(sys.executable)} -c {shlex.quote(textwrap.dedent(DRIVER))}"
    done = subprocess.run(
        [str(JOURNALD), "sh", "-c", f"cd {shlex.quote(str(REPO))} && {script} {root} {base}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode == 125:
        pytest.skip(f"journald-sandbox: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    messages = [entry["MESSAGE"] for entry in found["entries"]]
    ids = [entry.get("MESSAGE_ID") for entry in found["entries"]]
    assert any("waits for signal 'approve'" in m for m in messages), messages
    assert any("goes on" in m for m in messages), messages
    assert logs.RUN_MESSAGE_IDS[RunStatus.WAITING] in ids, messages
    assert ids.count(logs.RUN_MESSAGE_IDS[RunStatus.STARTED]) == 2, messages  # again on wake


FLAKY = """
    from nerved import WorkflowDefinition

    def works(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "works", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"works": works}, moderate=moderate)
"""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in openmetrics(text)
        for s in family.samples
    }


def test_a_roles_failure_counter_is_there_at_zero_before_its_first_failure(
    tmp_path: Path,
) -> None:
    """README "Metrics": "Every series a configured name can have is present from the start,
    at 0 ... so the first run that fails is an increase from 0, not a new series", and "a
    `step` series appears with its role's first step". nerve_step_failures_total{role} does
    not: it appears at 1 with the role's first failed try (FlowTally.failed), so
    `increase(nerve_step_failures_total[5m]) > 0` never sees the first failure of a role
    (Prometheus has no earlier sample to take the increase from)."""
    root = make_root(tmp_path, "workflows:\n  flaky: {}\n", workflows={"flaky": FLAKY})
    nerved = Nerved(root, tmp_path / "d").start()
    try:
        assert nerved.wait_run(nerved.trigger("flaky", {}))["status"] == "completed"
        found = _samples(nerved.rpc("metrics")["text"])
        step = (("role", "works"), ("workflow", "flaky"))
        assert found[("nerve_step_duration_seconds_count", step)] == 1
        assert found.get(("nerve_step_failures_total", step)) == 0, "no series at 0"
    finally:
        nerved.cleanup()


QUICK_ROLE = FLAKY


def test_the_textfile_in_a_package_does_not_reload_nerve_every_interval(tmp_path: Path) -> None:
    """`metrics.textfile` is checked for its form only (absolute, ending in .prom), so a path
    inside a package (root/workflows/w/nerve.prom) is accepted by `nerved check`; then every
    write is a change of that package's code to inotify: a reload each interval ("reloaded
    (inotify): workflow w code", its worker drained and replaced), until the autoreload
    backs off, blaming "a package that writes into its own directory". nerve's own textfile
    should be refused there, or never count as a change of the code."""
    textfile = tmp_path / "root" / "workflows" / "w" / "nerve.prom"
    config = f"workflows:\n  w: {{}}\nmetrics:\n  textfile: {textfile}\n  interval: 1s\n"
    root = make_root(tmp_path, config, workflows={"w": QUICK_ROLE})
    checked = subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert checked.returncode == 78, checked.stdout + checked.stderr
    said = checked.stdout + checked.stderr
    assert "nerve.yaml:4: metrics.textfile:" in said and "is inside the nerve root" in said, said
    # Not even through a link: a directory outside the root that leads back into it.
    (tmp_path / "out").symlink_to(tmp_path / "root" / "workflows")
    linked = f"workflows:\n  w: {{}}\nmetrics:\n  textfile: {tmp_path / 'out' / 'x.prom'}\n"
    (root / "nerve.yaml").write_text(linked)
    checked = subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert (
        checked.returncode == 78 and "is inside the nerve root" in checked.stdout + checked.stderr
    )


def test_links_between_the_shipped_docs_lead_somewhere_once_installed() -> None:
    """The .deb installs README.md and docs/*.md side by side in /usr/share/doc/nerve/
    (packaging/debian/nerve.docs: dh_installdocs drops the directory), where the units'
    Documentation=, the catalog's Support: and the man pages send the operator. There the
    README's links (docs/guide.md, docs/configuration.md...) and the guide's (../README.md)
    lead nowhere: they are right only in a checkout.

    (Fixed by shipping docs/ as /usr/share/doc/nerve/docs/, by debian/nerve.install: each
    link is followed from where its file is installed, by nerve.docs or nerve.install.)"""
    import re

    debian = REPO / "packaging" / "debian"
    doc = Path("/usr/share/doc/nerve")
    shipped = {
        doc / Path(line).name: REPO / line for line in (debian / "nerve.docs").read_text().split()
    }
    for line in (debian / "nerve.install").read_text().splitlines():
        source, _, target = line.partition(" ")
        if target.strip().startswith("usr/share/doc/nerve"):
            shipped[Path("/") / target.strip() / Path(source).name] = REPO / source
    broken = []
    for installed, source in shipped.items():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", source.read_text()):
            if "://" in target:
                continue
            lands = (installed.parent / target).resolve()
            if lands not in shipped:
                broken.append(f"{installed}: ({target}) -> {lands}")
    assert not broken, "\n".join(sorted(set(broken)))


def test_worker_restarts_counter_does_not_fall_when_a_reload_brings_new_code(
    tmp_path: Path,
) -> None:
    """README "Metrics": counters start at zero when nerved starts, as Prometheus counters
    do. nerve_worker_restarts_total is the unit supervisor's `restarts`, which a reload that
    changes the group's code sets back to 0 (`nervectl status` RESTARTS too): the counter
    falls while the same nerved runs, so `increase(nerve_worker_restarts_total[1h])`, the
    alert on a crash-looping worker, loses every restart before the deploy."""
    sense = "def compute(ctx):\n    return None\n"
    root = make_root(tmp_path, "senses:\n  s: {}\n", senses={"s": sense})
    nerved = Nerved(root, tmp_path / "d", "--no-watch").start()
    try:

        def restarts() -> float:
            found = _samples(nerved.rpc("metrics")["text"])
            return found[("nerve_worker_restarts_total", (("kind", "sense"), ("name", "default")))]

        [worker] = [w for w in nerved.rpc("status")["workers"] if w["kind"] == "sense"]
        os.kill(worker["pid"], 9)
        wait_until(lambda: restarts() == 1, what="the restart counted")
        write_package(root, "senses", "s", sense + "# a new release\n")
        assert nerved.rpc("reload")["changed"]
        assert restarts() >= 1
    finally:
        nerved.cleanup()
