"""A run found by its id or a prefix of it, whatever the case it was typed in."""

from __future__ import annotations

from typing import Any, cast

import pytest

from nerved.control.commands._runs import find_run
from nerved.control.rpc import NOT_FOUND, RpcError
from nerved.store import Reader

RUN_ID = "3f2a9c1e5b7d4e0fa1b2c3d4e5f60718"


class Runs:
    """The two reads find_run makes, over a few run ids (ids stand for their records)."""

    def __init__(self, *ids: str) -> None:
        self.ids = sorted(ids)

    def get_run(self, run_id: str) -> Any:
        return run_id if run_id in self.ids else None

    def find_runs(self, prefix: str, limit: int = 2) -> list[Any]:
        return [i for i in self.ids if i.startswith(prefix)][:limit]


@pytest.mark.parametrize("ref", [RUN_ID, RUN_ID.upper(), "3F2A9C1E", "3f2A9c1E5b"])
def test_a_run_id_or_prefix_in_upper_case_finds_the_run(ref: str) -> None:
    store = cast(Reader, Runs(RUN_ID, "0" * 32))
    assert find_run(store, ref) == RUN_ID


def test_an_id_of_no_run_is_not_found_in_either_case() -> None:
    store = cast(Reader, Runs(RUN_ID))
    with pytest.raises(RpcError) as caught:
        find_run(store, "ABCDEF0123")
    assert caught.value.code == NOT_FOUND and "'ABCDEF0123'" in caught.value.message
