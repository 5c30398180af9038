from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Nerved, make_root


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
