from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Nerved, make_root

SERIAL_MODULES = frozenset({"test_service_systemd.py", "test_modes.py", "test_limits.py"})
"""Modules that set up what the whole machine shares (the ``nerve`` user, the service's
venv under /var/lib/nerve-test: tests/sandbox.py): under pytest-xdist (``make test`` runs
``-n 2 --dist loadgroup``) their tests run in one worker, one at a time."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("machine"))


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
