"""The queries' SQLite spelling, turned into PostgreSQL's.

nerve's queries are written once (:mod:`nerved.store.reads`, :mod:`nerved.store.writes`) in
the SQL both databases share; where SQLite needs its own words, PostgreSQL gets these:

- ``?`` parameters become ``%s`` (psycopg's), and a literal ``%`` is doubled;
- a unary ``+`` before a column (SQLite's way to keep its planner off an index) goes:
  PostgreSQL has no such operator for text, and plans without the hint;
- ``LENGTH(CAST(x AS BLOB))``, SQLite's length in bytes, becomes ``octet_length(x)``;
- ``json_valid`` and ``json_extract`` keep their names: the schema defines them in
  PostgreSQL (:mod:`.schema`), for payloads stored as text, byte for byte as written.

A statement is translated once and remembered: the queries are a few dozen strings (the
lists of ``?`` that vary with their length among them), so the cache stays small.
"""

from __future__ import annotations

import functools
import re
from typing import Final

_UNARY_PLUS: Final = re.compile(r"(?<=[\s(])\+(?=[A-Za-z_])")  # binary: "steps + 1"
_BYTES: Final = re.compile(r"LENGTH\(CAST\(([\w.]+) AS BLOB\)\)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """``sql`` as PostgreSQL (and psycopg) take it. The statements are nerve's own: no
    string literal of theirs holds a ``?`` or a ``+`` before a letter."""
    sql = _BYTES.sub(r"octet_length(\1)", sql)
    sql = _UNARY_PLUS.sub("", sql)
    return sql.replace("%", "%%").replace("?", "%s")
