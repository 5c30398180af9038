"""The JSON that crosses nerve's boundaries, and the limits every value is held to.

A value enters nerve in a few places only: a control request line, a worker's frame (a role's
event, a moderator's prompt, a sense's result), a stored payload read back from logs.db. Each
is decoded here, by one rule set, so that what nerve accepts in one place it can always carry
through every other (the channel to a worker, logs.db, an answer to ``inspect``):

- **UTF-8 JSON only** (RFC 8259): no ``NaN``/``Infinity`` (Python's ``json`` writes and reads
  them by default), no number that overflows a double (``1e400``), no lone UTF-16 surrogate
  (``"\\ud800"`` decodes to a string that cannot be encoded again, nor stored by SQLite).
- **Bounded nesting**: at most :data:`MAX_DEPTH` levels in one value. Python's C decoder and
  encoder recurse, so a value nested a thousand levels deep raises ``RecursionError`` in one
  place and not in another, depending on the stack it meets; a fixed limit, checked where the
  value enters, makes every later step safe.
- **Bounded size**: a value is at most :data:`MAX_VALUE` bytes encoded, a run's stored steps
  together at most :data:`MAX_HISTORY`, and an answer stops adding entries once it holds
  :data:`RESULT_BUDGET` bytes of payloads (the rest is read with the next page).

Everything that breaks a rule raises :class:`Invalid` (a ``ValueError``) with the reason and,
when it is inside a value, the path to it (``payload.items[3]``), so that the control socket
can name the param and a failed run can say which part of an event was wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

KiB: Final = 1024
MiB: Final = 1024 * KiB

MAX_DEPTH: Final = 100
"""Levels of nesting in one value (``[]`` is 1, ``[[1]]`` is 2). Protobuf's default limit."""

MAX_VALUE: Final = 1 * MiB
"""Encoded bytes of one value: a trigger payload, a role's event, a prompt, a sense result."""

MAX_LINE: Final = 1 * MiB
"""Bytes of one control request line (SPEC §6). A trigger payload must fit in it with its
envelope (method, id, workflow name), so over the socket it is a little under MAX_VALUE."""

MAX_LOG_LINE: Final = 64 * KiB
"""Bytes of one ``ctx.log`` message; a longer one is kept truncated, with a marker."""

MAX_HISTORY: Final = 64 * MiB
"""Bytes of a run's stored steps together (its trigger payload and every ``{role, prompt,
event}``). A resumed run's history is read and sent to its worker in one piece, so this bounds
what a resume costs the master. Temporal's history limit is 50 MB, for the same reason."""

MAX_INTEGER: Final = 2**63 - 1
"""The largest integer a control param may hold: SQLite's INTEGER (a wider one cannot even be
compared). Here, not in the daemon's modules, so that nervectl refuses what the daemon would."""

MAX_QUERY_LIMIT: Final = 10_000
"""Entries (``logs.query``) or runs (``workflow.list``) in one answer at most: a larger
``limit`` is taken as this one."""

MAX_REPLAY_RUNS: Final = 1000
"""Runs one ``workflow.replay`` checks at most: a larger ``limit`` asks for this many."""

MAX_KEY: Final = 256
"""Characters of an idempotency key (``workflow.trigger``'s ``idempotencyKey``) at most."""


def key_problem(key: object) -> str | None:
    """Why ``key`` is not an idempotency key (a non-empty string of at most
    :data:`MAX_KEY` characters), or None when it is one."""
    if not isinstance(key, str):
        return "must be a string"
    if not key:
        return "must not be empty"
    if len(key) > MAX_KEY:
        return f"is {len(key):,} characters; at most {MAX_KEY}"
    return None


RESULT_BUDGET: Final = 4 * MiB
"""Payload bytes in one answer (``logs.query``, ``workflow.inspect``): past it the answer ends
early, always after at least one entry, and the client asks for the next page."""

Path = tuple[str | int, ...]


class Invalid(ValueError):
    """A value nerve does not accept, with why and where.

    ``path`` leads from the decoded document to the offending part: ``("params", "payload",
    "x")`` for ``{"params": {"payload": {"x": NaN}}}``; empty when the whole text is at fault.
    """

    def __init__(self, reason: str, path: Path = ()) -> None:
        self.reason = reason
        self.path = path
        self.document: Any = None  # the decoded text, when it was JSON (the rest may be read)
        super().__init__(f"{reason} (at {where(path)})" if path else reason)

    def under(self, depth: int) -> Invalid:
        """The same problem, its path relative to an element ``depth`` levels down."""
        return Invalid(self.reason, self.path[depth:])


def where(path: Path, root: str = "") -> str:
    """``payload.items[3]`` for ``("payload", "items", 3)``; a long path keeps its ends."""
    if len(path) > 8:
        return f"{where(path[:4], root)}…{where(path[-2:], '.')[1:]}"
    text = root
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "the top level"


class _Uncarriable:
    """A number JSON cannot carry, kept in place while the path to it is looked for."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Refused(ValueError):
    """Raised by the strict decoder's hooks: the first pass stops at the first bad number."""


def _refuse_constant(text: str) -> Any:
    raise _Refused(text)


def _mark_constant(text: str) -> Any:
    return _Uncarriable(text)


_STRICT: Final = json.JSONDecoder(parse_constant=_refuse_constant)
_MARKING: Final = json.JSONDecoder(parse_constant=_mark_constant)

# A cheap scan of the text that says when the decoded value must be walked: a \u escape of a
# surrogate (a pair decodes to one character; a lone one stays). A match inside a string
# costs a walk, never a wrong answer.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def loads(data: bytes | bytearray | memoryview | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one JSON text from outside by the rules above; raises :class:`Invalid`.

    ``bytes`` must be UTF-8 (not UTF-16 or UTF-32, which ``json.loads`` would also guess).
    Cost: one C-speed parse; the depth and surrogate checks only walk the value when a cheap
    scan of the text says they might fail. A number that overflows (``1e400``) decodes to
    infinity and is refused where the value is next encoded (:func:`dumps`), before it is
    kept or sent anywhere: scanning every text for it would double the cost of decoding.
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        try:
            value = _STRICT.decode(text)
        except _Refused:
            # Parse again, keeping the bad numbers in place, to say where the first one is.
            _raise_first_problem(_MARKING.decode(text), max_depth)
            raise
    except Invalid:
        raise
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise Invalid(f"nested deeper than {max_depth} levels") from None
    except _Refused as exc:  # found by the strict pass, not placed by the second (deeper)
        raise Invalid(f"{exc} is not JSON") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise Invalid(f"not a usable JSON value: {exc}") from None
    if text.count("[") + text.count("{") > max_depth and depth_exceeds(value, max_depth):
        _raise_first_problem(value, max_depth)  # says where (its walk stops at max_depth)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        _raise_first_problem(value, max_depth)
    return value


def loads_stored(text: str) -> Any:
    """Decode a payload nerve stored itself: checked when it entered, so only parsed here.

    Still raises :class:`Invalid` rather than anything else, for a row written by an older
    release or damaged on disk: the caller reports that one entry, nothing more.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise Invalid("nested too deeply to read back") from None
    except ValueError as exc:
        raise Invalid(f"not readable as JSON: {exc}") from None


# What ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``
# builds at every call, built once: the encoder keeps no state between two encodings.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any, *, max_depth: int = MAX_DEPTH) -> str:
    """Encode compactly, as nerve stores and sends values; raises :class:`Invalid`.

    Refuses what :func:`loads` would refuse (so that every encoded value decodes again) and
    what JSON has no form for (a set, an object): the path says where it is.
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        _raise_first_problem(value, max_depth)
        raise Invalid("not a JSON value") from None
    if (text.count("[") + text.count("{") > max_depth and depth_exceeds(value, max_depth)) or (
        _SURROGATE.search(text)
    ):
        _raise_first_problem(value, max_depth)
    return text


def encode(value: Any, *, max_depth: int = MAX_DEPTH) -> bytes:
    """:func:`dumps`, as UTF-8 bytes."""
    return dumps(value, max_depth=max_depth).encode()


def check_value(value: Any, what: str, *, max_bytes: int = MAX_VALUE) -> str:
    """Encode a value that is to be kept (an event, a prompt, a result) and check its size.

    Returns the encoding; raises :class:`Invalid` whose message starts with ``what``.
    """
    try:
        text = dumps(value)
    except Invalid as exc:
        raise Invalid(
            f"{what} is not a JSON value nerve can keep: {exc.reason}", exc.path
        ) from None
    size = len(text.encode())
    if size > max_bytes:
        raise Invalid(f"{what} is {size_text(size)}; at most {size_text(max_bytes)} is kept")
    return text


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests more than ``limit`` levels; looks at most ``limit + 1`` deep.

    Level by level, so that it never recurses and stops as soon as a level is empty.
    """
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(limit):
        if not level:
            return False
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below += [child for child in children if type(child) in _CONTAINERS]
        level = below
    return bool(level)


_CONTAINERS: Final = frozenset({dict, list, tuple})


def _raise_first_problem(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Find the first part of ``value`` JSON cannot carry and raise :class:`Invalid` for it."""
    problem = _first_problem(value, (), max_depth)
    if problem is not None:
        problem.document = value
        raise problem


def _first_problem(value: Any, path: Path, budget: int) -> Invalid | None:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return Invalid("a string holds a lone UTF-16 surrogate (not Unicode)", path)
        return None
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        if math.isnan(value):
            return Invalid("NaN is not JSON", path)
        return Invalid("a number too large for JSON (it overflows to infinity)", path)
    if isinstance(value, _Uncarriable):
        return Invalid(f"{value.text} is not JSON", path)
    if isinstance(value, dict | list | tuple):
        if budget <= 0:
            return Invalid(f"nested deeper than {len(path)} levels", path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(value, dict):
                if not isinstance(key, str | int | float | bool) and key is not None:
                    return Invalid(f"a key of type {type(key).__name__} is not JSON", path)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return Invalid(
                        "a key holds a lone UTF-16 surrogate, which is not Unicode", path
                    )
            problem = _first_problem(child, (*path, key), budget - 1)
            if problem is not None:
                return problem
        return None
    return Invalid(f"a {type(value).__name__} is not a JSON value", path)


def text(value: object, limit: int = MAX_LOG_LINE) -> str:
    """Free text from user code (a log line, an exception's message) made safe to keep.

    Lone surrogates become U+FFFD and text past ``limit`` UTF-8 bytes is cut, with a marker
    that says how much was left out: a log line is never refused, only shortened.
    """
    string = value if isinstance(value, str) else str(value)
    if _SURROGATE.search(string):
        string = _SURROGATE.sub("\ufffd", string)
    data = string.encode()
    if len(data) <= limit:
        return string
    kept = data[: max(0, limit - 64)].decode("utf-8", "ignore")
    return f"{kept}… [truncated: {size_text(len(data))} in all]"


def size_text(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``2.0 MiB``, ``3.1 GiB``: sizes in messages an operator reads."""
    if size < KiB:
        return f"{size} B"
    if size < MiB:
        return f"{size / KiB:.1f} KiB"
    if size < 1024 * MiB:
        return f"{size / MiB:.1f} MiB"
    return f"{size / (1024 * MiB):.1f} GiB"
