"""A running nerved against hostile files and a stuck systemd: it answers, and keeps serving.

Every reload here is answered within a few seconds, with the reason, and the daemon keeps
the running configuration and code; a notify socket nobody reads never blocks it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Nerved, wait_until

from nervectl.client import RemoteError
from nerved.master.watch import MAX_WATCHED

TICK = "def compute(ctx):\n    return {'ok': True}\n"
CONFIG = "senses:\n  tick: {}\n"
ANSWER_WITHIN = 10.0  # seconds; each refusal below costs the daemon well under one


def reload(daemon: Nerved) -> dict[str, object]:
    with daemon.client(ANSWER_WITHIN) as client:
        answer: dict[str, object] = client.call("reload")
        return answer


def refused_reload(daemon: Nerved) -> list[str]:
    """The errors of a reload that must fail, then proof that the daemon still serves."""
    with daemon.client(ANSWER_WITHIN) as client, pytest.raises(RemoteError) as caught:
        client.call("reload")
    assert daemon.rpc("status")["state"] == "running"
    errors: list[str] = caught.value.data["errors"]
    return errors


def still_computes(daemon: Nerved) -> None:
    before = daemon.sense("tick")["computes"]
    daemon.rpc("sense.trigger", sense="tick")
    wait_until(lambda: daemon.sense("tick")["computes"] > before, what="tick to compute")


def _write(text: str | bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(text.encode() if isinstance(text, str) else text)

    return make


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with path.open("wb") as file:
            file.truncate(size)

    return make


def _merge_bomb(levels: int) -> str:
    lines = ["l0: &l0 {a: lol}"]
    lines += [f"l{i}: &l{i} {{<<: [*l{i - 1}, *l{i - 1}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nsenses: {{tick: *l{levels}}}\n"


HOSTILE_CONFIGS: list[tuple[str, Callable[[Path], None], str]] = [
    ("fifo", os.mkfifo, "nerve.yaml: cannot read {path}: a FIFO, not a regular file"),
    (
        "dev-zero",
        lambda path: path.symlink_to("/dev/zero"),
        "nerve.yaml: cannot read {path}: a character device, not a regular file",
    ),
    ("huge", _sparse(8 << 30), "nerve.yaml: {path} is larger than 256.0 KiB, the most it may hold"),
    ("not-utf8", _write(b"senses:\n  caf\xe9:\n"), "nerve.yaml:2: not UTF-8 text (byte 0xe9)"),
    (
        "deep",
        _write("senses: " + "[" * 100_000 + "]" * 100_000),
        "nerve.yaml:1: invalid YAML: nested more than 32 levels deep",
    ),
    (
        "merge-bomb",
        _write(_merge_bomb(64)),
        "nerve.yaml:15: invalid YAML: more than 100,000 values (an alias counts as all it repeats)",
    ),
    (
        "huge-integer",
        _write(f"senses:\n  tick: {{timeout: {'9' * 5000}}}\n"),
        "nerve.yaml:2: senses.tick.timeout: a duration cannot exceed 36500d (100 years); "
        "got an integer of more than 30 digits",
    ),
]


def test_hostile_nerve_yaml_is_refused_by_reload_and_nerved_keeps_serving(nerved_factory):
    daemon = nerved_factory(CONFIG, {"tick": TICK}, args=("--no-watch",)).start()
    path = daemon.root / "nerve.yaml"
    for name, make, expected in HOSTILE_CONFIGS:
        path.unlink()
        make(path)
        started = time.monotonic()
        assert refused_reload(daemon) == [expected.format(path=path)], name
        assert time.monotonic() - started < ANSWER_WITHIN / 2, name
    still_computes(daemon)
    path.unlink()
    path.write_text(CONFIG)
    assert reload(daemon) == {"changed": []}


def test_hostile_nerve_yaml_seen_by_inotify_is_reported_and_nerved_keeps_serving(nerved_factory):
    daemon = nerved_factory(CONFIG, {"tick": TICK}).start()
    for name, make, expected in HOSTILE_CONFIGS[-3:]:  # what used to raise or hang in the parser
        path = daemon.root / "nerve.yaml"
        path.unlink()
        make(path)
        wait_until(lambda: expected in daemon.log(), what=f"{name} to be reported")  # noqa: B023
        assert daemon.rpc("status")["state"] == "running"
    still_computes(daemon)


def test_hostile_package_is_refused_by_reload_and_nerved_keeps_serving(nerved_factory, tmp_path):
    daemon = nerved_factory(CONFIG, {"tick": TICK}, args=("--no-watch",)).start()
    package = daemon.root / "senses" / "tick"
    outside = tmp_path / "outside.bin"
    _sparse(8 << 30)(outside)

    # Nothing that blocks or loops is opened or followed: a FIFO, links to a device, to a huge
    # file, to themselves, to a directory above.
    os.mkfifo(package / "pipe")
    (package / "zero").symlink_to("/dev/zero")
    (package / "big").symlink_to(outside)
    (package / "loop").symlink_to("loop")
    (package / "up").symlink_to("..")
    assert reload(daemon) == {"changed": ["group default"]}

    (package / "data").mkdir()
    for i in range(10_001):
        (package / "data" / str(i)).touch()
    assert refused_reload(daemon) == [
        "nerve.yaml:2: senses.tick: package too large: more than 10,000 files "
        "(a package may hold at most 10,000 files and 256.0 MiB)"
    ]
    shutil.rmtree(package / "data")

    _sparse(8 << 30)(package / "model.bin")
    assert refused_reload(daemon) == [
        "nerve.yaml:2: senses.tick: package too large: more than 256.0 MiB in its files "
        "(a package may hold at most 10,000 files and 256.0 MiB)"
    ]
    still_computes(daemon)
    (package / "model.bin").unlink()
    assert reload(daemon) == {"changed": []}


def test_a_stuck_notify_reader_never_stalls_nerved(nerved_factory):
    daemon = nerved_factory(CONFIG, {"tick": TICK}, args=("--no-watch",))
    daemon.env["WATCHDOG_USEC"] = "50000"  # a WATCHDOG=1 every 25 ms
    daemon.start()
    # From here on nobody reads the notify socket: its queue (10 datagrams) is full within a
    # quarter of a second, and every reload adds RELOADING=1 and READY=1 on top.
    for _ in range(20):
        assert reload(daemon) == {"changed": []}
    until = time.monotonic() + 3
    while time.monotonic() < until:
        started = time.monotonic()
        assert daemon.rpc("status")["state"] == "running"
        assert time.monotonic() - started < 0.5
    (daemon.root / "nerve.yaml").write_text("senses: [\n")
    refused_reload(daemon)

    # Reading again, every state change arrives, in order, and the watchdog pings resume.
    failed = daemon.wait_notify("; last reload failed", 5)
    messages = daemon.notifications
    last_ready = max(i for i, message in enumerate(messages) if message.startswith("READY=1"))
    last_reloading = max(i for i, m in enumerate(messages) if m.startswith("RELOADING=1"))
    assert last_reloading < last_ready < messages.index(failed)
    daemon.notifications.clear()
    daemon.wait_notify("WATCHDOG=1", 5)


def test_a_package_of_thousands_of_directories_is_watched_within_a_bound(nerved_factory):
    """Each watched directory is a kernel inotify watch, added from the master's loop: past
    MAX_WATCHED the rest are not watched (said once), and nervectl reload still works."""
    daemon = nerved_factory(CONFIG, {"tick": TICK})
    package = daemon.root / "senses" / "tick"
    for n in range(MAX_WATCHED + 100):
        (package / f"d{n // 100}" / f"e{n % 100}").mkdir(parents=True, exist_ok=True)
    daemon.start()
    assert daemon.log().count(f"more than {MAX_WATCHED} directories") == 1
    assert reload(daemon) == {"changed": []}
    still_computes(daemon)


def test_many_packages_of_large_files_start_and_reload_without_stalling(nerved_factory):
    """The master fingerprints every package at start and at each reload, in its only thread.

    Forty packages of 250 MiB each (within the bound of a package; sparse, so nothing is on
    disk) took about 28 s to hash at start and stalled `status` for as long at each reload,
    near systemd's 30 s watchdog. A snapshot reads a bounded amount of content, whatever the
    packages hold: start and reload answer in a moment and `status` answers all along.
    """
    names = [f"s{i:02}" for i in range(40)]
    config = "senses:\n" + "".join(f"  {name}: {{}}\n" for name in names)
    daemon = nerved_factory(config, dict.fromkeys(names, TICK), args=("--no-watch",))
    for name in names:
        _sparse(250 * 1024 * 1024)(daemon.root / "senses" / name / "model.bin")
    started = time.monotonic()
    daemon.start(timeout=ANSWER_WITHIN)
    assert time.monotonic() - started < ANSWER_WITHIN / 2

    answers: list[dict[str, object]] = []
    reloading = threading.Thread(target=lambda: answers.append(reload(daemon)))
    with daemon.client(ANSWER_WITHIN) as watcher:
        reloading.start()
        slowest = 0.0
        while reloading.is_alive() or not slowest:
            asked = time.monotonic()
            assert watcher.call("status")["state"] == "running"
            slowest = max(slowest, time.monotonic() - asked)
        reloading.join()
    assert answers == [{"changed": []}]
    assert slowest < 1.0, f"status waited {slowest:.2f}s during a reload"


def test_an_edit_that_keeps_size_and_mtime_of_a_source_file_is_noticed(nerved_factory):
    """Files are fingerprinted by metadata past a budget, but small ones by their content:
    a one-byte edit whose mtime is put back (as `rsync -a` and `touch -r` do) is a change."""
    daemon = nerved_factory(
        CONFIG, {"tick": "def compute(ctx):\n    return {'v': 1}\n"}, args=("--no-watch",)
    ).start()
    source = daemon.root / "senses" / "tick" / "__init__.py"
    before = source.stat()
    source.write_text(source.read_text().replace("'v': 1", "'v': 2"))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = source.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert reload(daemon) == {"changed": ["group default"]}
    daemon.rpc("sense.trigger", sense="tick")
    entries = wait_until(
        lambda: daemon.rpc("logs.query", source="sense", type="signal", refId="tick")
    )
    assert entries[-1]["payload"] == {"v": 2}
