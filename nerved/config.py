"""Loading and validation of ``<root>/nerve.yaml`` (SPEC section 3).

The file is read with ``yaml.compose`` instead of ``yaml.safe_load`` so that every value keeps
the line it came from: an operator fixing a bad file at 3 a.m. needs ``nerve.yaml:12`` and the
key, not "invalid configuration". Every problem is collected before raising (up to
:data:`MAX_ERRORS`), so that one edit-and-reload cycle can fix them all. The result is frozen
because a running daemon swaps whole configurations on reload and must never see one
half-changed.

The master parses this file in its only thread, at every reload, so no file may cost it more
than a bounded amount of time and memory, whatever its shape: only a regular file is read,
and at most :data:`MAX_FILE_SIZE` of it; nesting is bounded while composing
(:data:`MAX_NESTING`), and so is what aliases expand to (:data:`MAX_VALUES`, against "billion
laughs" documents); every error message is built from clipped text. Whatever a file holds,
it ends in a :class:`ConfigError`, never another exception.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias, TypeVar, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nerved.code.packages import PackageTooLarge, package_files
from nerved.master import modes
from nerved.wire import KiB, MiB, size_text

__all__ = [
    "ConfigError",
    "ControlConfig",
    "NerveConfig",
    "Overflow",
    "Reflex",
    "RetentionConfig",
    "SenseConfig",
    "SenseReflex",
    "WorkflowConfig",
    "WorkflowReflex",
    "check_packages",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]

CONFIG_FILE = "nerve.yaml"

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

DEFAULT_GROUP = "default"
DEFAULT_THROTTLE_MS = 0
DEFAULT_TIMEOUT_MS = 30 * SECOND_MS
DEFAULT_GRACE_PERIOD_MS = 5 * SECOND_MS
DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 100
DEFAULT_IDLE_TIMEOUT_MS = 30 * SECOND_MS
DEFAULT_DRAIN_TIMEOUT_MS = 60 * SECOND_MS
DEFAULT_MAX_STEPS = 1000
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RUN_MAX_AGE_MS = 30 * DAY_MS
DEFAULT_RUN_MAX_COUNT = 10_000
DEFAULT_SIGNAL_MAX_AGE_MS = 7 * DAY_MS
DEFAULT_CONTROL_IDLE_TIMEOUT_MS = 60 * SECOND_MS
DEFAULT_MAX_CONNECTIONS = 256

# Ceilings that only reject absurd values: beyond them timers overflow (threading's
# TIMEOUT_MAX is ~292 years) and SQLite refuses to bind integers wider than 64 bits.
MAX_DURATION_MS = 36_500 * DAY_MS
MAX_INTEGER = 1_000_000_000
MIN_CONNECTIONS, MAX_CONNECTIONS = 32, 4096
# memoryMax: below a mebibyte is a unit mistaken (100 meant as 100M), never a limit a Python
# worker could live under (about 20M alone); 1024T is far past any host.
MIN_MEMORY_MAX = MiB
MAX_SIZE = 1 << 50

# Bounds on what one file may cost the master (see the module docstring). Parsing is pure
# Python: about 13 s per MiB for the densest YAML on a 2-core VM, so 256 KiB stays a few
# seconds away from the 30 s watchdog, and is still dozens of times any real nerve.yaml.
MAX_FILE_SIZE = 256 * KiB
MAX_NESTING = 32  # levels, aliases and merges included; nerve.yaml itself needs 5
MAX_VALUES = 100_000  # nodes of the document, counting each alias as what it repeats
MAX_ERRORS = 100  # reported before validation stops: beyond them, nobody reads on

# Names become directory and file names, so they must be harmless path components.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = (
    "use letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64 characters"
)


class ConfigError(Exception):
    """Raised with every problem found, not just the first.

    Operators fix a file faster from the whole list than by rerunning once per mistake.
    """

    errors: tuple[str, ...]

    def __init__(self, errors: Iterable[str] | str) -> None:
        # A bare string would otherwise be split into characters by tuple().
        self.errors = (errors,) if isinstance(errors, str) else tuple(errors)
        super().__init__("\n".join(self.errors))


class Overflow(enum.StrEnum):
    DROP = "drop"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class SenseConfig:
    name: str
    group: str
    throttle_ms: int
    timeout_ms: int
    grace_period_ms: int
    line: int
    memory_max: int | None = None  # bytes; its group's worker gets the largest of its senses'


@dataclass(frozen=True, slots=True)
class SenseReflex:
    sense: str
    interval_ms: int | None
    on: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class WorkflowReflex:
    workflow: str
    on: tuple[str, ...]
    line: int


Reflex: TypeAlias = SenseReflex | WorkflowReflex


@dataclass(frozen=True, slots=True)
class WorkflowConfig:
    name: str
    concurrency: int
    overflow: Overflow
    max_queue: int
    idle_timeout_ms: int
    drain_timeout_ms: int
    max_steps: int
    max_attempts: int
    line: int
    memory_max: int | None = None  # bytes, for the worker and everything it starts


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Pruning of old rows in logs.db. Key ``retention:`` at top level, all optional.

    ``None`` means "keep forever" and only comes from an explicit ``null`` in the file, so that
    forgetting the section cannot make logs.db grow without bound.
    """

    run_max_age_ms: int | None = DEFAULT_RUN_MAX_AGE_MS
    run_max_count: int | None = DEFAULT_RUN_MAX_COUNT
    signal_max_age_ms: int | None = DEFAULT_SIGNAL_MAX_AGE_MS


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control socket's limits. Key ``control:`` at top level, all optional.

    ``idle_timeout_ms``: a connection that sends nothing for this long is closed (1 s to
    MAX_DURATION_MS). ``max_connections``: connections served at once (32 to 4096).
    """

    idle_timeout_ms: int = DEFAULT_CONTROL_IDLE_TIMEOUT_MS
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass(frozen=True, slots=True)
class NerveConfig:
    path: Path
    senses: Mapping[str, SenseConfig]
    reflexes: tuple[Reflex, ...]
    workflows: Mapping[str, WorkflowConfig]
    retention: RetentionConfig
    control: ControlConfig = ControlConfig()

    def groups(self) -> dict[str, tuple[SenseConfig, ...]]:
        """Senses by worker group; file order is kept so workers start predictably."""
        grouped: dict[str, list[SenseConfig]] = {}
        for sense in self.senses.values():
            grouped.setdefault(sense.group, []).append(sense)
        return {group: tuple(senses) for group, senses in grouped.items()}

    def group_members(self) -> dict[str, tuple[str, ...]]:
        """:meth:`groups` by name: each group's senses, in file order."""
        return {group: tuple(s.name for s in senses) for group, senses in self.groups().items()}


def group_memory_max(senses: Iterable[SenseConfig]) -> int | None:
    """A sense group's memoryMax: the largest its senses set (None: none sets one).

    A group is one worker, so it gets one limit; the largest, because a sense that asks for
    more must be able to compute beside the others.
    """
    return max((s.memory_max for s in senses if s.memory_max is not None), default=None)


# --------------------------------------------------------------------------------------------
# Durations

_DURATION_RE = re.compile(r"(-?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)?")
_UNIT_MS: dict[str | None, int] = {
    None: 1,
    "ms": 1,
    "s": SECOND_MS,
    "m": MINUTE_MS,
    "h": HOUR_MS,
    "d": DAY_MS,
}
_DURATION_HINT = "expected a duration such as 500ms, 10s, 5m or 1h, or a number of milliseconds"


def parse_duration(value: object) -> int:
    """Milliseconds from a YAML duration value.

    Raises ValueError with a message meant for the operator, because the caller puts it in
    front of them verbatim with only the file, line and key prepended.
    """
    return _amount(value, _DURATION_RE, _UNIT_MS, _DURATION_HINT, "a duration", MAX_DURATION_MS,
                   "36500d (100 years)")  # fmt: skip


def _amount(
    value: object,
    pattern: re.Pattern[str],
    units: Mapping[str | None, int],
    hint: str,
    what: str,
    maximum: int,
    maximum_text: str,
) -> int:
    """An integer amount from a YAML number or a string ``<number><unit>``, rounded half up:
    what :func:`parse_duration` and :func:`parse_size` share."""
    amount: Decimal
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{hint}; got {_show(value)}")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{hint}; got {_show(value)}")
        amount = Decimal(value)
    else:
        match = pattern.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{hint}; got {_show(value)}")
        sign, number, unit = match.groups()
        amount = Decimal(number) * units[unit]
        if sign:
            amount = -amount
    if amount < 0:
        raise ValueError(f"{what} cannot be negative; got {_show(value)}")
    if amount > maximum:
        raise ValueError(f"{what} cannot exceed {maximum_text}; got {_show(value)}")
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))


# --------------------------------------------------------------------------------------------
# Sizes

_SIZE_RE = re.compile(r"(-?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]?)")
_SIZE_UNIT: dict[str | None, int] = {
    "": 1,
    "K": KiB,
    "M": MiB,
    "G": 1024 * MiB,
    "T": 1024 * 1024 * MiB,
}
_SIZE_HINT = "expected a size such as 256M or 1G (K, M, G, T: powers of 1024), or a number of bytes"


def parse_size(value: object) -> int:
    """Bytes from a YAML size value: ``256M``, ``1.5G``, ``1048576``.

    The suffixes are powers of 1024, as in systemd's ``MemoryMax=``. Raises ValueError with a
    message meant for the operator, as :func:`parse_duration` does.
    """
    return _amount(value, _SIZE_RE, _SIZE_UNIT, _SIZE_HINT, "a size", MAX_SIZE, "1024T")


# --------------------------------------------------------------------------------------------
# Describing values in messages, in YAML's words rather than Python's


class _Shape:
    """Stands in for a collection where only its kind matters to a message."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description


_A_LIST = _Shape("a list")
_A_MAPPING = _Shape("a mapping")
# A scalar whose tag could not be constructed; its error is already recorded.
_UNREADABLE = _Shape("an unreadable value")

# Integers from here on are refused by every setting, and are not worth printing: Python
# refuses to convert more than 4,300 digits between int and str at all.
_HUGE = 10**30
_HUGE_TEXT = "an integer of more than 30 digits"


def _clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters: a message quotes a key or value, never a megabyte."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= _HUGE:
        return _HUGE_TEXT
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(_clip(value))
    if isinstance(value, _Shape):
        return value.description
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, bytes):
        return "binary data"
    return f"a value of type {type(value).__name__}"


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({_show(value)})"
    if isinstance(value, int) and abs(value) < _HUGE:
        return f"an integer ({_show(value)})"
    if isinstance(value, float):
        return f"a number ({_show(value)})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    return _show(value)


# A hint compares the word with every choice: with thousands of senses declared and as many
# misspelt, that alone would stall the master for minutes.
_HINT_CHOICES = 1000


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    candidates = list(choices)
    if len(candidates) > _HINT_CHOICES:
        return ""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------------------------
# The validator

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_DECIMAL_RE = re.compile(r"[-+]?[0-9][0-9_]*")

_TOP_KEYS = ("senses", "reflexes", "workflows", "retention", "control")
_SENSE_KEYS = ("group", "throttle", "timeout", "gracePeriod", "memoryMax")
_SENSE_REFLEX_KEYS = ("kind", "sense", "interval", "on")
_WORKFLOW_REFLEX_KEYS = ("kind", "workflow", "on")
_WORKFLOW_KEYS = (
    "concurrency",
    "overflow",
    "maxQueue",
    "idleTimeout",
    "drainTimeout",
    "maxSteps",
    "maxAttempts",
    "memoryMax",
)
_RETENTION_KEYS = ("runs", "signals")
_RUNS_KEYS = ("maxAge", "maxCount")
_SIGNALS_KEYS = ("maxAge",)
_CONTROL_KEYS = ("idleTimeout", "maxConnections")


class _Entry(NamedTuple):
    key: str
    value: Node
    line: int  # the key's: an empty value's mark points at whatever token follows it


def _short_tag(tag: str) -> str:
    if tag.startswith("tag:yaml.org,"):
        tag = "!!" + tag.removeprefix("tag:yaml.org,2002:")
    return _clip(tag)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class _TooManyErrors(Exception):
    """Raised by the validator at the error after MAX_ERRORS: the rest would cost, not help."""


class _Validator:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        # Each message once, with its line: a mapping merged in many places repeats its errors.
        self.errors: dict[str, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        # Names declared, valid or not: a bad sense definition should not also produce an
        # "unknown sense" for every reflex that uses it. None: the section itself was unusable.
        self.sense_names: set[str] | None = set()
        self.workflow_names: set[str] | None = set()

    def format(self, line: int | None, path: str, message: str) -> str:
        where = f"{self.filename}:{line}" if line is not None else self.filename
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"

    def error(self, line: int | None, path: str, message: str) -> None:
        text = self.format(line, path, message)
        if text in self.errors:
            return
        if len(self.errors) == MAX_ERRORS:
            raise _TooManyErrors
        self.errors[text] = line or 0

    def sorted_errors(self) -> list[str]:
        """File order, which reads best (sorted() is stable: one line keeps the found order)."""
        return sorted(self.errors, key=self.errors.__getitem__)

    # -- structure ---------------------------------------------------------------------------

    def value(self, node: Node, path: str) -> object:
        if isinstance(node, MappingNode):
            return _A_MAPPING
        if isinstance(node, SequenceNode):
            return _A_LIST
        text = str(node.value)
        if node.tag in (_INT_TAG, _FLOAT_TAG) and ":" in text:
            # YAML 1.1 reads `1:30` as the base-60 number 90: never what an operator means.
            return text
        if node.tag == _INT_TAG and _DECIMAL_RE.fullmatch(text):
            # YAML 1.1 reads `010` as octal 8; a person means ten.
            digits = text.lstrip("+-").replace("_", "").lstrip("0")
            # int() refuses more than 4,300 digits; past 30, the value is never converted.
            number = _HUGE if len(digits) > 30 else int(digits or "0")
            return -number if text.startswith("-") else number
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            tag = _short_tag(node.tag)
            if node.tag in yaml.constructor.SafeConstructor.yaml_constructors:
                self.error(_line(node), path, f"cannot read {_show(text)} as {tag}")
            else:
                self.error(_line(node), path, f"unsupported tag {tag}")
            return _UNREADABLE

    def entries(self, node: MappingNode, path: str) -> list[_Entry]:
        """Keys of a mapping in file order, with duplicates reported instead of overwritten."""
        found: dict[str, _Entry] = {}
        inherited: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for entry in self._merged(value_node, path):
                    if entry.key not in found:
                        found[entry.key] = entry
                        inherited.add(entry.key)
                continue
            line = _line(key_node)
            if not isinstance(key_node, ScalarNode):
                what = "a list" if isinstance(key_node, SequenceNode) else "a mapping"
                self.error(line, path, f"expected a name as key, got {what}")
                continue
            # The raw text, not the constructed value: `on:` is a boolean in YAML 1.1 and a
            # sense called `404` is an integer, yet both are names here.
            key = str(key_node.value)
            if key in found and key not in inherited:
                self.error(
                    line, _join(path, key), f"duplicate key (first on line {found[key].line})"
                )
                continue
            inherited.discard(key)
            found[key] = _Entry(key, value_node, line)
        return list(found.values())

    def _merged(self, node: Node, path: str) -> list[_Entry]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: list[_Entry] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                what = _show(self.value(source, path))
                self.error(_line(source), path, f"'<<' expects a mapping to merge, got {what}")
            else:  # never a cycle, nor deeper than MAX_NESTING: the composer saw to it
                merged.extend(self.entries(source, path))
        return merged

    def mapping(self, node: Node, line: int, path: str, expected: str) -> list[_Entry] | None:
        """Entries of a mapping value; null and ``{}`` both mean "nothing set here"."""
        if _is_null(node):
            return []
        if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
            return self.entries(node, path)
        self.mismatch(line, path, expected, node)
        return None

    def mismatch(self, line: int, path: str, expected: str, node: Node) -> None:
        """Report a value of the wrong type, unless it could not even be read (already said)."""
        if isinstance(node, MappingNode | SequenceNode) and node.tag not in (_MAP_TAG, _SEQ_TAG):
            found = f"a value tagged {_short_tag(node.tag)}"
        else:
            value = self.value(node, path)
            if value is _UNREADABLE:
                return
            found = _describe(value)
        self.error(line, path, f"expected {expected}, got {found}")

    def known(
        self,
        entries: list[_Entry],
        allowed: tuple[str, ...],
        path: str,
        elsewhere: Mapping[str, str] | None = None,
    ) -> dict[str, _Entry]:
        """The entries whose keys are allowed; every other key is reported."""
        result: dict[str, _Entry] = {}
        for entry in entries:
            if entry.key in allowed:
                result[entry.key] = entry
                continue
            if elsewhere and entry.key in elsewhere:
                message = f"unknown key here: {elsewhere[entry.key]}"
            else:
                hint = _did_you_mean(entry.key, allowed)
                message = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
            self.error(entry.line, _join(path, entry.key), message)
        return result

    # -- typed values ------------------------------------------------------------------------

    def integer(
        self,
        entry: _Entry,
        path: str,
        *,
        nullable: bool = False,
        minimum: int = 1,
        maximum: int = MAX_INTEGER,
    ) -> int | None:
        """A count, by default at least 1: 0 and negatives are never meaningful here."""
        value = self.value(entry.value, path)
        if value is _UNREADABLE or (value is None and nullable):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            expected = "an integer or null" if nullable else "an integer"
            self.error(entry.line, path, f"expected {expected}, got {_describe(value)}")
        elif value < minimum:
            self.error(entry.line, path, f"must be at least {minimum}, got {_show(value)}")
        elif value > maximum:
            self.error(entry.line, path, f"must be at most {maximum}, got {_show(value)}")
        else:
            return value
        return None

    def duration(
        self,
        entry: _Entry,
        path: str,
        *,
        positive: bool,
        nullable: bool = False,
        at_least: str | None = None,
    ) -> int | None:
        """Milliseconds; ``at_least`` is a duration as written in the file, such as ``1s``."""
        value = self.value(entry.value, path)
        if value is _UNREADABLE or (value is None and nullable):
            return None
        try:
            ms = parse_duration(value)
        except ValueError as exc:
            self.error(entry.line, path, f"{exc}{'; or null' if nullable else ''}")
            return None
        if positive and ms == 0:
            self.error(entry.line, path, f"must be longer than 0, got {_show(value)}")
            return None
        if at_least is not None and ms < parse_duration(at_least):
            self.error(entry.line, path, f"must be at least {at_least}, got {_show(value)}")
            return None
        return ms

    def memory_max(self, fields: dict[str, _Entry], path: str) -> int | None:
        """``memoryMax``: a size of at least :data:`MIN_MEMORY_MAX`; absent or null: none."""
        entry = fields.get("memoryMax")
        if entry is None:
            return None
        path = f"{path}.memoryMax"
        value = self.value(entry.value, path)
        if value is _UNREADABLE or value is None:
            return None
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.error(entry.line, path, f"{exc}; or null")
            return None
        if size < MIN_MEMORY_MAX:
            self.error(entry.line, path, f"must be at least 1M, got {_show(value)}")
            return None
        return size

    def name(self, node: Node, line: int, path: str, what: str) -> str | None:
        """A name given as a value, read from the raw text just as names given as keys are."""
        if isinstance(node, ScalarNode) and not _is_null(node):
            return str(node.value)
        self.mismatch(line, path, f"{what} name", node)
        return None

    def check_name(self, name: str, line: int, path: str, what: str) -> None:
        if not NAME_RE.fullmatch(name):
            self.error(line, path, f"{_show(name)} is not a valid {what} name: {NAME_RULE}")

    def reference(
        self, name: str, line: int, path: str, what: str, declared: set[str] | None, section: str
    ) -> None:
        if declared is None or name in declared:
            return
        hint = _did_you_mean(name, declared)
        if not hint and "," in name:
            hint = f" (for several, use a list: [{_clip(name)}])"
        self.error(line, path, f"unknown {what} {_show(name)}{hint}; declare it under {section}:")

    def sense_list(self, entry: _Entry, path: str) -> list[str] | None:
        """Sense names for ``on``; a single name is accepted as a list of one."""
        node = entry.value
        if isinstance(node, ScalarNode) and not _is_null(node):
            items: list[tuple[Node, int]] = [(node, entry.line)]
        elif isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
            items = [(item, _line(item)) for item in node.value]
            if not items:
                self.error(entry.line, path, "must list at least one sense")
                return None
        else:
            self.mismatch(entry.line, path, "a list of sense names", node)
            return None
        names: dict[str, None] = {}  # ordered, and a repeat would fire the reflex twice
        for index, (item, line) in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, SequenceNode) else path
            name = self.name(item, line, item_path, "a sense")
            if name is not None:
                self.reference(name, line, item_path, "sense", self.sense_names, "senses")
                names[name] = None
        return list(names)

    # -- sections ----------------------------------------------------------------------------

    def config(self, root: Node | None, path: Path) -> NerveConfig:
        top: dict[str, _Entry] = {}
        if root is not None:
            entries = self.mapping(root, _line(root), "", "a mapping at the top level")
            top = self.known(entries or [], _TOP_KEYS, "")
        # Names first: reflexes refer to senses and workflows wherever they sit in the file.
        senses = self.senses(top.get("senses"))
        workflows = self.workflows(top.get("workflows"))
        reflexes = self.reflexes(top.get("reflexes"))
        retention = self.retention(top.get("retention"))
        return NerveConfig(
            path=path,
            senses=MappingProxyType(senses),
            reflexes=tuple(reflexes),
            workflows=MappingProxyType(workflows),
            retention=retention,
            control=self.control(top.get("control")),
        )

    def senses(self, section: _Entry | None) -> dict[str, SenseConfig]:
        if section is None:
            return {}
        entries = self.mapping(section.value, section.line, "senses", "a mapping of sense names")
        if entries is None:
            self.sense_names = None
            return {}
        result: dict[str, SenseConfig] = {}
        declared = self.sense_names = set()
        for entry in entries:
            declared.add(entry.key)
            path = _join("senses", entry.key)
            self.check_name(entry.key, entry.line, path, "sense")
            settings = self.mapping(entry.value, entry.line, path, "a mapping of sense settings")
            fields = self.known(settings or [], _SENSE_KEYS, path)
            group: str | None = DEFAULT_GROUP
            if "group" in fields:
                field = fields["group"]
                group = self.name(field.value, field.line, f"{path}.group", "a group")
                if group is not None:
                    self.check_name(group, field.line, f"{path}.group", "group")
            throttle = self._duration(fields, "throttle", path, DEFAULT_THROTTLE_MS, positive=False)
            timeout = self._duration(fields, "timeout", path, DEFAULT_TIMEOUT_MS, positive=True)
            grace = self._duration(
                fields, "gracePeriod", path, DEFAULT_GRACE_PERIOD_MS, positive=False
            )
            result[entry.key] = SenseConfig(
                name=entry.key,
                group=group or DEFAULT_GROUP,
                throttle_ms=throttle,
                timeout_ms=timeout,
                grace_period_ms=grace,
                line=entry.line,
                memory_max=self.memory_max(fields, path),
            )
        return result

    def _duration(
        self,
        fields: dict[str, _Entry],
        key: str,
        path: str,
        default: int,
        *,
        positive: bool,
        at_least: str | None = None,
    ) -> int:
        if key not in fields:
            return default
        ms = self.duration(fields[key], f"{path}.{key}", positive=positive, at_least=at_least)
        return default if ms is None else ms

    def _integer(
        self,
        fields: dict[str, _Entry],
        key: str,
        path: str,
        default: int,
        *,
        minimum: int = 1,
        maximum: int = MAX_INTEGER,
    ) -> int:
        if key not in fields:
            return default
        value = self.integer(fields[key], f"{path}.{key}", minimum=minimum, maximum=maximum)
        return default if value is None else value

    def workflows(self, section: _Entry | None) -> dict[str, WorkflowConfig]:
        if section is None:
            return {}
        entries = self.mapping(
            section.value, section.line, "workflows", "a mapping of workflow names"
        )
        if entries is None:
            self.workflow_names = None
            return {}
        result: dict[str, WorkflowConfig] = {}
        declared = self.workflow_names = set()
        for entry in entries:
            declared.add(entry.key)
            path = _join("workflows", entry.key)
            self.check_name(entry.key, entry.line, path, "workflow")
            settings = self.mapping(entry.value, entry.line, path, "a mapping of workflow settings")
            fields = self.known(settings or [], _WORKFLOW_KEYS, path)
            overflow = Overflow.QUEUE
            if "overflow" in fields:
                field = fields["overflow"]
                value = self.value(field.value, f"{path}.overflow")
                if isinstance(value, str) and value in tuple(Overflow):
                    overflow = Overflow(value)
                elif value is not _UNREADABLE:
                    self.error(
                        field.line,
                        f"{path}.overflow",
                        f"expected drop or queue, got {_show(value)}",
                    )
            if overflow is Overflow.DROP and "maxQueue" in fields:
                self.error(
                    fields["maxQueue"].line,
                    f"{path}.maxQueue",
                    "only applies with overflow: queue "
                    f"(overflow is drop on line {fields['overflow'].line})",
                )
            result[entry.key] = WorkflowConfig(
                name=entry.key,
                concurrency=self._integer(fields, "concurrency", path, DEFAULT_CONCURRENCY),
                overflow=overflow,
                max_queue=self._integer(fields, "maxQueue", path, DEFAULT_MAX_QUEUE),
                idle_timeout_ms=self._duration(
                    fields, "idleTimeout", path, DEFAULT_IDLE_TIMEOUT_MS, positive=False
                ),
                drain_timeout_ms=self._duration(
                    fields, "drainTimeout", path, DEFAULT_DRAIN_TIMEOUT_MS, positive=False
                ),
                max_steps=self._integer(fields, "maxSteps", path, DEFAULT_MAX_STEPS),
                max_attempts=self._integer(fields, "maxAttempts", path, DEFAULT_MAX_ATTEMPTS),
                line=entry.line,
                memory_max=self.memory_max(fields, path),
            )
        return result

    def reflexes(self, section: _Entry | None) -> list[Reflex]:
        if section is None or _is_null(section.value):
            return []
        node = section.value
        if not (isinstance(node, SequenceNode) and node.tag == _SEQ_TAG):
            self.mismatch(section.line, "reflexes", "a list", node)
            return []
        result: list[Reflex] = []
        for index, item in enumerate(node.value):
            path = f"reflexes[{index}]"
            line = _line(item)
            entries = self.mapping(item, line, path, "a mapping")
            if entries is None:
                continue
            reflex = self.reflex(entries, line, path)
            if reflex is not None:
                result.append(reflex)
        return result

    def reflex(self, entries: list[_Entry], line: int, path: str) -> Reflex | None:
        by_key = {entry.key: entry for entry in entries}
        if "kind" not in by_key:
            self.error(line, f"{path}.kind", "required key is missing; use sense or workflow")
            return None
        kind = self.value(by_key["kind"].value, f"{path}.kind")
        if kind == "sense":
            return self.sense_reflex(entries, line, path)
        if kind == "workflow":
            return self.workflow_reflex(entries, line, path)
        if kind is not _UNREADABLE:
            self.error(
                by_key["kind"].line,
                f"{path}.kind",
                f"expected sense or workflow, got {_show(kind)}",
            )
        return None

    def sense_reflex(self, entries: list[_Entry], line: int, path: str) -> SenseReflex | None:
        elsewhere = {"workflow": "'workflow' belongs to a reflex of kind: workflow"}
        fields = self.known(entries, _SENSE_REFLEX_KEYS, path, elsewhere)
        sense: str | None = None
        if "sense" not in fields:
            self.error(line, f"{path}.sense", "required key is missing: the sense to recompute")
        else:
            field = fields["sense"]
            sense = self.name(field.value, field.line, f"{path}.sense", "a sense")
            if sense is not None:
                self.reference(
                    sense, field.line, f"{path}.sense", "sense", self.sense_names, "senses"
                )
        interval: int | None = None
        if "interval" in fields:
            interval = self.duration(fields["interval"], f"{path}.interval", positive=True)
        on: list[str] | None = []
        if "on" in fields:
            on = self.sense_list(fields["on"], f"{path}.on")
            if on and sense in on:
                self.error(
                    fields["on"].line,
                    f"{path}.on",
                    f"a sense cannot recompute on its own signal: '{sense}' would loop forever",
                )
        elif "interval" not in fields:
            self.error(line, path, "a sense reflex needs interval, on, or both")
        if sense is None:
            return None
        return SenseReflex(sense=sense, interval_ms=interval, on=tuple(on or ()), line=line)

    def workflow_reflex(self, entries: list[_Entry], line: int, path: str) -> WorkflowReflex | None:
        elsewhere = {
            "interval": "interval belongs to a reflex of kind: sense; "
            "a workflow starts only on signals (on:)",
            "sense": "'sense' belongs to a reflex of kind: sense",
        }
        fields = self.known(entries, _WORKFLOW_REFLEX_KEYS, path, elsewhere)
        workflow: str | None = None
        if "workflow" not in fields:
            self.error(line, f"{path}.workflow", "required key is missing: the workflow to start")
        else:
            field = fields["workflow"]
            workflow = self.name(field.value, field.line, f"{path}.workflow", "a workflow")
            if workflow is not None:
                self.reference(
                    workflow,
                    field.line,
                    f"{path}.workflow",
                    "workflow",
                    self.workflow_names,
                    "workflows",
                )
        on: list[str] | None = None
        if "on" not in fields:
            self.error(
                line, f"{path}.on", "required key is missing: the senses whose signals start it"
            )
        else:
            on = self.sense_list(fields["on"], f"{path}.on")
        if workflow is None or not on:
            return None
        return WorkflowReflex(workflow=workflow, on=tuple(on), line=line)

    def retention(self, section: _Entry | None) -> RetentionConfig:
        if section is None:
            return RetentionConfig()
        entries = self.mapping(section.value, section.line, "retention", "a mapping")
        fields = self.known(entries or [], _RETENTION_KEYS, "retention")
        runs = self._retention_part(fields.get("runs"), "retention.runs", _RUNS_KEYS)
        signals = self._retention_part(fields.get("signals"), "retention.signals", _SIGNALS_KEYS)
        run_max_age: int | None = DEFAULT_RUN_MAX_AGE_MS
        run_max_count: int | None = DEFAULT_RUN_MAX_COUNT
        signal_max_age: int | None = DEFAULT_SIGNAL_MAX_AGE_MS
        if "maxAge" in runs:
            run_max_age = self.duration(
                runs["maxAge"], "retention.runs.maxAge", positive=True, nullable=True
            )
        if "maxCount" in runs:
            run_max_count = self.integer(runs["maxCount"], "retention.runs.maxCount", nullable=True)
        if "maxAge" in signals:
            signal_max_age = self.duration(
                signals["maxAge"], "retention.signals.maxAge", positive=True, nullable=True
            )
        return RetentionConfig(
            run_max_age_ms=run_max_age,
            run_max_count=run_max_count,
            signal_max_age_ms=signal_max_age,
        )

    def _retention_part(
        self, entry: _Entry | None, path: str, allowed: tuple[str, ...]
    ) -> dict[str, _Entry]:
        if entry is None:
            return {}
        entries = self.mapping(entry.value, entry.line, path, "a mapping")
        return self.known(entries or [], allowed, path)

    def control(self, section: _Entry | None) -> ControlConfig:
        if section is None:
            return ControlConfig()
        entries = self.mapping(section.value, section.line, "control", "a mapping")
        fields = self.known(entries or [], _CONTROL_KEYS, "control")
        return ControlConfig(
            idle_timeout_ms=self._duration(
                fields,
                "idleTimeout",
                "control",
                DEFAULT_CONTROL_IDLE_TIMEOUT_MS,
                positive=False,
                at_least="1s",
            ),
            max_connections=self._integer(
                fields,
                "maxConnections",
                "control",
                DEFAULT_MAX_CONNECTIONS,
                minimum=MIN_CONNECTIONS,
                maximum=MAX_CONNECTIONS,
            ),
        )


def _join(path: str, key: str) -> str:
    key = _clip(key, 100)  # whole up to 100 characters: a name has at most 64
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------------
# Entry points


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents too deep or too large, aliases expanded.

    PyYAML's composer recurses once per level of nesting, and an alias is only a reference to
    a node composed earlier: ten aliases of ten aliases of ... make a billion values for
    whoever walks the tree, as the validator does when it merges ``<<`` keys; an alias inside
    its own anchor makes a cycle. So the values of the document, each alias counted as all it
    repeats, are counted as they are composed, and each node's size and depth, aliases
    expanded, measured from its children's: the checks are linear in the file, and every
    refusal is a ComposerError with the line where it happened.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._measured: dict[int, tuple[int, int]] = {}  # id(node): (values, depth) expanded

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            assert node is not None  # an alias to nothing raises instead
            if id(node) not in self._measured:
                self._refuse(f"alias *{_clip(str(event.anchor))} is inside its own anchor", event)
            self._count(self._measured[id(node)][0], event)
            return node
        self._depth += 1
        if self._depth > MAX_NESTING:
            self._refuse(f"nested more than {MAX_NESTING} levels deep", event)
        self._count(1, event)
        node = super().compose_node(parent, index)
        self._depth -= 1
        assert node is not None  # compose_node is only called where a node starts
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        measured = [self._measured[id(child)] for child in children]
        depth = 1 + max((depth for _, depth in measured), default=0)
        if depth > MAX_NESTING:
            self._refuse(f"nested more than {MAX_NESTING} levels deep through aliases", node)
        self._measured[id(node)] = (1 + sum(size for size, _ in measured), depth)
        return node

    def _count(self, values: int, event: yaml.Event) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            problem = f"more than {MAX_VALUES:,} values (an alias counts as all it repeats)"
            self._refuse(problem, event)

    @staticmethod
    def _refuse(problem: str, where: yaml.Event | Node) -> None:
        raise yaml.composer.ComposerError(None, None, problem, cast(yaml.Mark, where.start_mark))


def _yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        message = _clip(exc.problem or exc.context or "cannot parse", 200)
        if exc.problem and exc.context:
            context = _clip(exc.context, 200)
            if exc.context_mark is not None and int(exc.context_mark.line) + 1 != line:
                context += f" on line {int(exc.context_mark.line) + 1}"
            # PyYAML splits some sentences in two: "expected a single document" + "but found..."
            if message.startswith("but "):
                message = f"{context}, {message}"
            else:
                message = f"{message} ({context})"
        return line, message
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character
        shown = f"U+{character:04X}" if isinstance(character, int) else repr(character)
        return line, f"control character {shown} is not allowed"
    return None, str(exc)


def parse_config(text: str, path: Path) -> NerveConfig:
    """Validate the text of a nerve.yaml; errors name ``path.name`` and raise ConfigError."""
    validator = _Validator(path.name)
    try:
        root = yaml.compose(text, Loader=_Loader)
        config = validator.config(root, path)
    except yaml.YAMLError as exc:
        line, message = _yaml_error(exc, text)
        raise ConfigError(validator.format(line, "", f"invalid YAML: {message}")) from None
    except _TooManyErrors:
        stopped = validator.format(None, "", f"stopped after {MAX_ERRORS} errors")
        raise ConfigError([*validator.sorted_errors(), stopped]) from None
    if validator.errors:
        raise ConfigError(validator.sorted_errors())
    return config


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_SIZE, or a ConfigError saying why not.

    Anything else is refused before it is opened (opening a FIFO waits for a writer, forever;
    opening a device may do something); the open is non-blocking and what it opened is checked
    again, in case a FIFO was swapped in meanwhile.
    """

    def refuse(reason: str) -> ConfigError:
        return ConfigError(f"{path.name}: cannot read {path}: {reason}")

    def check_regular(mode: int) -> None:
        if not stat.S_ISREG(mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
            raise refuse(f"{kind}, not a regular file")

    try:
        check_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    try:
        check_regular(os.fstat(fd).st_mode)
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        limit = size_text(MAX_FILE_SIZE)
        raise ConfigError(f"{path.name}: {path} is larger than {limit}, the most it may hold")
    return data


def load_config(root: Path) -> NerveConfig:
    """Read and validate ``root/nerve.yaml``; a file that cannot be read is a ConfigError too."""
    path = root / CONFIG_FILE
    data = _read_bounded(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise ConfigError(f"{path.name}:{line}: not UTF-8 text (byte 0x{byte:02x})") from None
    return parse_config(text, path)


def check_packages(root: Path, config: NerveConfig) -> list[str]:
    """Problems with the packages the configuration names, without importing them.

    Kept apart from parsing because importing user code runs it, which only workers may do;
    this lets the daemon and ``nervectl`` refuse a configuration whose code is missing, or
    too large for the master to fingerprint at every reload (see ``usercode.package_files``).

    Then strict modes (nerved.master.modes): the root, nerve.yaml and every named package must be
    writable by nobody but root and the daemon's user. Every caller (the start, each reload,
    ``nerved check``) comes through here before it imports anything, so this is where it is
    checked; under ``--no-strict-modes`` the violations are logged as warnings instead.
    """
    filename = config.path.name
    errors: list[str] = []
    wanted = [("senses", sense.name, sense.line) for sense in config.senses.values()]
    wanted += [("workflows", flow.name, flow.line) for flow in config.workflows.values()]
    for section, name, line in wanted:
        problem = _package_problem(root, section, name)
        if problem is not None:
            errors.append(f"{filename}:{line}: {section}.{name}: {problem}")
    packages = [root / section / name for section, name, _line in wanted]
    return errors + modes.enforce(modes.root_violations(root, root / CONFIG_FILE, packages))


def _package_problem(root: Path, section: str, name: str) -> str | None:
    relative = f"{section}/{name}/__init__.py"
    try:
        mode = os.stat(root / relative).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"no package: {relative} is missing in {root}"
    except OSError as exc:
        return f"cannot check {root / relative}: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return f"no package: {root / relative} is not a regular file"
    try:
        package_files(root / section / name)
    except PackageTooLarge as exc:
        return str(exc)
    return None


_Lined = TypeVar("_Lined")


def unlined(item: _Lined) -> _Lined:
    """The same setting without its line number: moving a block in the file is no change."""
    return cast(_Lined, dataclasses.replace(cast(Any, item), line=0))
