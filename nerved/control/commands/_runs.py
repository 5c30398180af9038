"""Finding a run by its id or by a unique prefix of it (8 characters or more).

Run ids are 32 lowercase hex characters (:mod:`nerved.store.refs`), but an operator copies
them from wherever they were shown or typed, ``3F2A9C1E`` included: the id or prefix is
looked up as given, then in lower case, so that case never makes a run "not found".
"""

from __future__ import annotations

from nerved.control.rpc import NOT_FOUND, RpcError, bad_params
from nerved.store import Reader, RunRecord

MIN_PREFIX = 8


def find_run(store: Reader, ref: str) -> RunRecord:
    record = store.get_run(ref)
    if record is None and ref != ref.lower():
        record = store.get_run(ref.lower())
    if record is not None:
        return record
    if len(ref) < MIN_PREFIX:
        raise RpcError(NOT_FOUND, f"no run {ref!r} (a prefix must have {MIN_PREFIX}+ characters)")
    matches = store.find_runs(ref, limit=3)
    if not matches and ref != ref.lower():
        matches = store.find_runs(ref.lower(), limit=3)
    if not matches:
        raise RpcError(NOT_FOUND, f"no run {ref!r}")
    if len(matches) > 1:
        shown = ", ".join(m.run_id for m in matches[:2])
        raise bad_params(f"run id prefix {ref!r} is ambiguous: {shown}, ...")
    return matches[0]
