"""Start, readiness, stop, death and reload of a real nerved, as systemd and operators see them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from support import REPO, Nerved, make_root, pid_alive, wait_until

TICK = "def compute(ctx):\n    return {'ok': True}\n"
HANG = "import time\n\ndef compute(ctx):\n    time.sleep(3600)\n"


def test_ready_is_sent_once_the_socket_listens(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK})
    daemon.start(wait=False)
    ready = daemon.wait_notify("READY=1")
    # READY=1 comes only after the socket answers: it must answer right now.
    assert daemon.rpc("status")["pid"] == daemon.pid
    assert f"MAINPID={daemon.pid}" in ready
    assert "STATUS=1 sense in 1 group, 0 workflows; threads: 0 active, 0 queued" in ready


def test_sigterm_exits_zero_after_stopping_within_the_deadline(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  hang: {gracePeriod: 500ms, timeout: 1h}\n", {"hang": HANG}
    ).start()
    worker = daemon.worker_pids("sense")["default"]
    daemon.rpc("sense.trigger", sense="hang")
    wait_until(lambda: daemon.sense("hang")["running"])
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.wait_notify("STOPPING=1", 5)
    assert daemon.wait(10) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 1.0 + 2.0, f"stop took {elapsed:.2f}s"
    assert not pid_alive(worker)
    assert not daemon.socket.exists()
    assert "did not stop in time; killing it" in daemon.log() or "killed by SIGKILL" in daemon.log()


def test_sigint_stops_an_idle_daemon_at_once(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK}).start()
    started = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert daemon.wait(10) == 0
    assert time.monotonic() - started < 2


def test_workers_die_with_a_killed_master_and_a_restart_takes_over(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  a: {group: one}\n  b: {group: two}\n", {"a": TICK, "b": TICK}
    ).start()
    workers = list(daemon.worker_pids().values())
    assert len(workers) == 2
    daemon.kill()
    wait_until(lambda: not any(pid_alive(p) for p in workers), what="workers to die")
    assert daemon.socket.exists()  # left behind by kill -9 ...
    daemon.start()  # ... and replaced by the next start
    assert daemon.rpc("status")["pid"] == daemon.pid


def test_broken_config_at_start_exits_78_naming_line_and_key(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          tick:
            throttle: soon
        """,
        {"tick": TICK},
    )
    daemon.start(wait=False)
    assert daemon.wait(10) == 78
    assert "nerve.yaml:4: senses.tick.throttle" in daemon.log()


def test_second_daemon_on_the_same_state_is_refused(nerved_factory, tmp_path):
    first = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK}).start()
    second = Nerved(first.root, tmp_path / "second")
    second.state = first.state
    try:
        second.start(wait=False)
        assert second.wait(10) == 75
        assert "another nerved is using" in second.log()
    finally:
        second.cleanup()
    assert first.rpc("status")["pid"] == first.pid


def test_nerved_check(tmp_path):
    good = make_root(tmp_path / "good", "senses:\n  tick: {}\n", {"tick": TICK})
    bad = make_root(
        tmp_path / "bad",
        "senses:\n  tick: {}\n  gone: {}\n",
        {"tick": "import nosuchmodule_abc\n"},
    )

    def check(root):
        return subprocess.run(
            [sys.executable, "-m", "nerved", "check", "--root", str(root)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip

    ok = check(good)
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 sense, 0 workflows, 0 reflexes)" in ok.stdout
    failed = check(bad)
    assert failed.returncode == 78
    assert "senses.gone" in failed.stderr and "__init__.py" in failed.stderr
    os.makedirs(bad / "senses" / "gone")
    (bad / "senses" / "gone" / "__init__.py").write_text(TICK)
    failed = check(bad)
    assert failed.returncode == 78
    assert "No module named 'nosuchmodule_abc'" in failed.stderr


def test_watchdog_pings_when_systemd_asks(nerved_factory):
    daemon = nerved_factory("senses: {}\n")
    daemon.env["WATCHDOG_USEC"] = "200000"
    daemon.start()
    daemon.notifications.clear()
    daemon.wait_notify("WATCHDOG=1", 5)


def test_log_lines_carry_priorities_when_journald_reads_stderr(nerved_factory):
    # No journald socket here (or not the test's): entries fall back to prefixed text lines.
    # tests/test_journal.py and the service tests see the entries journald's socket takes.
    daemon = nerved_factory("senses:\n  boom: {}\n", {"boom": "def compute(ctx):\n    1/0\n"})
    daemon.base.mkdir(parents=True, exist_ok=True)
    daemon.log_path.touch()
    st = os.stat(daemon.log_path)
    daemon.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    daemon.start()
    daemon.rpc("sense.trigger", sense="boom")
    wait_until(lambda: "<3>sense boom: ZeroDivisionError" in daemon.log(), what="an error line")
    assert any(line.startswith("<6>nerved 0.1.0 ready") for line in daemon.log().splitlines())


# -- reload ---------------------------------------------------------------------------------


def sense_names(daemon):
    return sorted(s["name"] for s in daemon.rpc("sense.list"))


def test_edit_is_picked_up_by_inotify(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK}).start()
    (daemon.root / "senses" / "tock").mkdir()
    (daemon.root / "senses" / "tock" / "__init__.py").write_text(TICK)
    (daemon.root / "nerve.yaml").write_text("senses:\n  tick: {}\n  tock: {group: other}\n")
    wait_until(lambda: sense_names(daemon) == ["tick", "tock"], what="tock to appear")
    assert "other" in daemon.worker_pids("sense")
    daemon.wait_notify("RELOADING=1")


def watched_inodes(pid: int) -> set[int]:
    """The inodes nerved's inotify instance watches, as the kernel lists them."""
    inodes: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("inotify "):
                fields = dict(f.split(":", 1) for f in line.split()[1:])
                inodes.add(int(fields["ino"], 16))
    return inodes


def test_edits_behind_symlinked_packages_and_nerve_yaml_are_noticed(nerved_factory, tmp_path):
    """stow, nix and configuration management link a root's files from elsewhere: an edit
    there reloads by itself, and a link pointed elsewhere moves the watch with it."""
    versioned = "def compute(ctx):\n    return {{'v': {}}}\n"
    elsewhere, other = tmp_path / "elsewhere", tmp_path / "other"
    for place, version in ((elsewhere, 1), (other, 3)):
        (place / "x").mkdir(parents=True)
        (place / "x" / "__init__.py").write_text(versioned.format(version))
    (elsewhere / "nerve.yaml").write_text("senses:\n  x: {}\n")
    daemon = nerved_factory("senses: {}\n")
    (daemon.root / "nerve.yaml").unlink()
    (daemon.root / "nerve.yaml").symlink_to(elsewhere / "nerve.yaml")
    (daemon.root / "senses").mkdir()
    (daemon.root / "senses" / "x").symlink_to(elsewhere / "x")
    daemon.start()

    def reloads() -> int:
        return daemon.log().count("reloaded (inotify)")

    def computes(version: int) -> bool:
        daemon.rpc("sense.trigger", sense="x")
        signals = daemon.rpc("logs.query", source="sense", type="signal", refId="x", limit=1000)
        return bool(signals) and signals[-1]["payload"] == {"v": version}

    wait_until(lambda: computes(1), what="version 1")
    (elsewhere / "x" / "__init__.py").write_text(versioned.format(2))
    wait_until(lambda: reloads() == 1, what="a reload of the package behind the link")
    wait_until(lambda: computes(2), what="version 2")
    (elsewhere / "nerve.yaml").write_text("senses:\n  x: {throttle: 1ms}\n")
    wait_until(lambda: "reloaded (inotify): sense x" in daemon.log(), what="nerve.yaml's edit")

    link = daemon.root / "senses" / "x.new"
    link.symlink_to(other / "x")
    link.replace(daemon.root / "senses" / "x")  # as `ln -sfn` would, in one step
    wait_until(lambda: reloads() == 3, what="a reload for the link pointed elsewhere")
    wait_until(lambda: computes(3), what="version 3")
    inodes = wait_until(
        lambda: (w := watched_inodes(daemon.pid)) and (other / "x").stat().st_ino in w and w,
        what="the new target watched",
    )
    assert (elsewhere / "x").stat().st_ino not in inodes, "the old target is watched still"
    assert elsewhere.stat().st_ino in inodes  # nerve.yaml's directory, for that name
    (other / "x" / "__init__.py").write_text(versioned.format(4))
    wait_until(lambda: reloads() == 4, what="a reload of the new target")
    wait_until(lambda: computes(4), what="version 4")


def test_sighup_and_rpc_reload(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK}, args=("--no-watch",)).start()
    (daemon.root / "nerve.yaml").write_text("senses:\n  tick: {throttle: 5s}\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_notify("RELOADING=1")
    wait_until(lambda: "reloaded (SIGHUP): sense tick" in daemon.log())
    (daemon.root / "nerve.yaml").write_text("senses: {}\n")
    assert daemon.rpc("reload") == {"changed": ["group default", "sense tick removed"]}
    assert sense_names(daemon) == []
    assert daemon.rpc("reload") == {"changed": []}


def test_changed_sense_code_respawns_its_group(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  a: {group: g1}\n  b: {group: g2}\n",
        {"a": TICK, "b": TICK},
        args=("--no-watch",),
    ).start()
    before = daemon.worker_pids("sense")
    (daemon.root / "senses" / "a" / "__init__.py").write_text(
        "def compute(ctx):\n    return {'version': 2}\n"
    )
    assert daemon.rpc("reload") == {"changed": ["group g1"]}
    after = wait_until(
        lambda: (p := daemon.worker_pids("sense")).get("g1") not in (None, before["g1"]) and p
    )
    assert after["g2"] == before["g2"]
    daemon.rpc("sense.trigger", sense="a")
    entries = wait_until(lambda: daemon.rpc("logs.query", source="sense", type="signal", refId="a"))
    assert entries[-1]["payload"] == {"version": 2}


def test_broken_edit_keeps_the_running_configuration(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK}).start()
    (daemon.root / "nerve.yaml").write_text("senses:\n  tick: {}\n  tock: {timeout: -1}\n")
    wait_until(lambda: "configuration not reloaded (inotify)" in daemon.log())
    assert "nerve.yaml:3: senses.tock" in daemon.log()
    assert sense_names(daemon) == ["tick"]
    with daemon.client() as client:
        try:
            client.call("reload")
        except Exception as exc:  # RemoteError
            assert "nerve.yaml:3" in str(exc)
        else:
            raise AssertionError("reload of a broken file succeeded")
    daemon.rpc("sense.trigger", sense="tick")
    wait_until(lambda: daemon.sense("tick")["computes"] == 1)


def test_signals_without_a_meaning_are_ignored_not_fatal(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": TICK}).start()
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        daemon.signal(signum)
        wait_until(lambda s=signum: f"{signal.Signals(s).name} ignored" in daemon.log())
    assert daemon.rpc("status")["pid"] == daemon.pid
