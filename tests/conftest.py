from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Nerved, make_root

# The PostgreSQL fixtures (pg_cluster, pg_dsn) for every test module: tests/pg_support.py.
pytest_plugins = ["pg_support"]

SERIAL_MODULES = frozenset({"test_service_systemd.py", "test_modes.py", "test_limits.py"})
"""Modules whose tests set up what the whole machine shares (the ``nerve`` user, the
service's venv under /var/lib/nerve-test that tests/sandbox.py installs this checkout into,
the systemd sandboxes): each of their tests holds :data:`MACHINE_LOCK`, so that under
pytest-xdist (``make test`` runs two processes) two of them never overlap. (A lock rather
than xdist's ``--dist loadgroup``, which pytest 9.2 silently breaks: pytest-xdist#1386.)"""

MACHINE_LOCK = Path(tempfile.gettempdir()) / "nerve-tests-machine.lock"


@pytest.fixture(autouse=True)
def _machine(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.path.name not in SERIAL_MODULES:
        yield
        return
    with open(MACHINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
        yield


@pytest.fixture
def nerved_factory(tmp_path: Path) -> Iterator[Callable[..., Nerved]]:
    """Make (not start) nerved processes on roots under tmp_path; all are killed at the end."""
    made: list[Nerved] = []

    def factory(config: str, senses: dict[str, str] | None = None,
                workflows: dict[str, str] | None = None, *,
                args: tuple[str, ...] = (), name: str = "n") -> Nerved:  # fmt: skip
        base = tmp_path / name
        root = make_root(base, config, senses, workflows)
        daemon = Nerved(root, base, *args)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.cleanup()
