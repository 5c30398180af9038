"""The host id (nerved.hostid): given, it is checked, never silently replaced."""

from __future__ import annotations

import pytest

from nerved import hostid


def test_an_empty_host_id_option_is_refused_not_replaced_by_the_machine_id() -> None:
    with pytest.raises(hostid.BadHostId, match="--host-id"):
        hostid.resolve("")


def test_the_option_comes_first(monkeypatch) -> None:
    monkeypatch.setenv("NERVE_HOST_ID", "from-env")
    assert hostid.resolve("given") == "given"
    assert hostid.resolve(None) == "from-env"


@pytest.mark.parametrize("bad", ["-x", "a b", "a" * 65, "é", "a/b", "a\n"])
def test_a_host_id_breaking_the_rule_is_refused(bad: str) -> None:
    with pytest.raises(hostid.BadHostId):
        hostid.resolve(bad)
