"""Strict modes (nerved.modes): what others could write is refused, state files are nerved's.

Through a real nerved: a root, package or state directory writable by other users, or owned
by one, refuses the start (78) or the reload (the running code stays); ``--no-strict-modes``
turns each refusal into a WARNING; state files are never followed through a link, never
hard-linked, and created 0600. A few direct checks of the path walk come last.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox import ensure_nerve_user, service_venv
from support import REPO, Nerved, make_root, wait_until, write_package

from nervectl.client import RemoteError
from nerved import modes
from nerved.modes import Checker, checks

CONFIG = "senses:\n  tick: {}\n"
TICK = "def compute(ctx):\n    return {'version': 1}\n"
PWNED = "def compute(ctx):\n    return {'version': 'pwned'}\n"
HINT = "nerved --no-strict-modes would only warn"
UNTRUSTED = (
    "not reloaded on a file change: strict modes were violated since the last accepted"
    " reload: check the packages' content, then run `nervectl reload`"
)


@pytest.fixture
def nerve_uid() -> int:
    """The uid of the ``nerve`` user (made as the package's postinst makes it)."""
    if os.geteuid() != 0:
        pytest.skip("making files of another user needs root")
    ensure_nerve_user()
    return pwd.getpwnam("nerve").pw_uid


@pytest.fixture
def daemons() -> Iterator[list[Nerved]]:
    made: list[Nerved] = []
    yield made
    for daemon in made:
        daemon.cleanup()


def nerved_on(daemons: list[Nerved], root: Path, base: Path, *args: str) -> Nerved:
    daemon = Nerved(root, base, *args)
    daemons.append(daemon)
    return daemon


def refused_start(daemon: Nerved, code: int = 78) -> str:
    daemon.start(wait=False)
    assert daemon.wait(20) == code, daemon.log()
    assert not any("READY=1" in n for n in daemon.notifications)
    return daemon.log()


def last_tick(daemon: Nerved) -> object:
    """Trigger ``tick`` and the payload of the signal it gives."""
    before = daemon.sense("tick")["computes"]
    daemon.rpc("sense.trigger", sense="tick")
    wait_until(lambda: daemon.sense("tick")["computes"] > before, what="tick to compute")
    entries = daemon.rpc("logs.query", source="sense", type="signal", refId="tick")
    return entries[-1]["payload"]


def check(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the root -----------------------------------------------------------------------------


def test_a_world_writable_root_is_refused_at_start_with_78(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    root.chmod(0o777)
    log = refused_start(nerved_on(daemons, root, tmp_path / "n"))
    assert f"strict modes: {root} is writable by its group and others (mode 0777)" in log
    assert f"fix: chmod go-w {root}" in log and HINT in log
    assert not (tmp_path / "n" / "state").exists(), "the state directory was touched"


@pytest.mark.parametrize(
    "what", ["nerve.yaml", "senses", "package", "module", "subpackage", "__pycache__"]
)
def test_what_others_can_write_in_a_root_is_refused(daemons, tmp_path, what):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    package = root / "senses" / "tick"
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("")
    (package / "__pycache__").mkdir()
    path = {
        "nerve.yaml": root / "nerve.yaml",
        "senses": root / "senses",
        "package": package,
        "module": package / "__init__.py",
        "subpackage": package / "sub" / "__init__.py",
        "__pycache__": package / "__pycache__",
    }[what]
    path.chmod(mode(path) | stat.S_IWGRP)
    log = refused_start(nerved_on(daemons, root, tmp_path / "n"))
    assert f"strict modes: {path} is writable by its group" in log
    done = check(root)
    assert done.returncode == 78 and f"{path} is writable by its group" in done.stderr


def test_hidden_directories_and_other_packages_are_not_code(daemons, tmp_path):
    """A ``.git`` of a package and an unconfigured package are never imported: not checked."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK, "unused": TICK})
    (root / "senses" / "tick" / ".git").mkdir(mode=0o777)
    (root / "senses" / "tick" / ".git").chmod(0o777)
    (root / "senses" / "unused").chmod(0o777)
    nerved_on(daemons, root, tmp_path / "n").start()


def test_ancestors_must_be_safe_unless_sticky_and_roots(daemons, tmp_path, nerve_uid):
    """``/tmp`` (sticky, root's) may be above a root; a directory others can write may not,
    nor a sticky one of another user."""
    above = tmp_path / "above"
    above.mkdir()
    root = make_root(above, CONFIG, {"tick": TICK})
    above.chmod(0o1777)
    daemon = nerved_on(daemons, root, tmp_path / "n").start()
    assert daemon.stop() == 0

    os.chown(above, nerve_uid, -1)
    log = refused_start(daemon)
    assert f"strict modes: {above} is owned by nerve (uid {nerve_uid}), not by root" in log
    assert "a sticky directory is trusted only when root owns it" in log

    os.chown(above, 0, -1)
    above.chmod(0o777)
    log = refused_start(daemon)
    assert f"{above} is writable by its group and others (mode 0777)" in log


def test_a_root_reached_through_a_link_checks_the_link_and_its_target(daemons, tmp_path, nerve_uid):
    real = make_root(tmp_path / "real", CONFIG, {"tick": TICK})
    link = tmp_path / "conf"
    link.symlink_to(real)
    daemon = nerved_on(daemons, link, tmp_path / "n").start()
    assert daemon.stop() == 0

    os.chown(link, nerve_uid, -1, follow_symlinks=False)  # nerve could retarget it
    log = refused_start(daemon)
    assert (
        f"{link} is owned by nerve (uid {nerve_uid}), not by root;"
        f" fix: check where it points, then chown -h root {link}"
    ) in log

    os.chown(link, 0, -1, follow_symlinks=False)
    (tmp_path / "real").chmod(0o775)  # above the target
    log = refused_start(daemon)
    assert f"{tmp_path / 'real'} is writable by its group (mode 0775)" in log


def test_a_link_in_a_package_to_a_file_others_can_write_is_refused(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": "from . import helper\n" + TICK})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "helper.py").write_text("")
    (root / "senses" / "tick" / "helper.py").symlink_to(outside / "helper.py")
    (outside / "helper.py").chmod(0o666)
    log = refused_start(nerved_on(daemons, root, tmp_path / "n"))
    assert f"{outside / 'helper.py'} is writable by its group and others (mode 0666)" in log

    (outside / "helper.py").unlink()  # dangling, in a directory others can write: they
    outside.chmod(0o1777)  # could make it, sticky or not
    log = refused_start(nerved_on(daemons, root, tmp_path / "n2"))
    assert f"{outside} is writable by its group and others (mode 1777)" in log


def test_a_package_owned_by_another_user_is_refused(daemons, tmp_path, nerve_uid):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    module = root / "senses" / "tick" / "__init__.py"
    os.chown(module, nerve_uid, -1)
    log = refused_start(nerved_on(daemons, root, tmp_path / "n"))
    assert (
        f"{module} is owned by nerve (uid {nerve_uid}), not by root;"
        f" fix: check its content, then chown root {module}"
    ) in log
    assert f"{module.parent} is owned by" not in log
    os.chown(module.parent, nerve_uid, -1)
    log = refused_start(nerved_on(daemons, root, tmp_path / "n"))
    assert f"fix: check what it holds, then chown root {module.parent}" in log


def test_a_package_file_made_writable_after_start_is_refused_at_every_reload(daemons, tmp_path):
    """The attack of issue 9: a package others can write, rewritten, is never imported; each
    way a reload comes (inotify, nervectl reload, SIGHUP) is refused and the old code serves."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n").start()
    assert last_tick(daemon) == {"version": 1}
    module = root / "senses" / "tick" / "__init__.py"
    module.chmod(0o666)
    module.write_text(PWNED)  # as another user would
    wait_until(lambda: "configuration not reloaded (inotify)" in daemon.log())
    assert f"strict modes: {module} is writable by its group and others" in daemon.log()

    done = daemon.ctl("reload")
    assert done.returncode == 1, done.stderr
    assert f"{module} is writable by its group and others (mode 0666)" in done.stderr
    with daemon.client() as client, pytest.raises(RemoteError) as refused:
        client.call("reload")
    assert f"strict modes: {module}" in refused.value.data["errors"][0]
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "configuration not reloaded (SIGHUP)" in daemon.log())
    assert daemon.rpc("status")["state"] == "running"
    assert last_tick(daemon) == {"version": 1}
    assert "pwned" not in daemon.log()

    # The owner takes it back, as the refusal said. The watch sees the chmod, but what was
    # written while others could write is not loaded on a file change (issue 9, 7), not
    # even a change of the owner's, until someone looked and asked for a reload.
    module.chmod(0o644)
    wait_until(lambda: UNTRUSTED in daemon.log(), what="the watch's reload to be refused")
    refused = r"configuration not reloaded \(inotify\):\n *" + re.escape(UNTRUSTED)
    assert re.search(refused, daemon.log())
    assert last_tick(daemon) == {"version": 1}
    refusals = daemon.log().count(UNTRUSTED)
    write_package(root, "senses", "tick", TICK.replace("1", "2"))  # looked at, and fixed
    wait_until(lambda: daemon.log().count(UNTRUSTED) > refusals, what="the next refusal")
    assert last_tick(daemon) == {"version": 1}
    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert last_tick(daemon) == {"version": 2}
    write_package(root, "senses", "tick", TICK.replace("1", "3"))  # trusted again: applied
    wait_until(lambda: last_tick(daemon) == {"version": 3}, what="the watch to reload")
    assert "pwned" not in daemon.log()


def test_no_strict_modes_warns_of_each_violation_at_start_and_reload(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    root.chmod(0o777)
    daemon = nerved_on(daemons, root, tmp_path / "n", "--no-strict-modes", "--no-watch").start()
    warning = re.compile(
        rf"WARNING .*strict modes: {re.escape(str(root))} is writable by its group and others"
        r" \(mode 0777\); fix: chmod go-w .* \(ignored: --no-strict-modes\)"
    )
    assert len(warning.findall(daemon.log())) == 1
    assert daemon.rpc("reload") == {"changed": []}
    assert len(warning.findall(daemon.log())) == 2
    assert last_tick(daemon) == {"version": 1}

    done = check(root, "--no-strict-modes")
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and f"{root} is writable" in done.stderr
    assert check(root).returncode == 78


# -- the state directory and its files ----------------------------------------------------


def test_a_state_dir_of_another_user_with_a_linked_lock_is_refused(daemons, tmp_path, nerve_uid):
    """Issue 9 (b): nerved.lock a link to a victim file in a state directory of ``nerve``.
    Refused by strict modes (78); with them off, by never following a link (73). The victim
    is never truncated nor written."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    daemon = nerved_on(daemons, root, tmp_path / "n")
    daemon.state.mkdir(parents=True)
    os.chown(daemon.state, nerve_uid, -1)
    (daemon.state / "nerved.lock").symlink_to(victim)
    os.chown(daemon.state / "nerved.lock", nerve_uid, -1, follow_symlinks=False)

    log = refused_start(daemon)
    assert f"unsafe state directory {daemon.state}" in log
    assert f"strict modes: {daemon.state} is owned by nerve (uid {nerve_uid}), not by root" in log
    assert f"{daemon.state / 'nerved.lock'} is owned by nerve" in log
    assert victim.read_text() == "precious\n"

    daemon.extra.append("--no-strict-modes")
    log = refused_start(daemon, 73)
    assert f"{daemon.state / 'nerved.lock'}: it is a symbolic link" in log
    assert victim.read_text() == "precious\n"
    assert not (daemon.state / "logs.db").exists()


@pytest.mark.parametrize("file", ["logs.db", "logs.db-wal", "logs.db-shm"])
@pytest.mark.parametrize("how", ["symbolic link", "hard link"])
def test_a_linked_logs_db_is_refused_and_its_target_untouched(daemons, tmp_path, file, how):
    """Issue 9 (b): logs.db (or its WAL, its shared memory) another name of some other file.
    An empty target would have become a database."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n")
    daemon.state.mkdir(parents=True)
    victim = daemon.state / "victim"
    victim.write_bytes(b"")
    link = daemon.state / file
    if how == "symbolic link":
        link.symlink_to(victim)
        expected = f"{link}: it is a symbolic link"
    else:
        os.link(victim, link)
        expected = f"{link}: it has 2 hard links"
    for args in ((), ("--no-strict-modes",)):
        daemon.extra[:] = args
        log = refused_start(daemon, 73)
        assert expected in log
        assert victim.read_bytes() == b"" and mode(victim) == 0o644


def test_state_files_are_created_0600_whatever_the_umask(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n")
    daemon.base.mkdir()  # 0755: under umask 0 it would be a directory anyone can write
    old = os.umask(0)
    try:
        daemon.start()
    finally:
        os.umask(old)
    last_tick(daemon)  # a commit: the WAL and its index exist
    state = daemon.state
    assert mode(state) == 0o750
    for name in ("nerved.lock", "logs.db", "logs.db-wal", "logs.db-shm"):
        assert mode(state / name) == 0o600, name
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660  # unchanged: nervectl's group


def test_existing_state_files_lose_group_and_other_permissions(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n").start()
    assert daemon.stop() == 0
    (daemon.state / "logs.db").chmod(0o644)
    (daemon.state / "nerved.lock").chmod(0o640)
    daemon.start()
    assert mode(daemon.state / "logs.db") == 0o600
    assert mode(daemon.state / "nerved.lock") == 0o600
    log = daemon.log()
    assert re.search(
        rf"WARNING .*{re.escape(str(daemon.state / 'logs.db'))}: mode 0644 is now 0600", log
    )
    assert re.search(
        rf"INFO .*{re.escape(str(daemon.state / 'nerved.lock'))}: mode 0640 is now 0600", log
    )


def test_a_logs_db_of_another_user_is_refused(daemons, tmp_path, nerve_uid):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n").start()
    assert daemon.stop() == 0
    os.chown(daemon.state / "logs.db", nerve_uid, -1)
    log = refused_start(daemon)
    assert f"strict modes: {daemon.state / 'logs.db'} is owned by nerve (uid {nerve_uid})" in log
    daemon.extra.append("--no-strict-modes")
    daemon.start()
    assert f"{daemon.state / 'logs.db'} is owned by nerve" in daemon.log()


def test_a_state_dir_others_can_write_is_refused_before_it_is_used(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n")
    daemon.state.mkdir(parents=True)
    daemon.state.chmod(0o770)
    log = refused_start(daemon)
    assert f"strict modes: {daemon.state} is writable by its group (mode 0770)" in log
    assert list(daemon.state.iterdir()) == []

    daemon.state.rmdir()
    (tmp_path / "n").chmod(0o777)  # where it would be made
    log = refused_start(daemon)
    assert f"{tmp_path / 'n'} is writable by its group and others" in log
    assert not daemon.state.exists()


def test_a_pid_file_in_a_directory_others_can_write_is_refused(tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    run = tmp_path / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "--state-dir",
         str(tmp_path / "state"), "--socket", str(tmp_path / "nerved.sock"), "--daemon",
         "--pidfile", str(run / "nerved.pid")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert f"unsafe pid file {run / 'nerved.pid'}" in done.stderr
    assert f"{run} is writable by its group and others" in done.stderr
    assert not (run / "nerved.pid").exists() and not (tmp_path / "state").exists()


def test_what_nerved_makes_has_its_own_modes_whatever_the_umask(tmp_path):
    """Issue 9 (6): the directories nerved makes for its pid file, state and socket are 0755
    (the state directory 0750) even under ``umask 0``, where ``mkdir -p`` makes them 0777:
    before, the pid file's and state's were refused once made (and left), the socket's
    taken as they were."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    made = tmp_path / "made"
    pidfile, state, sock = made / "p" / "nerved.pid", made / "s" / "state", made / "r" / "sock"
    done = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0); from nerved.cli import main;"
         " sys.exit(main())", "--root", str(root), "--state-dir", str(state),
         "--socket", str(sock), "--daemon", "--pidfile", str(pidfile)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        for directory in (made, pidfile.parent, state.parent, sock.parent):
            assert mode(directory) == 0o755, directory
        assert mode(state) == 0o750 and mode(pidfile) == 0o644
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            wait_until(lambda: not pidfile.exists(), what="the daemon to stop")


@pytest.mark.parametrize("file", ["nerved.log", "pid file"])
def test_the_files_of_a_detached_daemon_are_never_linked(tmp_path, file):
    """``--daemon`` writes ``<state>/nerved.log`` and the pid file: a symbolic link there
    (or a second hard link of the pid file) is refused with 73, the target untouched."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    state, pidfile = tmp_path / "state", tmp_path / "run" / "nerved.pid"
    state.mkdir()
    pidfile.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if file == "nerved.log":
        (state / "nerved.log").symlink_to(victim)
    else:
        os.link(victim, pidfile)
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "--state-dir", str(state),
         "--socket", str(tmp_path / "nerved.sock"), "--daemon", "--pidfile", str(pidfile)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 73, done.stderr
    if file == "nerved.log":
        assert f"{state / 'nerved.log'}: it is a symbolic link" in done.stderr
    else:
        assert f"cannot create pid file {pidfile}: it has 2 hard links" in done.stderr
    assert victim.read_text() == "precious\n" and mode(victim) == 0o644
    assert not (state / "logs.db").exists()


def detached(tmp_path, root, *args: str, umask: int | None = None):
    """``nerved --daemon`` with its state and socket in tmp_path (and ``args``); its run."""
    prefix = "import os, sys; " + (f"os.umask({umask}); " if umask is not None else "")
    return subprocess.run(
        [sys.executable, "-c", prefix + "from nerved.cli import main; sys.exit(main())",
         "--root", str(root), "--state-dir", str(tmp_path / "state"),
         "--socket", str(tmp_path / "nerved.sock"), "--daemon", *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def stop_detached(pidfile: Path) -> None:
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), what="the daemon to stop")


def test_a_pid_file_of_ours_is_tightened_as_logs_db_is(tmp_path):
    """Issue 9 (9): a pid file nerved owns with more permissions than 0644 is a state file
    loosened, as a logs.db 0644 is: tightened with a WARNING, not refused (it was, 78)."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    pidfile = tmp_path / "run" / "nerved.pid"
    pidfile.parent.mkdir()
    pidfile.write_text("")
    pidfile.chmod(0o666)
    done = detached(tmp_path, root, "--pidfile", str(pidfile))
    try:
        assert done.returncode == 0, done.stderr
        assert re.search(
            rf"WARNING .*{re.escape(str(pidfile))}: mode 0666 is now 0644", done.stderr
        )
        assert mode(pidfile) == 0o644
    finally:
        stop_detached(pidfile)


def test_a_pid_file_that_is_a_link_of_another_user_is_to_be_removed(tmp_path, nerve_uid):
    """Issue 9 (7): a link at the pid file's path is never followed, so its fix is ``rm``,
    not ``chown -h`` (after which it would still be refused as a link)."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pidfile = tmp_path / "run" / "nerved.pid"
    pidfile.parent.mkdir()
    pidfile.symlink_to(victim)
    os.chown(pidfile, nerve_uid, -1, follow_symlinks=False)
    done = detached(tmp_path, root, "--pidfile", str(pidfile))
    assert done.returncode == 78, done.stderr
    assert f"strict modes: {pidfile} is owned by nerve (uid {nerve_uid}); fix: rm {pidfile}\n" in (
        done.stderr
    )
    assert victim.read_text() == "precious\n"


# -- the socket, and what is checked at every reload ----------------------------------------


def test_a_socket_directory_others_can_write_is_refused_at_start(daemons, tmp_path):
    """Issue 9 (6): whoever can write the socket's directory can put a socket of theirs in
    its place, for nervectl (as root) to talk to. A sticky one of root's (``/tmp``) is fine,
    as for the pid file."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n")
    daemon.socket.parent.mkdir(parents=True)
    daemon.socket.parent.chmod(0o777)
    log = refused_start(daemon)
    assert f"unsafe socket {daemon.socket}:" in log
    assert f"strict modes: {daemon.socket.parent} is writable by its group and others" in log
    assert not daemon.socket.exists()
    daemon.socket.parent.chmod(0o1777)
    daemon.start()


def test_state_and_socket_directories_are_checked_at_every_reload(daemons, tmp_path):
    """Issue 9 (5): a ``chmod`` of the state directory or the socket's made while nerved
    runs refuses the next reload, as a package's does (before, it said nothing changed)."""
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n", "--no-watch").start()
    for directory in (daemon.state, daemon.socket.parent):
        before = mode(directory)
        directory.chmod(0o777)
        done = daemon.ctl("reload")
        assert done.returncode == 1, done.stderr
        assert f"strict modes: {directory} is writable by its group and others" in done.stderr
        assert "fix: chmod go-w" in done.stderr and HINT in done.stderr
        directory.chmod(before)
        done = daemon.ctl("reload")
        assert done.returncode == 0, done.stderr

    daemon = nerved_on(daemons, root, tmp_path / "n2", "--no-watch", "--no-strict-modes").start()
    daemon.state.chmod(0o777)
    assert daemon.rpc("reload") == {"changed": []}
    assert re.search(
        rf"WARNING .*strict modes: {re.escape(str(daemon.state))} is writable by its group and"
        r" others .*\(ignored: --no-strict-modes\)",
        daemon.log(),
    )


# -- user private groups -------------------------------------------------------------------


def as_nerve(module: str, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` run as the ``nerve`` user, under ``umask``, with a Python
    nerve can run (the development venv's lives under /root): the service tests' venv."""
    python = service_venv() / "bin" / "python"
    return subprocess.run(
        ["setpriv", "--reuid=nerve", "--regid=nerve", "--clear-groups", "sh", "-c",
         f"umask {umask:03o}; exec \"$@\"", "sh", str(python), "-m", module, *args],
        capture_output=True, text=True, cwd="/", timeout=120,
        env={**os.environ, "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


@pytest.fixture
def nerve_home(nerve_uid) -> Iterator[Path]:
    """A directory of nerve's under /tmp (sticky, root's), which nerve can reach."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 for a venv the nerve user can run")
    home = Path(tempfile.mkdtemp(prefix="nerve-upg-", dir="/tmp"))
    os.chown(home, nerve_uid, -1)
    yield home
    shutil.rmtree(home)


def test_group_writable_is_fine_when_the_group_is_the_owners_alone(nerve_home, nerve_uid):
    """Issue 9 (8): under ``umask 002`` (user private groups), what a user makes is writable
    by a group that holds only them: accepted, as Debian's sshd does. ``nervectl init``
    makes its directories 0755 whatever the umask; an editor's files are 0664."""
    root = nerve_home / "conf"
    made = as_nerve("nervectl", "init", str(root), umask=0o002)
    assert made.returncode == 0, made.stderr
    assert mode(root) == mode(root / "senses") == 0o755
    module = root / "senses" / "heartbeat" / "__init__.py"
    module.chmod(0o664)  # nerve:nerve, the group nerve's alone
    root.chmod(0o775)
    done = as_nerve("nerved", "check", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

    os.chown(module, -1, grp.getgrnam("nogroup").gr_gid)  # a group of others: refused
    done = as_nerve("nerved", "check", "--root", str(root))
    assert done.returncode == 78, done.stderr
    assert f"strict modes: {module} is writable by its group (mode 0664)" in done.stderr
    assert f"{root} is writable" not in done.stderr


def test_a_private_group_is_the_owners_by_name_primary_gid_and_members(monkeypatch):
    user = pwd.struct_passwd(("alice", "x", 1000, 1000, "", "/home/alice", "/bin/sh"))
    groups = {1000: grp.struct_group(("alice", "x", 1000, [])), 1001: None}
    monkeypatch.setattr(checks.pwd, "getpwuid", lambda uid: user)
    monkeypatch.setattr(checks.grp, "getgrgid", lambda gid: groups[gid] or {}[gid])
    assert modes.private_group(1000, 1000)
    groups[1000] = grp.struct_group(("alice", "x", 1000, ["alice"]))
    assert modes.private_group(1000, 1000)  # listed as its own member: still hers alone
    groups[1000] = grp.struct_group(("alice", "x", 1000, ["alice", "bob"]))
    assert not modes.private_group(1000, 1000)  # bob can write too
    groups[1000] = grp.struct_group(("staff", "x", 1000, []))
    assert not modes.private_group(1000, 1000)  # not named after her
    assert not modes.private_group(1000, 1001)  # not her primary group (and unknown)
    assert not modes.private_group(0, 0)  # root's group: never (containers give it out)


# -- the walk itself ----------------------------------------------------------------------


def test_the_walk_follows_links_as_the_kernel_does(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "a" / "up").symlink_to("b/..")  # `..` after a link: from the link's target
    (tmp_path / "a" / "b" / "x").symlink_to(tmp_path / "open")
    checker = Checker()
    assert checker.path(tmp_path / "a" / "up" / "b") == (
        str(tmp_path / "a" / "b"),
        os.lstat(tmp_path / "a" / "b"),
    )
    assert checker.violations == []
    (tmp_path / "a" / "c").mkdir()
    (tmp_path / "l").symlink_to("a/b")  # `l/../c` is a/c to the kernel, not c
    assert checker.path(f"{tmp_path}/l/../c") == (
        str(tmp_path / "a" / "c"),
        os.lstat(tmp_path / "a" / "c"),
    )
    found = checker.path(tmp_path / "a" / "b" / "x" / "missing")
    assert found is None
    assert [v.path for v in checker.violations] == [str(tmp_path / "open")]
    (tmp_path / "loop").symlink_to("loop")
    assert Checker().path(tmp_path / "loop") is None


def test_the_walk_of_a_package_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "MAX_ENTRIES", 10)
    package, big = tmp_path / "p", tmp_path / "big"
    package.mkdir()
    big.mkdir()
    for n in range(6):
        (big / str(n)).touch()
    (package / "a").symlink_to(big)  # entries reached through links count too
    (package / "b").symlink_to(big)  # (once each)
    checker = Checker()
    checker.tree(package)
    assert checker.violations == []
    (big / "6").mkdir()
    (big / "6" / "x").touch()
    (big / "6" / "y").touch()
    checker = Checker()
    checker.tree(package)
    assert [v.problem for v in checker.violations] == [
        "cannot be checked: it leads to more than 10 entries (through its symbolic links too)"
    ]


def test_a_new_package_is_checked_at_reload(daemons, tmp_path):
    root = make_root(tmp_path, CONFIG, {"tick": TICK})
    daemon = nerved_on(daemons, root, tmp_path / "n", "--no-watch").start()
    write_package(root, "senses", "tock", TICK)
    (root / "senses" / "tock").chmod(0o777)
    (root / "nerve.yaml").write_text("senses:\n  tick: {}\n  tock: {}\n")
    with daemon.client() as client, pytest.raises(RemoteError) as refused:
        client.call("reload")
    assert f"{root / 'senses' / 'tock'} is writable" in refused.value.message
    assert [s["name"] for s in daemon.rpc("sense.list")] == ["tick"]
