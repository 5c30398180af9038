"""The test tool slowfs (tests/tools/slowfs.py through tests/slowfs_support.py): SQLite in WAL
mode with synchronous=FULL runs on it whole, a commit waits while syncs are held and finishes
once they are released, and all but the syncs go on meanwhile."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from slowfs_support import slow_fs


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    db.execute("PRAGMA synchronous=FULL")
    return db


class Background:
    """A call run in a daemon thread (it may block on a held sync): done, result, error."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = call()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = 10.0) -> object:
        assert self.done.wait(timeout), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def test_sqlite_wal_runs_whole_and_a_commit_waits_for_its_held_fsync(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    with slow_fs(backing) as fs:
        db = connect(fs.mount / "state.db")
        db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)")
        before = fs.synced()
        for n in range(300):
            db.execute("INSERT INTO t VALUES (?, ?)", (n, "x" * (n % 50) * 20))
        # Each commit syncs the WAL at least once (FULL): the syncs went through the tool.
        assert fs.synced() - before >= 300
        reader = connect(fs.mount / "state.db")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (300,)
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
        assert (backing / "state.db-wal").stat().st_size == 0
        db.execute("UPDATE t SET body = 'y' WHERE n % 3 = 0")  # over a checkpointed database
        db.execute("DELETE FROM t WHERE n >= 250")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (250,)

        fs.hold()
        synced = fs.synced()
        commit = Background(lambda: db.execute("INSERT INTO t VALUES (1000, 'held')"))
        fs.wait_waiting(1)
        time.sleep(0.3)
        assert not commit.done.is_set(), "the commit returned while its fsync was held"
        assert fs.stats() | {"dirsynced": 0} == {
            "held": 1,
            "synced": synced,
            "waiting": 1,
            "dirsynced": 0,
        }
        fs.release()
        commit.wait()
        assert fs.stats()["waiting"] == 0
        assert fs.synced() > synced
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (251,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        reader.close()
        db.close()  # the last connection checkpoints and removes -wal and -shm
        assert sorted(os.listdir(fs.mount)) == ["state.db"]
    # What the mount wrote is the backing file itself, whole.
    direct = sqlite3.connect(backing / "state.db")
    assert direct.execute("SELECT count(*), max(n) FROM t").fetchone() == (251, 1000)
    assert direct.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    direct.close()


def test_reads_and_writes_go_on_while_a_sync_is_held(tmp_path: Path) -> None:
    with slow_fs(tmp_path / "backing") as fs:
        db = connect(fs.mount / "state.db")
        db.execute("CREATE TABLE t (n INTEGER)")
        for n in range(100):
            db.execute("INSERT INTO t VALUES (?)", (n,))
        # Opened (its -wal too, at its first read) before the hold: SQLite run as root fchown()s
        # a -wal it opens, and the kernel does not chown a file while an fsync of it is held.
        other = connect(fs.mount / "state.db")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (100,)

        fs.hold()
        commit = Background(lambda: db.execute("INSERT INTO t VALUES (100)"))
        fs.wait_waiting(1)

        def meanwhile() -> tuple[object, ...]:
            # The other connection reads again, through the -shm it maps and writes (its read
            # marks) and the WAL: the held commit is not visible yet (SQLite publishes a
            # commit in the WAL index only after its sync).
            seen = other.execute("SELECT count(*), max(n) FROM t").fetchone()
            # Another database on the same mount, which does not sync (it would wait too):
            # creates its files, writes, commits.
            side = sqlite3.connect(fs.mount / "side.db", isolation_level=None)
            side.execute("PRAGMA synchronous=OFF")
            side.execute("PRAGMA journal_mode=WAL")
            side.execute("CREATE TABLE s (x)")
            side.executemany("INSERT INTO s VALUES (?)", [(i,) for i in range(50)])
            side_rows = side.execute("SELECT count(*) FROM s").fetchone()
            side.close()
            # Plain files: write, close, rename, read, unlink.
            (fs.mount / "note.tmp").write_bytes(b"n" * 100_000)
            os.rename(fs.mount / "note.tmp", fs.mount / "note")
            size = len((fs.mount / "note").read_bytes())
            os.unlink(fs.mount / "note")
            return seen, side_rows, size

        started = time.monotonic()
        assert Background(meanwhile).wait() == ((100, 99), (50,), 100_000)
        assert time.monotonic() - started < 5
        assert fs.waiting() == 1 and not commit.done.is_set(), "the held commit went on"

        fs.release()
        commit.wait()
        assert other.execute("SELECT count(*), max(n) FROM t").fetchone() == (101, 100)
        other.close()
        db.close()


def test_fsync_and_fdatasync_are_held_and_counted_and_nothing_else(tmp_path: Path) -> None:
    with slow_fs(tmp_path / "backing") as fs:
        fd = os.open(fs.mount / "f", os.O_RDWR | os.O_CREAT, 0o644)
        # Not two syncs of one file: the kernel runs those one after the other.
        fd2 = os.open(fs.mount / "f2", os.O_RDWR | os.O_CREAT, 0o644)
        second = os.open(fs.mount / "f", os.O_RDONLY)
        dirfd = os.open(fs.mount, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.write(fd, b"data")
            start = fs.stats()
            os.fsync(fd)
            os.fdatasync(fd)
            assert fs.synced() == start["synced"] + 2
            fs.hold()
            syncs = [Background(lambda: os.fdatasync(fd)), Background(lambda: os.fsync(fd2))]
            fs.wait_waiting(2)
            assert fs.stats() == {**start, "held": 1, "synced": start["synced"] + 2, "waiting": 2}

            def meanwhile() -> str:
                assert os.pread(second, 4, 0) == b"data"  # the held file reads
                os.close(second)  # and closes (no flush: it would take the inode lock)
                os.fsync(dirfd)  # a directory's sync is never held
                (fs.mount / "g").write_text("go on")  # another file: create, write, close
                return (fs.mount / "g").read_text()

            assert Background(meanwhile).wait() == "go on"
            assert not any(sync.done.is_set() for sync in syncs)
            assert fs.stats()["dirsynced"] == start["dirsynced"] + 1
            fs.release()
            for sync in syncs:
                sync.wait()
            assert fs.stats() == {
                "held": 0,
                "synced": start["synced"] + 4,
                "waiting": 0,
                "dirsynced": start["dirsynced"] + 1,
            }
        finally:
            for each in (dirfd, fd2, fd):
                os.close(each)
