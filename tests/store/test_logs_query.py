"""One logs-query contract (nerved.store.query): the socket's ``logs.query`` and a sense's
``ctx.logs.query`` give the same query the same answer, through a real nerved.

Each case is sent both ways: as a request on the control socket, and as the keyword
arguments of ``ctx.logs.query`` in a sense that reads the case from a file and returns what
happened as its signal. Both must select the same entries, or refuse with the same message
(-32602 on the socket, ``ValueError`` in the sense). The worker checks a query before it
sends it, and the master again when it comes: each case is also sent as the worker's frame
as it is, past the worker's check, for the master's answer alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Nerved, make_root, wait_until

from nervectl.client import RemoteError

ASKER = """
import json

KWARG = {"refId": "ref_id", "afterId": "after_id", "beforeId": "before_id"}

def compute(ctx):
    with open(CASE_FILE) as f:
        case = json.load(f)
    if case["raw"]:  # past the worker's own check: the master's answer alone
        reply = ctx.logs._port.call({"t": "query", "query": case["query"]})
        if reply.get("error"):
            return {"case": case["n"], "refused": reply["error"], "flag": reply.get("refused")}
        return {"case": case["n"], "ids": [entry["id"] for entry in reply["entries"]]}
    kwargs = {KWARG.get(name, name): value for name, value in case["query"].items()}
    try:
        entries = ctx.logs.query(**kwargs)
    except ValueError as exc:
        return {"case": case["n"], "refused": str(exc)}
    except Exception as exc:
        return {"case": case["n"], "other": f"{type(exc).__name__}: {exc}"}
    return {"case": case["n"], "ids": [entry.id for entry in entries]}
"""

CONFIG = """
senses:
  fixed: {group: a}
  asker: {group: b}
reflexes:
  - {kind: sense, sense: fixed, interval: 1h}
"""

MAX = 2**63 - 1

# (id, query by wire names, refused: the start of the message, or None when entries come)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("filters", {"source": "sense", "type": "signal", "refId": "fixed"}, None),
    ("limit-1", {"refId": "fixed", "limit": 1}, None),
    ("limit-max", {"refId": "fixed", "limit": 10000}, None),
    ("limit-over-max", {"refId": "fixed", "limit": 20000}, None),
    ("limit-null", {"refId": "fixed", "limit": None}, None),
    ("since", {"refId": "fixed", "since": 0}, None),
    ("after-id", {"refId": "fixed", "afterId": 0}, None),
    ("before-id", {"refId": "fixed", "beforeId": MAX}, None),
    ("nothing-matches", {"refId": "no-such-sense"}, None),
    ("limit-0", {"limit": 0}, "param 'limit' must be at least 1"),
    ("limit-negative", {"limit": -1}, "param 'limit' must be at least 1"),
    ("limit-boolean", {"limit": True}, "param 'limit' must be an integer, not a boolean"),
    ("limit-float", {"limit": 1.5}, "param 'limit' must be an integer"),
    ("limit-string", {"limit": "5"}, "param 'limit' must be an integer"),
    ("since-negative", {"since": -1}, "param 'since' must be at least 0"),
    ("after-id-past-int64", {"afterId": 2**63}, f"param 'afterId' must be at most {MAX}"),
    ("before-id-string", {"beforeId": "1"}, "param 'beforeId' must be an integer"),
    ("source-empty", {"source": ""}, "param 'source' must not be empty"),
    ("source-unknown", {"source": "bogus"}, "no log source 'bogus' (sources: sense, workflow)"),
    ("type-number", {"type": 5}, "param 'type' must be a string"),
    ("ref-id-surrogate", {"refId": "\udc00x"}, "param 'refId' holds what JSON cannot carry"),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nerved, Path]]:
    base = tmp_path_factory.mktemp("logs-query")
    case_file = base / "case.json"
    asker = f"CASE_FILE = {str(case_file)!r}\n" + ASKER
    root = make_root(base, CONFIG, {"fixed": "def compute(ctx):\n    return {}\n", "asker": asker})
    nerved = Nerved(root, base)
    try:
        nerved.start()
        wait_until(
            lambda: nerved.rpc("logs.query", type="signal", refId="fixed"), what="fixed's signal"
        )
        yield nerved, case_file
    finally:
        nerved.cleanup()


def _by_socket(nerved: Nerved, query: dict[str, Any]) -> dict[str, Any]:
    try:
        entries = nerved.rpc("logs.query", **query)
    except RemoteError as exc:
        assert exc.code == (-32001 if "no log source" in exc.message else -32602), exc
        return {"refused": exc.message}
    return {"ids": [entry["id"] for entry in entries]}


def _by_sense(
    nerved: Nerved, case_file: Path, n: int, query: dict[str, Any], *, raw: bool
) -> dict[str, Any]:
    tmp = case_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"n": n, "query": query, "raw": raw}))
    tmp.rename(case_file)
    nerved.rpc("sense.trigger", sense="asker")

    def answered() -> dict[str, Any] | None:
        for entry in nerved.rpc("logs.query", type="signal", refId="asker", limit=10):
            if entry["payload"].get("case") == n:
                return dict(entry["payload"])
        return None

    outcome = wait_until(answered, what=f"the sense's answer to case {n}")
    outcome.pop("case")
    return outcome


_N = iter(range(1_000_000))


# A lone surrogate cannot be put in a worker's frame (nerved.wire): the master never sees it.
PARAMS = [
    pytest.param(query, refused, path, id=f"{name}-{path}")
    for path in ("sense", "master")
    for name, query, refused in CASES
    if not (path == "master" and name == "ref-id-surrogate")
]


@pytest.mark.parametrize(("query", "refused", "path"), PARAMS)
def test_the_socket_and_a_sense_get_the_same_answer(
    daemon: tuple[Nerved, Path], query: dict[str, Any], refused: str | None, path: str
) -> None:
    nerved, case_file = daemon
    by_socket = _by_socket(nerved, query)
    by_sense = _by_sense(nerved, case_file, next(_N), query, raw=path == "master")
    if path == "master" and refused is not None:
        assert by_sense.pop("flag") is True  # the worker raises it as BadQuery
    assert by_sense == by_socket
    if refused is None:
        assert "ids" in by_socket
    else:
        assert by_socket["refused"].startswith(refused), by_socket


def test_an_unknown_source_is_not_found(daemon: tuple[Nerved, Path]) -> None:
    """Not an empty answer that reads as "no entries" (SPEC §7: exit 4 in nervectl)."""
    nerved, _ = daemon
    with pytest.raises(RemoteError) as caught:
        nerved.rpc("logs.query", source="bogus")
    assert caught.value.code == -32001
    assert nerved.rpc("logs.query", source="sense", refId="fixed")  # the known ones answer
