"""The backends the store contract (test_contract.py) runs against, as one fixture
(store_support.BACKENDS); ``store`` is the backend's store, opened fresh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_support import BACKENDS, Backend

from nerved.store import Storage


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[Storage]:
    s = backend.open()
    yield s
    s.close()
