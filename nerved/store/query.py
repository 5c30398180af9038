"""The logs query: what a query of logs.db may ask, checked in one place for every way in.

A query comes from an operator's client (the control socket's ``logs.query``,
nerved.control.commands.logs_query) or from a sense (``ctx.logs.query``, sent by its worker,
nerved.worker.sense, and answered by the master, nerved.master.senses). All of them read it
with :meth:`LogQuery.parse`, so the same fields get the same answer on every path: the same
values accepted, the same bounds, the same message for what is refused. Its fields, by their
wire names (``ctx.logs.query`` spells ``refId``, ``afterId`` and ``beforeId`` as
``ref_id``, ``after_id`` and ``before_id``):

- ``source``, ``type``, ``refId``: a non-empty string, or absent (null: any); ``source`` one
  of :data:`SOURCES` (another is no source there is: :class:`UnknownSource`, not found, never
  an empty answer that reads as "no entries");
- ``since`` (milliseconds since the epoch), ``afterId``, ``beforeId``: an integer from 0 to
  2**63 - 1 (what SQLite's INTEGER holds), or absent;
- ``limit``: an integer of at least 1, or absent (null: :data:`DEFAULT_LIMIT`, 100); one
  above :data:`MAX_QUERY_LIMIT` (10,000) asks for that many, as the page holds at most so
  many anyway. ``limit: 0`` is refused ("at least 1"): an empty answer would read as "no
  such entries", which is not what was asked.

A boolean is not an integer; any other field is refused, naming the fields there are. What
is refused raises :class:`BadQuery`, a :class:`nerved.outcome.BadInput` (the socket answers
-32602 with its message) and a ``ValueError`` (what ``ctx.logs.query`` raises in a sense),
its message the same on both paths: ``param 'limit' must be at least 1``.

What an answer holds is the reader's (:meth:`nerved.store.interface.Reader.query_logs`):
oldest first, with ``since`` or ``afterId`` from there on (paging forward), else the newest
(before ``beforeId``: paging back), at most 4 MiB of payloads (``wire.RESULT_BUDGET``, at
least one entry). A leaf of the store: no sqlite3, so workers and commands import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nerved import wire
from nerved.outcome import BadInput, NotFound

if TYPE_CHECKING:
    from nerved.store.interface import Reader
    from nerved.store.records import LogEntry

DEFAULT_LIMIT: Final = 100
MAX_QUERY_LIMIT: Final = wire.MAX_QUERY_LIMIT
MAX_INTEGER: Final = wire.MAX_INTEGER

SOURCES: Final = ("sense", "workflow")
"""Who writes log entries: a sense (refId its name) or a workflow run (refId its id)."""
STRINGS: Final = ("source", "type", "refId")
INTEGERS: Final = ("since", "afterId", "beforeId")
FIELDS: Final = (*STRINGS, *INTEGERS, "limit")
"""Every field a logs query may have, by its wire name."""


class BadQuery(BadInput, ValueError):
    """A logs query nerve will not run; the message names the field and what it must be."""


class UnknownSource(BadQuery, NotFound):
    """A ``source`` that is none of :data:`SOURCES`: not found on the socket (-32001, exit 4
    in nervectl), a ValueError in a sense, as every other refusal of the query is."""


@dataclass(frozen=True, slots=True)
class LogQuery:
    """One checked logs query (see the module's docstring): read it with :meth:`parse`."""

    source: str | None = None
    type: str | None = None
    ref_id: str | None = None
    since: int | None = None
    after_id: int | None = None
    before_id: int | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> LogQuery:
        """The query ``fields`` ask for (wire names; null is absent), or :class:`BadQuery`."""
        if not isinstance(fields, Mapping):
            raise BadQuery("a logs query must be an object")
        unknown = sorted(str(name) for name in fields if name not in FIELDS)
        if unknown:
            raise BadQuery(f"unknown param {unknown[0]!r} (allowed: {', '.join(sorted(FIELDS))})")
        strings = {name: _string(fields, name) for name in STRINGS}
        if strings["source"] is not None and strings["source"] not in SOURCES:
            raise UnknownSource(
                f"no log source {strings['source']!r} (sources: {', '.join(SOURCES)})"
            )
        integers = {name: _integer(fields, name, minimum=0) for name in INTEGERS}
        limit = _integer(fields, "limit", minimum=1)
        return cls(
            source=strings["source"],
            type=strings["type"],
            ref_id=strings["refId"],
            since=integers["since"],
            after_id=integers["afterId"],
            before_id=integers["beforeId"],
            limit=DEFAULT_LIMIT if limit is None else min(limit, MAX_QUERY_LIMIT),
        )

    def to_wire(self) -> dict[str, Any]:
        """The fields this query sets, by wire name: :meth:`parse` reads them back as it."""
        values = {
            "source": self.source,
            "type": self.type,
            "refId": self.ref_id,
            "since": self.since,
            "afterId": self.after_id,
            "beforeId": self.before_id,
            "limit": self.limit,
        }
        return {name: value for name, value in values.items() if value is not None}

    def read(self, reader: Reader) -> list[LogEntry]:
        """The entries this query selects, from ``reader`` (raises StoreError)."""
        return reader.query_logs(
            source=self.source,
            type=self.type,
            ref_id=self.ref_id,
            since=self.since,
            after_id=self.after_id,
            before_id=self.before_id,
            limit=self.limit,
        )


def _string(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadQuery(f"param {name!r} must be a string")
    if not value:
        raise BadQuery(f"param {name!r} must not be empty")
    try:
        wire.dumps(value)
    except wire.Invalid as exc:  # a lone surrogate: what the socket refuses as it decodes
        at = wire.where(exc.path, name)
        raise BadQuery(
            f"param {name!r} holds what JSON cannot carry: {exc.reason} (at {at})"
        ) from None
    return value


def _integer(fields: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadQuery(f"param {name!r} must be an integer, not a boolean")
    if not isinstance(value, int):
        raise BadQuery(f"param {name!r} must be an integer")
    if value < minimum:
        raise BadQuery(f"param {name!r} must be at least {minimum}")
    if value > MAX_INTEGER:
        raise BadQuery(f"param {name!r} must be at most {MAX_INTEGER}")
    return value
