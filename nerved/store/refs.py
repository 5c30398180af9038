"""New run ids, and the key the logs index files an entry's ``ref_id`` under.

A run id is 32 lowercase hex characters, as it always was: 8 random ones, which are what an
operator sees and types (``workflow list`` shows them; any unique prefix names the run), then
the creation time in ms (12) and 12 more random ones (:func:`new_run_id`).

The logs index is on :data:`REF_KEY`, the ref turned by 8 characters, not on ``ref_id``: for
a new run id that key starts with the time, so the entries of the runs active now sit
together at the end of the index. Filed under a random id (a uuid4, as before), each run's
entry lands on its own index page, and a commit of ten runs' steps wrote about ten pages of
that index (``python -m bench.profile``, the master's bytes written per run of W: 47.8 KB
with uuid4 ids, 27.9 KB with these; the rest of the difference to an all-time-ordered id,
23.6 KB, is the ``run_id`` index, which prefixes need in id order). Turning is a bijection,
so equal keys mean equal refs, for a sense's name too, and runs of older releases are found
as before.
"""

from __future__ import annotations

import os
import time
from typing import Final


def turned(column: str) -> str:
    """SQL for ``column``'s text turned by 8 characters: what :func:`ref_key` does in Python."""
    return f"substr({column}, 9) || substr({column}, 1, 8)"


REF_KEY: Final = turned("ref_id")
"""The indexed expression (schema 6, ``logs_ref``): a query uses the index only when its
WHERE spells the expression so, compared with :func:`ref_key` of the ref it looks for (or
:func:`turned` of a column that holds one)."""


def ref_key(ref: str) -> str:
    """``ref`` as :data:`REF_KEY` files it (SQLite's substr counts characters, as slices do)."""
    return ref[8:] + ref[:8]


def sense_ref(sense: str, host: str | None) -> str:
    """The ``ref_id`` of a sense's entries: its name, or on a store several hosts share
    ``<name>@<host>`` (senses are each host's own, SPEC v2 §9: two hosts' ``cpu`` senses
    are two senses, and a sense's ``ctx.logs.query`` reads its own entries). A name with
    an ``@`` already names a host's sense, and is kept as it is."""
    if host is None or "@" in sense:
        return sense
    return f"{sense}@{host}"


def new_run_id() -> str:
    """32 lowercase hex: 32 random bits, the time in ms (48 bits), 48 random bits.

    A collision needs two runs in the same millisecond to draw the same 80 random bits.
    """
    random = os.urandom(10).hex()
    return f"{random[:8]}{time.time_ns() // 1_000_000:012x}{random[8:]}"
