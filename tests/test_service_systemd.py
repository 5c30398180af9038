"""nerved as a systemd service, under a real systemd (PID 1 in a sandbox) and journald.

Each test boots its own sandbox with the project's unit files (plus a drop-in that points
them at a test root and a venv the ``nerve`` user can run) and drives it with systemctl,
nervectl and journalctl inside.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox import Sandbox, ensure_nerve_user, service_venv, unavailable
from support import CREDENTIAL_READER, FORKER, LEAKER, REPO, wait_until

pytestmark = pytest.mark.systemd

WHY_NOT = unavailable()

GATED = """
    import asyncio, os
    from nerved import WorkflowDefinition

    async def work(prompt, ctx):
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.02)
        return {"type": "done"}

    def boom(prompt, ctx):
        raise RuntimeError("deliberate failure")

    def moderate(thread, event):
        if event["type"] == "thread_start":
            payload = event["payload"] or {}
            return {"role": "boom" if payload.get("fail") else "work", "prompt": payload}
        return None

    workflow = WorkflowDefinition(roles={"work": work, "boom": boom}, moderate=moderate)
"""
CONFIG = "workflows:\n  g: {concurrency: 4}\n"


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    ensure_nerve_user()
    box = Sandbox(f"nt-{os.getpid()}-{request.node.name[5:30]}".replace("[", "-").replace("]", ""))
    try:
        yield box
    finally:
        box.stop()


def test_start_waits_for_ready_and_nervectl_works(sandbox: Sandbox) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}).start()
    sandbox.systemctl("start", "nerved.service")  # returns once READY=1 arrived
    assert sandbox.state() == "active"
    status = sandbox.nervectl_json("status")
    assert status["pid"] == sandbox.main_pid()
    assert sandbox.run("stat", "-c", "%a %U %G", "/run/nerve/nerved.sock").stdout.split() == [
        "660", "nerve", "nerve"
    ]  # fmt: skip
    assert sandbox.run("ps", "-o", "user=", "-p", str(status["pid"])).stdout.strip() == "nerve"
    shown = sandbox.systemctl("show", "-p", "StatusText", "--value", "nerved.service").stdout
    assert "0 senses in 0 groups, 1 workflow; threads: 0 active, 0 queued" in shown, shown


def test_kill_9_of_the_main_pid_restarts_it_and_runs_complete(sandbox: Sandbox) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}).start()
    sandbox.systemctl("start", "nerved.service")
    gate = sandbox.state_dir / "gate"
    run = sandbox.nervectl_json("workflow", "trigger", "g", "--payload", f'{{"gate": "{gate}"}}')
    old = sandbox.main_pid()
    sandbox.run("kill", "-9", str(old))
    new = sandbox.wait_new_main_pid(old)
    assert new != old
    assert sandbox.nervectl_json("workflow", "inspect", run["runId"])["status"] == "started"
    gate.touch()  # the resumed thread's step can now finish
    wait_until(
        lambda: sandbox.nervectl_json("workflow", "inspect", run["runId"])["status"] == "completed",
        what="the run to complete after the restart",
    )
    assert "recovered 1 started" in str([e.get("MESSAGE") for e in sandbox.journal()])


def test_a_stopped_main_loop_is_restarted_by_the_watchdog(sandbox: Sandbox) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}, watchdog="2s").start()
    sandbox.systemctl("start", "nerved.service")
    old = sandbox.main_pid()
    sandbox.run("kill", "-STOP", str(old))
    new = sandbox.wait_new_main_pid(old, timeout=30)
    assert new != old
    assert sandbox.nervectl_json("status")["pid"] == new
    result = sandbox.systemctl("show", "-p", "NRestarts", "--value", "nerved.service").stdout
    assert int(result) >= 1


def test_systemctl_reload_applies_a_changed_nerve_yaml(sandbox: Sandbox) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}).start()
    sandbox.systemctl("start", "nerved.service")
    pid = sandbox.main_pid()
    (sandbox.root / "nerve.yaml").write_text("workflows:\n  g: {concurrency: 7}\n")
    sandbox.systemctl("reload", "nerved.service")  # waits for nerved's answer
    assert sandbox.main_pid() == pid
    assert any("reloaded (nervectl reload" in str(e.get("MESSAGE")) for e in sandbox.journal())


def test_systemctl_reload_of_a_broken_config_fails_and_keeps_the_old_one(
    sandbox: Sandbox,
) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}).start()
    sandbox.systemctl("start", "nerved.service")
    pid = sandbox.main_pid()
    # Applied, this would remove g: it names a workflow that has no package.
    (sandbox.root / "nerve.yaml").write_text("workflows:\n  h: {}\n")
    done = sandbox.systemctl("reload", "nerved.service", check=False)
    assert done.returncode != 0, done
    assert sandbox.main_pid() == pid and sandbox.state() == "active"
    done = sandbox.nervectl(
        "--json", "workflow", "trigger", "g", "--payload", '{"fail": true}', "--wait", check=False
    )
    assert json.loads(done.stdout)["status"] == "failed"  # g is still there: the old one stays
    journal = sandbox.journal()
    messages = [str(e.get("MESSAGE")) for e in journal]
    refused = [m for m in messages if "configuration not reloaded (nervectl reload)" in m]
    assert refused and "workflows.h" in refused[0], messages
    # nervectl's own words, from ExecReload=, are the unit's too
    said = [str(e.get("MESSAGE")) for e in journal if e.get("_COMM") == "nervectl"]
    assert any("not reloaded" in m and "workflows.h" in m for m in said), messages
    assert "Reload failed for nerved.service" in str(messages)


def test_socket_activation_starts_nerved_on_the_first_call(sandbox: Sandbox) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}).start()
    sandbox.systemctl("start", "nerved.socket")
    assert sandbox.state() == "inactive"
    status = sandbox.nervectl_json("status")  # waits in the socket while nerved starts
    assert sandbox.state() == "active"
    assert status["pid"] == sandbox.main_pid()
    # A restart keeps the socket: calls made meanwhile wait instead of failing.
    sandbox.systemctl("restart", "--no-block", "nerved.service")
    assert sandbox.nervectl_json("status")["pid"] != status["pid"]


def test_journal_has_warnings_at_their_priority(sandbox: Sandbox) -> None:
    sandbox.prepare(CONFIG, {"g": GATED}).start()
    sandbox.systemctl("start", "nerved.service")
    done = sandbox.nervectl(
        "--json", "workflow", "trigger", "g", "--payload", '{"fail": true}', "--wait", check=False
    )
    assert done.returncode == 1  # a --wait'ed run that did not complete
    run = json.loads(done.stdout)
    assert run["status"] == "failed"
    warnings = sandbox.journal("-p", "warning")
    failed = [e for e in warnings if run["runId"] in str(e.get("MESSAGE"))]
    assert failed and all(e["PRIORITY"] == "4" for e in failed), warnings
    assert (
        "of g failed: role 'boom' raised RuntimeError: deliberate failure" in failed[0]["MESSAGE"]
    )
    infos = sandbox.journal("-p", "info")
    started = [
        e for e in infos if run["runId"] in str(e.get("MESSAGE")) and "started" in e["MESSAGE"]
    ]
    assert started and started[0]["PRIORITY"] == "6"


CHATTY = """
    import logging
    from nerved import WorkflowDefinition

    def talk(prompt, ctx):
        logging.getLogger("user").warning("a role of run %s speaks", ctx.run_id)
        raise RuntimeError("deliberate failure")

    def moderate(thread, event):
        return {"role": "talk", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"talk": talk}, moderate=moderate)
"""

RUN_MESSAGE_IDS = {
    "started": "04b0d652f8e94a73af843d33818a52b7",
    "failed": "75f6823d764d4f339109b51d09dd85f7",
}


def test_journalctl_finds_a_runs_lines_by_its_id(sandbox: Sandbox) -> None:
    sandbox.prepare("workflows:\n  c: {}\n", {"c": CHATTY}).start()
    sandbox.systemctl("start", "nerved.service")
    runs = [
        json.loads(sandbox.nervectl("--json", "workflow", "trigger", "c", "--wait",
                                    check=False).stdout)
        for _ in range(2)
    ]  # fmt: skip
    run_id = runs[0]["runId"]
    mine = sandbox.journal(f"NERVE_RUN_ID={run_id}")
    assert {e["NERVE_WORKFLOW"] for e in mine} == {"c"}
    by_id = {e.get("MESSAGE_ID"): e for e in mine}
    started, failed = by_id[RUN_MESSAGE_IDS["started"]], by_id[RUN_MESSAGE_IDS["failed"]]
    assert started["MESSAGE"] == f"run {run_id} of c started" and started["PRIORITY"] == "6"
    assert failed["MESSAGE"].startswith(f"run {run_id} of c failed: role 'talk' raised")
    assert failed["PRIORITY"] == "4"
    assert failed["_PID"] == str(sandbox.main_pid())
    assert all(runs[1]["runId"] not in e["MESSAGE"] for e in mine)
    # The worker's own lines (user code's logging too) name its workflow.
    spoken = [e for e in sandbox.journal("NERVE_WORKFLOW=c") if "speaks" in e["MESSAGE"]]
    assert len(spoken) == 2 and spoken[0]["PRIORITY"] == "4", spoken
    assert spoken[0]["MESSAGE"] == f"workflow:c: a role of run {run_id} speaks"
    assert spoken[0]["_PID"] != str(sandbox.main_pid())
    assert spoken[0]["_SYSTEMD_UNIT"] == "nerved.service"


def test_a_role_reads_a_credential_systemd_loads(sandbox: Sandbox) -> None:
    secret = sandbox.dir / "secret"
    sandbox.prepare("workflows:\n  k: {}\n", {"k": CREDENTIAL_READER},
                    service=f"LoadCredential=token:{secret}\n")  # fmt: skip
    secret.write_text("s3cret\n")
    secret.chmod(0o600)  # root's: systemd reads it, and hands nerve a copy of its own
    probe = "ExecStart=/bin/sh -c 'test -r \"$CREDENTIALS_DIRECTORY/token\"'"
    (sandbox.units / "probe.service").write_text(
        f"[Service]\nType=oneshot\nLoadCredential=token:{secret}\n{probe}\n"
    )
    sandbox.start()
    if sandbox.systemctl("start", "probe.service", check=False).returncode != 0:
        # systemd 252 in this sandbox (nested namespaces) mounts no credentials for any unit,
        # even a plain oneshot as root: tests/test_credentials.py covers nerve's part.
        pytest.skip("this systemd sandbox delivers no LoadCredential= credentials")
    sandbox.systemctl("start", "nerved.service")
    run = sandbox.nervectl_json("workflow", "trigger", "k", "--wait")
    assert run["status"] == "completed", run
    events = sandbox.nervectl_json("workflow", "inspect", run["runId"])["events"]
    [read] = [e["payload"]["event"] for e in events if e["type"] == "step_complete"]
    assert read["token"] == "s3cret\n"
    assert "'absent'" in read["missing"]


SERVICE_CGROUP = "/system.slice/nerved.service"


def cgroup_of(sandbox: Sandbox, pid: int) -> str:
    """A process's cgroup v2 path as the service sees it (``exec`` is not in the sandbox's
    cgroup namespace, so what it reads starts with the sandbox's own cgroup)."""
    lines = sandbox.run("cat", f"/proc/{pid}/cgroup").stdout.splitlines()
    path = next(line[3:] for line in lines if line.startswith("0::"))
    return path[path.find("/system.slice/") :]


def running(sandbox: Sandbox, pid: int) -> bool:
    """Whether a process of the sandbox is alive (a zombie is not)."""
    done = sandbox.run("cat", f"/proc/{pid}/stat", check=False)
    return done.returncode == 0 and done.stdout.rsplit(")", 1)[1].split()[0] != "Z"


def test_each_worker_is_a_cgroup_that_ends_with_all_it_started(sandbox: Sandbox) -> None:
    quiet = "def compute(ctx):\n    return None\n"
    sandbox.prepare(
        "workflows:\n  f: {}\nsenses:\n  s: {group: probes}\n", {"f": FORKER}, senses={"s": quiet}
    ).start()
    sandbox.systemctl("start", "nerved.service")
    assert cgroup_of(sandbox, sandbox.main_pid()) == f"{SERVICE_CGROUP}/master"
    status = sandbox.nervectl_json("status")
    assert status["containment"] == "cgroup"
    [sense] = [w["pid"] for w in status["workers"] if w["kind"] == "sense"]
    assert cgroup_of(sandbox, sense) == f"{SERVICE_CGROUP}/sense-probes-{sense}"
    started = f"containment: a cgroup per worker under {SERVICE_CGROUP};"
    assert any(str(e.get("MESSAGE")).startswith(started) for e in sandbox.journal())

    def run_forker(name: str) -> tuple[int, int, int]:
        """A run of f whose role starts a child and a daemon that left its process group."""
        directory = sandbox.state_dir / name
        directory.mkdir()
        os.chown(directory, pwd.getpwnam("nerve").pw_uid, -1)
        payload = json.dumps({"dir": str(directory), "setsid": True})
        run = sandbox.nervectl_json("workflow", "trigger", "f", "--payload", payload, "--wait")
        assert run["status"] == "completed", run
        workers = sandbox.nervectl_json("status")["workers"]
        [worker] = [w["pid"] for w in workers if w["kind"] == "workflow"]
        child, daemon = (int((directory / n).read_text()) for n in ("child", "daemon"))
        return worker, child, daemon

    unit = run_forker("first")
    cgroup = f"{SERVICE_CGROUP}/workflow-f-{unit[0]}"
    assert [cgroup_of(sandbox, pid) for pid in unit] == [cgroup] * 3

    # A drain (changed code): the old worker leaves, and its cgroup with all in it.
    (sandbox.root / "workflows" / "f" / "__init__.py").write_text(
        textwrap.dedent(FORKER) + "# changed\n"
    )
    sandbox.systemctl("reload", "nerved.service")
    wait_until(
        lambda: not any(running(sandbox, pid) for pid in unit),
        what="the drained worker's cgroup to be killed",
    )
    wait_until(
        lambda: sandbox.run("test", "-e", f"/sys/fs/cgroup{cgroup}", check=False).returncode,
        what="the drained worker's cgroup to be removed",
    )

    # A stop: nerved ends each unit itself before it exits (systemd would, after it).
    unit = run_forker("second")
    assert all(running(sandbox, pid) for pid in unit)
    sandbox.systemctl("stop", "nerved.service")
    assert not any(running(sandbox, pid) for pid in unit)
    killed_by_systemd = [
        e["MESSAGE"] for e in sandbox.journal() if "Killing process" in str(e.get("MESSAGE"))
    ]
    assert killed_by_systemd == []


# A role whose two children leave its cgroup (and process group), as code running as nerved's
# user can: one into a cgroup it makes beside the workers', one into the master's. Their pids go to the payload's
# ``dir``.
ESCAPER = """
    import os, time
    from nerved import WorkflowDefinition
    from nerved.containment.cgroups import _cgroup2_mount

    def leave(into, pidfile, make=False):
        if os.fork():
            return
        try:
            os.setsid()  # out of the worker's process group too: only its cgroup held it
            if make:
                os.mkdir(into)
            with open(into + "/cgroup.procs", "w") as procs:
                procs.write(str(os.getpid()))
            with open(pidfile + ".tmp", "w") as file:
                file.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            while True:
                time.sleep(60)
        finally:
            os._exit(0)

    def escape(prompt, ctx):
        with open("/proc/self/cgroup") as file:
            mine = next(line[3:].strip() for line in file if line.startswith("0::"))
        service = _cgroup2_mount() + os.path.dirname(mine)
        leave(service + "/elsewhere", prompt["dir"] + "/made", make=True)
        leave(service + "/master", prompt["dir"] + "/master")
        while not all(os.path.exists(prompt["dir"] + "/" + n) for n in ("made", "master")):
            time.sleep(0.01)
        return {"type": "left"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "escape", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"escape": escape}, moderate=moderate)
"""


def test_processes_that_left_their_workers_cgroup_die_at_its_end(sandbox: Sandbox) -> None:
    """Issue 9 (1): nothing unprivileged stops code running as nerved's user from moving a
    process out of its worker's cgroup (it owns the delegated files); the end of the worker
    finds it in a cgroup nerved did not make, or in the master's, and kills it."""
    sandbox.prepare("workflows:\n  e: {idleTimeout: 300ms}\n", {"e": ESCAPER}).start()
    sandbox.systemctl("start", "nerved.service")
    directory = sandbox.state_dir / "pids"
    directory.mkdir()
    os.chown(directory, pwd.getpwnam("nerve").pw_uid, -1)
    payload = json.dumps({"dir": str(directory)})
    run = sandbox.nervectl_json("workflow", "trigger", "e", "--payload", payload, "--wait")
    assert run["status"] == "completed", run
    made, master = (int((directory / n).read_text()) for n in ("made", "master"))
    assert cgroup_of(sandbox, master) == f"{SERVICE_CGROUP}/master"
    assert cgroup_of(sandbox, made) == f"{SERVICE_CGROUP}/elsewhere"
    wait_until(
        lambda: not (running(sandbox, made) or running(sandbox, master)),
        what="the processes that left to be killed when the idle worker ended",
    )
    wait_until(
        lambda: (
            sandbox.run(
                "test", "-e", f"/sys/fs/cgroup{SERVICE_CGROUP}/elsewhere", check=False
            ).returncode
        ),
        what="the cgroup user code made to be removed",
    )
    messages = [str(e.get("MESSAGE")) for e in sandbox.journal("-p", "warning")]
    assert any(f"{SERVICE_CGROUP}/elsewhere, not made by nerved" in m for m in messages)
    assert any(f"killed process {master} found in the master's cgroup" in m for m in messages), (
        messages
    )
    assert sandbox.nervectl_json("status")["pid"] == sandbox.main_pid()  # the master stays


def test_memory_max_holds_a_workers_cgroup(sandbox: Sandbox) -> None:
    sandbox.prepare("workflows:\n  hog: {memoryMax: 100M, maxAttempts: 1}\n", {"hog": LEAKER})
    sandbox.start()
    sandbox.systemctl("start", "nerved.service")
    done = sandbox.nervectl(
        "--json", "workflow", "trigger", "hog", "--payload", '{"in_child": true}', "--wait",
        check=False,
    )  # fmt: skip
    run = json.loads(done.stdout)
    assert run["status"] == "crashed"
    assert "(last: memoryMax 100.0 MiB exceeded" in run["error"], run
    errors = [str(e.get("MESSAGE")) for e in sandbox.journal("-p", "err")]
    assert any(
        "workflow hog worker pid" in m and "memoryMax 100.0 MiB exceeded" in m for m in errors
    )
    assert sandbox.state() == "active"
    assert sandbox.nervectl_json("status")["state"] == "running"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze")
    venv = service_venv() if not WHY_NOT else None
    nerved = f"{venv}/bin/nerved" if venv else shutil.which("true")
    nervectl = f"{venv}/bin/nervectl" if venv else shutil.which("true")
    for unit in ("nerved.service", "nerved.socket"):
        text = (REPO / "systemd" / unit).read_text()
        text = text.replace("/usr/bin/nervectl", str(nervectl)).replace(
            "/usr/bin/nerved", str(nerved)
        )
        (tmp_path / unit).write_text(text)
    if not WHY_NOT:
        ensure_nerve_user()
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "nerved.service"), str(tmp_path / "nerved.socket")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
