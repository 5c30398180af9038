"""Only code that passed the import check runs, whenever its worker is forked (issue 9).

A worker imports its package from the snapshot the master read and the import check (the
reload's probe) accepted, never from the files as they are when it forks: a rejected edit
never reaches a worker, not one forked after an idle exit, a crash or a respawn. Imports
and the import check are bounded, and what they report names the package and the line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from support import REPO, Nerved, make_root, pid_alive, wait_until

from nervectl.client import RemoteError

# A workflow of one step whose result says which version of the code ran.
VERSIONED = """
    from nerved import WorkflowDefinition
    from . import version

    def work(prompt, ctx):
        return {"type": "done", "version": version.VERSION}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": None}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""
SENSE = """
    from . import version

    def compute(ctx):
        return {"version": version.VERSION}
"""
CONFIG = """
senses:
  probe: {}
workflows:
  w: {idleTimeout: 1s}
"""


def _root_with_versions(nerved_factory, *args: str) -> Nerved:
    daemon = nerved_factory(CONFIG, {"probe": SENSE}, {"w": VERSIONED}, args=args)
    for kind, name in (("senses", "probe"), ("workflows", "w")):
        (daemon.root / kind / name / "version.py").write_text("VERSION = 1\n")
    return daemon


def _run_version(daemon: Nerved) -> object:
    run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    with daemon.client(30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "completed", run
    events = daemon.rpc("workflow.inspect", runId=run_id)["events"]
    step = next(e for e in events if e["type"] == "step_complete")
    return step["payload"]["event"]["version"]


def _sense_version(daemon: Nerved) -> object:
    before = daemon.sense("probe")["computes"]
    daemon.rpc("sense.trigger", sense="probe")
    wait_until(lambda: daemon.sense("probe")["computes"] > before, what="a compute")
    signals = daemon.rpc("logs.query", source="sense", type="signal", refId="probe", limit=1)
    return signals[0]["payload"]["version"]


def _no_workflow_worker(daemon: Nerved) -> None:
    wait_until(lambda: "w" not in daemon.worker_pids("workflow"), what="the idle worker to exit")


def _refused(daemon: Nerved) -> list[str]:
    with daemon.client(60) as client, pytest.raises(RemoteError) as caught:
        client.call("reload")
    errors: list[str] = caught.value.data["errors"]
    return errors


@pytest.mark.parametrize("how", ["rejected", "never checked"])
def test_an_edit_not_accepted_never_reaches_a_worker_forked_later(nerved_factory, how):
    """A broken edit rejected by reload, or any edit not yet reloaded: the workflow's next
    worker (after an idle exit), a worker forked after a crash and a respawned sense worker
    all run the accepted code; a reload that accepts the edit brings it."""
    daemon = _root_with_versions(nerved_factory, "--no-watch").start()
    assert _run_version(daemon) == 1
    assert _sense_version(daemon) == 1
    _no_workflow_worker(daemon)

    for kind, name in (("senses", "probe"), ("workflows", "w")):
        package = daemon.root / kind / name
        if how == "rejected":
            (package / "version.py").write_text("VERSION = 2\n")
            (package / "__init__.py").write_text("def broken(:\n")
        else:
            (package / "version.py").write_text("VERSION = 2\n")
    if how == "rejected":
        errors = _refused(daemon)
        assert any("workflows/w failed to import: SyntaxError" in e for e in errors), errors

    assert _run_version(daemon) == 1  # a new worker: the idle one exited
    assert _sense_version(daemon) == 1
    os.kill(daemon.worker_pids("workflow")["w"], signal.SIGKILL)  # respawned after a crash
    os.kill(daemon.worker_pids("sense")["default"], signal.SIGKILL)
    assert _run_version(daemon) == 1
    wait_until(lambda: "default" in daemon.worker_pids("sense"), what="the sense respawn")
    assert _sense_version(daemon) == 1
    assert "def broken(:" not in daemon.log()

    if how == "rejected":
        for kind, name, code in (("senses", "probe", SENSE), ("workflows", "w", VERSIONED)):
            (daemon.root / kind / name / "__init__.py").write_text(textwrap.dedent(code))
    assert daemon.rpc("reload")["changed"] == ["group default", "workflow w code"]
    assert _run_version(daemon) == 2
    assert _sense_version(daemon) == 2


def test_a_module_added_since_the_check_is_not_imported(nerved_factory):
    """A module the running code imports lazily, added after the code was accepted, is not
    part of that code: the import fails and says why, until a reload accepts it."""
    lazy = VERSIONED.replace(
        'return {"type": "done", "version": version.VERSION}',
        'from . import extra\n        return {"type": "done", "version": extra.VERSION}',
    )
    daemon = nerved_factory(CONFIG, {"probe": SENSE}, {"w": lazy}, args=("--no-watch",))
    (daemon.root / "senses" / "probe" / "version.py").write_text("VERSION = 1\n")
    (daemon.root / "workflows" / "w" / "version.py").write_text("VERSION = 1\n")
    daemon.start()
    (daemon.root / "workflows" / "w" / "extra.py").write_text("VERSION = 3\n")
    run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    with daemon.client(30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "failed"
    assert "workflows/w/extra.py is not in the code nerve accepted" in run["error"]
    assert daemon.rpc("reload")["changed"] == ["workflow w code"]
    assert _run_version(daemon) == 3


HANGS = "while True:\n    pass\n"


def test_an_import_that_never_returns_is_bounded_everywhere(nerved_factory):
    """In a workflow's worker (its runs fail with the reason), in a sense group's worker
    (the sense's error; the group's other sense still computes once the hung one is fixed)
    and in a reload's import check (refused, naming the package, answered in time)."""
    config = "senses:\n  ok: {}\n  stuck: {}\nworkflows:\n  w: {}\n"
    daemon = nerved_factory(
        config,
        {"ok": "def compute(ctx):\n    return 1\n", "stuck": HANGS},
        {"w": HANGS},
        args=("--no-watch", "--import-timeout", "1"),
    ).start()
    run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    with daemon.client(30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "failed"
    assert run["error"] == "importing workflows/w took longer than 1s"
    wait_until(
        lambda: daemon.sense("stuck")["lastError"] == "importing senses/stuck took longer than 1s",
        what="the sense's import to be reported",
    )
    assert daemon.rpc("status")["state"] == "running"

    (daemon.root / "workflows" / "w" / "__init__.py").write_text("import os\n" + HANGS)
    started = time.monotonic()
    assert _refused(daemon) == ["importing workflows/w took longer than 1s"]
    assert time.monotonic() - started < 5

    (daemon.root / "workflows" / "w" / "__init__.py").write_text("import os\nos._exit(3)\n")
    assert _refused(daemon) == ["importing workflows/w ended the import check (exit code 3)"]


def test_nervectl_reload_waits_longer_than_two_import_checks(nerved_factory):
    """A reload queued behind one whose import check hangs is still answered, by nervectl,
    with the reason (the client's wait is more than two checks)."""
    daemon = nerved_factory(
        "workflows:\n  w: {}\n",
        workflows={"w": VERSIONED},
        args=("--no-watch", "--import-timeout", "3"),
    )
    (daemon.root / "workflows" / "w" / "version.py").write_text("VERSION = 1\n")
    daemon.start()
    (daemon.root / "workflows" / "w" / "version.py").write_text(HANGS)
    first = subprocess.Popen(
        [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket), "reload"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: "nerve:p:reload" in _titles(), what="the first import check")
    second = daemon.ctl("reload")
    assert second.returncode == 1, second.stderr
    assert "importing workflows/w took longer than 3s" in second.stderr
    _, err = first.communicate(timeout=30)
    assert first.returncode == 1 and "took longer than 3s" in err


def _titles() -> list[str]:
    titles = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as file:
                    titles.append(file.read().strip())
            except OSError:
                pass
    return titles


def test_packages_whose_names_differ_only_in_punctuation_stay_apart(nerved_factory):
    """``disk-usage`` and ``disk_usage`` in one group had one module name, so one's
    ``from . import settings`` returned the other's module."""
    sense = "from . import settings\n\ndef compute(ctx):\n    return settings.NAME\n"
    config = "senses:\n  disk-usage: {}\n  disk_usage: {}\n  disk.usage: {}\n"
    daemon = nerved_factory(config, {n: sense for n in ("disk-usage", "disk_usage", "disk.usage")})
    for name in ("disk-usage", "disk_usage", "disk.usage"):
        (daemon.root / "senses" / name / "settings.py").write_text(f"NAME = {name!r}\n")
    daemon.start()
    for name in ("disk-usage", "disk_usage", "disk.usage"):
        daemon.rpc("sense.trigger", sense=name)
        wait_until(lambda n=name: daemon.sense(n)["computes"] == 1, what=f"{name} to compute")
        signal_ = daemon.rpc("logs.query", source="sense", type="signal", refId=name)[0]
        assert signal_["payload"] == name


def test_errors_point_at_the_users_line(nerved_factory, tmp_path):
    """A SyntaxError at the line the compiler found it; a bad WorkflowDefinition at the line
    of the package that made it, not in generated or frozen code."""
    bad_definition = (
        "from nerved import WorkflowDefinition\n"
        "\n"
        "workflow = WorkflowDefinition(roles={}, moderate=None)\n"
    )
    config = "workflows:\n  syntax: {}\n  definition: {}\n"
    root = make_root(
        tmp_path, config, workflows={"syntax": "x = (\n", "definition": bad_definition}
    )
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "check"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 78
    lines = done.stderr.splitlines()
    syntax = root / "workflows" / "syntax" / "__init__.py"
    definition = root / "workflows" / "definition" / "__init__.py"
    assert (
        f"workflows/syntax failed to import: SyntaxError: '(' was never closed (at {syntax}:1)"
        in lines
    )
    assert any(
        line.startswith("workflows/definition failed to import: TypeError:")
        and line.endswith(f"(at {definition}:3)")
        for line in lines
    ), lines
    assert "<frozen" not in done.stderr and "<string>" not in done.stderr


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (HANGS, "took longer than 1s"),
        ("import os\nos._exit(0)\n", "ended the import check (exit code 0)"),
        # It takes its channel away and goes on: still bounded, and said so.
        ("import os, time\nos.closerange(3, 4096)\ntime.sleep(30)\n", "took longer than 1s"),
    ],
)
def test_check_names_the_package_that_hung_or_ended_it(tmp_path, code, why):
    config = "senses:\n  fine: {}\nworkflows:\n  bad: {}\n"
    root = make_root(tmp_path, config, {"fine": "def compute(ctx):\n    return 1\n"}, {"bad": code})
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "--import-timeout", "1", "check"],
        capture_output=True, text=True, cwd=REPO, timeout=15,
    )  # fmt: skip
    assert done.returncode == 78
    assert done.stderr.strip() == f"importing workflows/bad {why}"


def test_a_worker_whose_exit_never_returns_is_killed_after_its_idle_stop(nerved_factory):
    """User code that blocks on the way out (here a logging handler whose flush never
    returns, which logging.shutdown calls) cannot keep an idle worker alive."""
    code = textwrap.dedent(VERSIONED) + (
        "\nimport logging, time\n\n"
        "class Stuck(logging.Handler):\n"
        "    def emit(self, record):\n"
        "        pass\n\n"
        "    def flush(self):\n"
        "        time.sleep(3600)\n\n"
        "logging.getLogger().addHandler(Stuck())\n"
    )
    daemon = nerved_factory(
        "workflows:\n  w: {idleTimeout: 1s, drainTimeout: 1s}\n", workflows={"w": code}
    )
    (daemon.root / "workflows" / "w" / "version.py").write_text("VERSION = 1\n")
    daemon.start()
    assert _run_version(daemon) == 1
    pid = daemon.worker_pids("workflow")["w"]
    wait_until(lambda: not pid_alive(pid), timeout=10, what="the stuck worker to be killed")
    assert "has not exited 1s (drainTimeout) after it was told to stop" in daemon.log()


def test_a_worker_drained_before_it_was_ready_keeps_its_own_import_bound(nerved_factory):
    """The import bound belongs to each worker: a reload that drains a worker still
    importing must neither kill it later as hung (its run completes) nor leave its
    successor unbounded."""
    slow = (
        textwrap.dedent(VERSIONED)
        .replace(
            "from . import version\n",
            "import time\nfrom . import version\ntime.sleep(version.SLEEP)\n",
        )
        .replace('return {"type": "done"', 'time.sleep(version.SLEEP)\n    return {"type": "done"')
    )
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 5}\n",
        workflows={"w": slow},
        args=("--no-watch", "--import-timeout", "4"),
    )
    version = daemon.root / "workflows" / "w" / "version.py"
    version.write_text("VERSION = 1\nSLEEP = 2.5\n")
    daemon.start()
    first = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    wait_until(lambda: "w" in daemon.worker_pids("workflow"), what="the first worker")
    version.write_text("VERSION = 2\nSLEEP = 0.5\n")
    assert daemon.rpc("reload")["changed"] == ["workflow w code"]
    second = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    with daemon.client(30) as client:
        for run_id in (first, second):
            run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
            assert run["status"] == "completed", run
    assert "took longer than" not in daemon.log()


def test_each_worker_s_code_is_checked_in_a_process_of_its_own(nerved_factory, tmp_path):
    """The import check imports what each worker imports (a workflow; a sense group, all
    its members), each in a process of its own, with the whole timeout: one package's
    import-time side effects neither hide another's failure nor cause one."""
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "mylib.py").write_text("X = 1\n")
    adds_path = (
        f"import sys\nsys.path.insert(0, {str(libs)!r})\n\ndef compute(ctx):\n    return 1\n"
    )
    uses = "import mylib\n\ndef compute(ctx):\n    return mylib.X\n"
    config = "senses:\n  a: {group: g}\n  b: {group: g}\n  c: {group: h}\nworkflows:\n  w: {}\n"
    slow = "import time\ntime.sleep(0.7)\n\ndef compute(ctx):\n    return 1\n"
    daemon = nerved_factory(
        config,
        {"a": adds_path, "b": uses, "c": slow},
        {"w": VERSIONED},
        args=("--no-watch", "--import-timeout", "1"),
    )
    (daemon.root / "workflows" / "w" / "version.py").write_text("VERSION = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(daemon.root), "check"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # b's worker imports a first: mylib is found
    daemon.start()

    # Only b changes: its group is checked whole (a first), as its worker will import it.
    (daemon.root / "senses" / "b" / "__init__.py").write_text(uses.replace("X", "X + 1"))
    # c and w each take most of the timeout: each gets all of it.
    (daemon.root / "senses" / "c" / "__init__.py").write_text(slow.replace("0.7", "0.71"))
    (daemon.root / "workflows" / "w" / "__init__.py").write_text(
        "import time\ntime.sleep(0.7)\n" + textwrap.dedent(VERSIONED)
    )
    assert sorted(daemon.rpc("reload")["changed"]) == ["group g", "group h", "workflow w code"]

    # A workflow that needs mylib has no sense to put it on its path: refused, not accepted
    # because a sense's import in the same check happened to.
    (daemon.root / "workflows" / "w" / "__init__.py").write_text(
        "import mylib\n" + textwrap.dedent(VERSIONED)
    )
    (daemon.root / "senses" / "a" / "__init__.py").write_text(adds_path + "\n# again\n")
    errors = _refused(daemon)
    assert len(errors) == 1 and errors[0].startswith(
        "workflows/w failed to import: ModuleNotFoundError: No module named 'mylib'"
    ), errors


def test_an_import_check_ends_once_it_has_answered(nerved_factory, tmp_path):
    """What a rejected package does on its way out (a logging handler that never returns at
    shutdown, writing on) must not linger: the check's process ends with its answer."""
    beat = tmp_path / "beat"
    daemon = _root_with_versions(nerved_factory, "--no-watch").start()
    lingering = (
        "import logging, time\n\n"
        "class Handler(logging.Handler):\n"
        "    def emit(self, record):\n"
        "        pass\n\n"
        "    def flush(self):\n"
        "        while True:\n"
        f"            open({str(beat)!r}, 'a').write('x')\n"
        "            time.sleep(0.05)\n\n"
        "logging.getLogger().addHandler(Handler())\n"
        "raise RuntimeError('this edit is rejected')\n"
    )
    (daemon.root / "workflows" / "w" / "__init__.py").write_text(lingering)
    assert _refused(daemon)[0].startswith("workflows/w failed to import: RuntimeError")
    wait_until(lambda: "nerve:p:reload" not in _titles(), what="the import check to end")
    size = beat.stat().st_size if beat.exists() else 0
    time.sleep(0.3)  # a writer that lingered would have written since
    assert (beat.stat().st_size if beat.exists() else 0) == size
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(daemon.root), "check"],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert done.returncode == 78 and "this edit is rejected" in done.stderr


STANDARD_APIS = """
    import importlib.resources, importlib.util, pkgutil
    from nerved import WorkflowDefinition
    from . import sub
    from .ns import mod

    try:
        from .local_settings import SETTING
    except ModuleNotFoundError:
        SETTING = "default"

    def work(prompt, ctx):
        return {
            "type": "done",
            "get_data": pkgutil.get_data(__name__, "data.txt").decode(),
            "resources": importlib.resources.files(__name__).joinpath("data.txt").read_text(),
            "setting": SETTING,
            "find_spec": importlib.util.find_spec(__name__ + ".missing") is None,
            "modules": sorted(name for _, name, _ in pkgutil.iter_modules(__path__)),
            "sub": sub.VALUE,
            "ns": mod.VALUE,
            "source": pkgutil.get_data(__name__, "sub/deeper.py").decode(),
        }

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": None}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def test_packages_keep_the_standard_import_apis(nerved_factory):
    """Imported from the snapshot, a package still has what Python gives a package on disk:
    pkgutil.get_data and importlib.resources (data from disk, a module's source as held),
    ModuleNotFoundError and find_spec() is None for what does not exist, iter_modules,
    subpackages and namespace packages."""
    daemon = nerved_factory("workflows:\n  w: {}\n", workflows={"w": STANDARD_APIS})
    package = daemon.root / "workflows" / "w"
    (package / "data.txt").write_text("data")
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("from . import deeper\nVALUE = deeper.V\n")
    (package / "sub" / "deeper.py").write_text("V = 'deep'\n")
    (package / "ns").mkdir()
    (package / "ns" / "mod.py").write_text("VALUE = 'namespace'\n")
    daemon.start()
    (package / "sub" / "deeper.py").write_text("V = 'edited, not accepted'\n")
    run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    with daemon.client(30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "completed", run
    events = daemon.rpc("workflow.inspect", runId=run_id)["events"]
    event = next(e for e in events if e["type"] == "step_complete")["payload"]["event"]
    assert event == {
        "type": "done",
        "get_data": "data",
        "resources": "data",
        "setting": "default",
        "find_spec": True,
        "modules": ["sub"],  # as on disk: a directory without __init__.py is not listed
        "sub": "deep",
        "ns": "namespace",
        "source": "V = 'deep'\n",
    }


def test_an_error_is_placed_in_the_package_not_in_the_library_it_called(nerved_factory):
    """The innermost frame of the package: not json's decoder that raised, and found even
    when the root lies under a directory named like nerve's own package."""
    sense = "import json\n\ndef compute(ctx):\n    return json.loads('{bad')\n"
    daemon = nerved_factory("senses:\n  s: {}\n", {"s": sense}, name="nerved").start()
    daemon.rpc("sense.trigger", sense="s")
    error = wait_until(lambda: daemon.sense("s")["lastError"], what="the compute's error")
    init = daemon.root / "senses" / "s" / "__init__.py"
    assert "/nerved/" in str(init)
    assert error.startswith("JSONDecodeError: ") and error.endswith(f"(at {init}:4)"), error


def test_a_root_that_is_a_symlink_may_be_pointed_elsewhere(tmp_path):
    """As NixOS lays it out (/etc/nerve -> /etc/static/nerve -> /nix/store/...): a new
    target is seen by itself (the link's directory is watched) and by reload."""
    sense = "def compute(ctx):\n    return {VERSION!r}\n"
    for version in ("v1", "v2"):
        make_root(
            tmp_path / version,
            "senses:\n  s: {}\n",
            {"s": sense.replace("{VERSION!r}", repr(version))},
        )
    link = tmp_path / "root"
    link.symlink_to(tmp_path / "v1" / "root")
    daemon = Nerved(link, tmp_path / "n").start()
    try:
        daemon.rpc("sense.trigger", sense="s")
        wait_until(lambda: daemon.sense("s")["computes"] == 1, what="a compute")
        link.unlink()
        link.symlink_to(tmp_path / "v2" / "root")
        wait_until(
            lambda: daemon.rpc("status")["root"] == str(tmp_path / "v2" / "root"),
            what="the new target to be loaded by itself",
        )
        daemon.rpc("sense.trigger", sense="s")
        wait_until(
            lambda: (
                daemon.rpc("logs.query", source="sense", type="signal", refId="s", limit=1)[0][
                    "payload"
                ]
                == "v2"
            ),
            what="the new code",
        )
    finally:
        daemon.cleanup()


def test_a_sense_whose_import_ends_its_worker_gets_the_error(nerved_factory):
    config = "senses:\n  a: {}\n  b: {}\n"
    daemon = nerved_factory(
        config, {"a": "import os\nos._exit(3)\n", "b": "def compute(ctx):\n    return 1\n"}
    ).start()
    wait_until(
        lambda: (
            daemon.sense("a")["lastError"]
            == "importing senses/a ended its group's worker (exit code 3)"
        ),
        what="the error of the sense whose import ended the worker",
    )


def test_an_edit_behind_a_symlinked_module_reloads_by_itself(nerved_factory, tmp_path):
    """A ``.py`` symlink is read through (its content is the package's code), so an edit
    of its target is a change of the code, noticed by inotify like any other."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "helpers.py").write_text("VALUE = 1\n")
    sense = "from . import helpers\n\ndef compute(ctx):\n    return helpers.VALUE\n"
    daemon = nerved_factory("senses:\n  s: {}\n", {"s": sense})
    (daemon.root / "senses" / "s" / "helpers.py").symlink_to(elsewhere / "helpers.py")
    daemon.start()
    (elsewhere / "helpers.py").write_text("VALUE = 2\n")
    wait_until(lambda: "reloaded (inotify): group default" in daemon.log(), what="a reload")
    daemon.rpc("sense.trigger", sense="s")
    wait_until(
        lambda: (
            [
                e["payload"]
                for e in daemon.rpc("logs.query", source="sense", type="signal", refId="s", limit=1)
            ]
            == [2]
        ),
        what="the new value",
    )


SYS_PATH = """
    import os, sys
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        here = os.path.dirname(__file__)
        directory = os.path.realpath(here) if prompt == "real" else here
        if directory not in sys.path:
            sys.path.insert(0, directory)
        sys.modules.pop("helper", None)
        import helper
        return {"type": "done", "who": helper.WHO}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


@pytest.mark.parametrize("how", ["as given", "real"])
def test_a_package_directory_put_on_sys_path_serves_the_accepted_code(
    nerved_factory, tmp_path, how
):
    """``sys.path.insert(0, os.path.dirname(__file__))`` is a common idiom; with a package
    that is a symlink, ``os.path.realpath`` leads past the link: either way, the modules
    found there are the accepted ones, never the files on disk."""
    daemon = nerved_factory("workflows:\n  other: {}\n", workflows={"other": SYS_PATH})
    target = tmp_path / "elsewhere" / "linked"
    target.mkdir(parents=True)
    (target / "__init__.py").write_text(textwrap.dedent(SYS_PATH))
    (target / "helper.py").write_text("WHO = 'accepted'\n")
    (daemon.root / "workflows" / "linked").symlink_to(target)
    (daemon.root / "nerve.yaml").write_text("workflows:\n  linked: {idleTimeout: 1s}\n")
    daemon.extra.append("--no-watch")
    daemon.start()
    prompt = "real" if how == "real" else "given"

    def who() -> object:
        run_id = daemon.rpc("workflow.trigger", workflow="linked", payload=prompt)["runId"]
        with daemon.client(30) as client:
            run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
        assert run["status"] == "completed", run
        events = daemon.rpc("workflow.inspect", runId=run_id)["events"]
        return next(e for e in events if e["type"] == "step_complete")["payload"]["event"]["who"]

    assert who() == "accepted"
    (target / "helper.py").write_text("WHO = 'not accepted'\n")
    with (target / "__init__.py").open("a") as file:
        file.write("raise RuntimeError('a broken edit')\n")
    assert "a broken edit" in _refused(daemon)[0]
    wait_until(lambda: "linked" not in daemon.worker_pids("workflow"), what="the idle exit")
    assert who() == "accepted"


OVERLAP = """
    import os, time
    from nerved import WorkflowDefinition

    with open({log!r}, "a") as log:
        log.write(f"{{time.monotonic()}} 1\\n")
    time.sleep(0.3)  # an import that takes a while
    with open({log!r}, "a") as log:
        log.write(f"{{time.monotonic()}} -1\\n")

    def moderate(thread, event):
        return None

    workflow = WorkflowDefinition(roles={{"r": lambda p, c: {{"type": "x"}}}}, moderate=moderate)
"""


def test_the_import_check_checks_one_unit_per_cpu_at_a_time(nerved_factory, tmp_path):
    """Forking every changed unit at once on a small host makes good code miss its timeout
    for want of CPU: the check runs at most one unit per CPU at a time (each import logs when
    it starts and ends; at most that many overlap), and accepts them all."""
    cpus = os.cpu_count() or 1
    names = [f"w{i}" for i in range(3 * cpus)]
    log = tmp_path / "imports.log"
    daemon = nerved_factory(
        "workflows:\n" + "".join(f"  {n}: {{}}\n" for n in names),
        workflows={n: "def x(): pass\n" for n in names},
        args=("--no-watch",),
    )
    for name in names:
        (daemon.root / "workflows" / name / "__init__.py").write_text("def x(): pass\n")
    daemon.start()
    for name in names:
        (daemon.root / "workflows" / name / "__init__.py").write_text(
            textwrap.dedent(OVERLAP.format(log=str(log)))
        )
    assert sorted(daemon.rpc("reload")["changed"]) == sorted(f"workflow {n} code" for n in names)
    events = sorted(
        (float(at), int(step))
        for at, step in (line.split() for line in log.read_text().split("\n") if line)
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert len(events) == 2 * len(names) and most <= cpus, (most, cpus)


def test_a_package_that_writes_into_itself_does_not_reload_forever(nerved_factory):
    """Each import check and each new worker writes the file, each write is a change of
    the package, each change a reload: automatic reloads back off, and say why, once."""
    sense = (
        "import os, time\n"
        "with open(os.path.join(os.path.dirname(__file__), 'stamp.txt'), 'w') as f:\n"
        "    f.write(str(time.time()))\n\n"
        "def compute(ctx):\n    return 1\n"
    )
    daemon = nerved_factory("senses:\n  s: {}\n", {"s": sense}).start()
    (daemon.root / "senses" / "s" / "data.txt").write_text("a change")
    wait_until(
        lambda: "packages keep changing as soon as they are reloaded (senses/s)" in daemon.log(),
        what="the storm to be noticed",
    )
    before = daemon.log().count("reloaded (inotify)")
    time.sleep(4)  # a rate is measured over time: unpaced, this was a dozen reloads
    assert daemon.log().count("reloaded (inotify)") - before <= 3
    assert daemon.log().count("packages keep changing") == 1
    assert daemon.rpc("reload")["changed"] in ([], ["group default"])  # explicit: at once
