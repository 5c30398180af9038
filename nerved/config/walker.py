"""A walker over PyYAML's nodes that reports every problem with its line and key path.

The file is read with ``yaml.compose`` instead of ``yaml.safe_load`` so that every value keeps
the line it came from: an operator fixing a bad file at 3 a.m. needs ``nerve.yaml:12`` and the
key, not "invalid configuration". Every problem is collected before raising (up to
:data:`MAX_ERRORS`), so that one edit-and-reload cycle can fix them all.

:class:`Walker` knows YAML (mappings and their merges, duplicate keys, tags, YAML 1.1's
surprises) and nerve's value grammars; what nerve.yaml holds where is ``schema.py``'s.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nerved.config.grammar import NAME_RE, NAME_RULE, parse_duration, parse_size
from nerved.config.messages import (
    A_LIST,
    A_MAPPING,
    HUGE,
    UNREADABLE,
    clip,
    describe,
    printable,
    show,
)
from nerved.wire import MiB

MAX_ERRORS = 100  # reported before validation stops: beyond them, nobody reads on
MAX_INTEGER = 1_000_000_000  # a count: past it, a value only rejects an absurd one
# memoryMax: below a mebibyte is a unit mistaken (100 meant as 100M), never a limit a Python
# worker could live under (about 20M alone).
MIN_MEMORY_MAX = MiB

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
_DECIMAL_RE = re.compile(r"[-+]?[0-9][0-9_]*")


Choice = TypeVar("Choice", bound=enum.StrEnum)


class Entry(NamedTuple):
    key: str
    value: Node
    line: int  # the key's: an empty value's mark points at whatever token follows it


def short_tag(tag: str) -> str:
    if tag.startswith("tag:yaml.org,"):
        tag = "!!" + tag.removeprefix("tag:yaml.org,2002:")
    return clip(tag)


def node_line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


class TooManyErrors(Exception):
    """Raised by the validator at the error after MAX_ERRORS: the rest would cost, not help."""


# A hint compares the word with every choice: with thousands of senses declared and as many
# misspelt, that alone would stall the master for minutes.
_HINT_CHOICES = 1000


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    candidates = list(choices)
    if len(candidates) > _HINT_CHOICES:
        return ""
    import difflib  # for a hint in an error: not in every master, nor in what it forks

    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def join_key(path: str, key: str) -> str:
    key = clip(key, 100)  # whole up to 100 characters: a name has at most 64
    return f"{path}.{key}" if path else key


class Walker:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        # Each message once, with its line: a mapping merged in many places repeats its errors.
        self.errors: dict[str, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self.workflow_names: set[str] | None = set()

    def format(self, line: int | None, path: str, message: str) -> str:
        """``file:line: path: message``; the path spells the file's own keys, so its control
        characters are shown as ``\\xNN`` (values are quoted by :func:`show` already): an
        escape sequence in a key must not reach the operator's terminal as one."""
        where = f"{self.filename}:{line}" if line is not None else self.filename
        return f"{where}: {printable(path)}: {message}" if path else f"{where}: {message}"

    def error(self, line: int | None, path: str, message: str) -> None:
        text = self.format(line, path, message)
        if text in self.errors:
            return
        if len(self.errors) == MAX_ERRORS:
            raise TooManyErrors
        self.errors[text] = line or 0

    def sorted_errors(self) -> list[str]:
        """File order, which reads best (sorted() is stable: one line keeps the found order)."""
        return sorted(self.errors, key=self.errors.__getitem__)

    # -- structure ---------------------------------------------------------------------------

    def value(self, node: Node, path: str) -> object:
        if isinstance(node, MappingNode):
            return A_MAPPING
        if isinstance(node, SequenceNode):
            return A_LIST
        text = str(node.value)
        if node.tag in (INT_TAG, FLOAT_TAG) and ":" in text:
            # YAML 1.1 reads `1:30` as the base-60 number 90: never what an operator means.
            return text
        if node.tag == INT_TAG and _DECIMAL_RE.fullmatch(text):
            # YAML 1.1 reads `010` as octal 8; a person means ten.
            digits = text.lstrip("+-").replace("_", "").lstrip("0")
            # int() refuses more than 4,300 digits; past 30, the value is never converted.
            number = HUGE if len(digits) > 30 else int(digits or "0")
            return -number if text.startswith("-") else number
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            tag = short_tag(node.tag)
            if node.tag in yaml.constructor.SafeConstructor.yaml_constructors:
                self.error(node_line(node), path, f"cannot read {show(text)} as {tag}")
            else:
                self.error(node_line(node), path, f"unsupported tag {tag}")
            return UNREADABLE

    def entries(self, node: MappingNode, path: str) -> list[Entry]:
        """Keys of a mapping in file order, with duplicates reported instead of overwritten."""
        found: dict[str, Entry] = {}
        inherited: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                for entry in self._merged(value_node, path):
                    if entry.key not in found:
                        found[entry.key] = entry
                        inherited.add(entry.key)
                continue
            line = node_line(key_node)
            if not isinstance(key_node, ScalarNode):
                what = "a list" if isinstance(key_node, SequenceNode) else "a mapping"
                self.error(line, path, f"expected a name as key, got {what}")
                continue
            # The raw text, not the constructed value: `on:` is a boolean in YAML 1.1 and a
            # sense called `404` is an integer, yet both are names here.
            key = str(key_node.value)
            if key in found and key not in inherited:
                self.error(
                    line, join_key(path, key), f"duplicate key (first on line {found[key].line})"
                )
                continue
            inherited.discard(key)
            found[key] = Entry(key, value_node, line)
        return list(found.values())

    def _merged(self, node: Node, path: str) -> list[Entry]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: list[Entry] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                what = show(self.value(source, path))
                self.error(node_line(source), path, f"'<<' expects a mapping to merge, got {what}")
            else:  # never a cycle, nor deeper than MAX_NESTING: the composer saw to it
                merged.extend(self.entries(source, path))
        return merged

    def mapping(self, node: Node, line: int, path: str, expected: str) -> list[Entry] | None:
        """Entries of a mapping value; null and ``{}`` both mean "nothing set here"."""
        if is_null(node):
            return []
        if isinstance(node, MappingNode) and node.tag == MAP_TAG:
            return self.entries(node, path)
        self.mismatch(line, path, expected, node)
        return None

    def mismatch(self, line: int, path: str, expected: str, node: Node) -> None:
        """Report a value of the wrong type, unless it could not even be read (already said)."""
        if isinstance(node, MappingNode | SequenceNode) and node.tag not in (MAP_TAG, SEQ_TAG):
            found = f"a value tagged {short_tag(node.tag)}"
        else:
            value = self.value(node, path)
            if value is UNREADABLE:
                return
            found = describe(value)
        self.error(line, path, f"expected {expected}, got {found}")

    def choice(self, fields: dict[str, Entry], key: str, path: str, default: Choice) -> Choice:
        """``fields[key]``, one of ``default``'s enum's values (``default`` if absent, or
        after an error saying which values there are)."""
        field = fields.get(key)
        if field is None:
            return default
        value = self.value(field.value, f"{path}.{key}")
        choices = tuple(type(default))
        if isinstance(value, str) and value in choices:
            return type(default)(value)
        if value is not UNREADABLE:
            expected = " or ".join(str(c) for c in choices)
            self.error(field.line, f"{path}.{key}", f"expected {expected}, got {show(value)}")
        return default

    def known(
        self,
        entries: list[Entry],
        allowed: tuple[str, ...],
        path: str,
        elsewhere: Mapping[str, str] | None = None,
    ) -> dict[str, Entry]:
        """The entries whose keys are allowed; every other key is reported."""
        result: dict[str, Entry] = {}
        for entry in entries:
            if entry.key in allowed:
                result[entry.key] = entry
                continue
            if elsewhere and entry.key in elsewhere:
                message = f"unknown key here: {elsewhere[entry.key]}"
            else:
                hint = did_you_mean(entry.key, allowed)
                message = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
            self.error(entry.line, join_key(path, entry.key), message)
        return result

    # -- typed values ------------------------------------------------------------------------

    def integer(
        self,
        entry: Entry,
        path: str,
        *,
        nullable: bool = False,
        minimum: int = 1,
        maximum: int = MAX_INTEGER,
    ) -> int | None:
        """A count, by default at least 1: 0 and negatives are never meaningful here."""
        value = self.value(entry.value, path)
        if value is UNREADABLE or (value is None and nullable):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            expected = "an integer or null" if nullable else "an integer"
            self.error(entry.line, path, f"expected {expected}, got {describe(value)}")
        elif value < minimum:
            self.error(entry.line, path, f"must be at least {minimum}, got {show(value)}")
        elif value > maximum:
            self.error(entry.line, path, f"must be at most {maximum}, got {show(value)}")
        else:
            return value
        return None

    def duration(
        self,
        entry: Entry,
        path: str,
        *,
        positive: bool,
        nullable: bool = False,
        at_least: str | None = None,
    ) -> int | None:
        """Milliseconds; ``at_least`` is a duration as written in the file, such as ``1s``."""
        value = self.value(entry.value, path)
        if value is UNREADABLE or (value is None and nullable):
            return None
        try:
            ms = parse_duration(value)
        except ValueError as exc:
            self.error(entry.line, path, f"{exc}{'; or null' if nullable else ''}")
            return None
        if positive and ms == 0:
            self.error(entry.line, path, f"must be longer than 0, got {show(value)}")
            return None
        if at_least is not None and ms < parse_duration(at_least):
            self.error(entry.line, path, f"must be at least {at_least}, got {show(value)}")
            return None
        return ms

    def memory_max(self, fields: dict[str, Entry], path: str) -> int | None:
        """``memoryMax``: a size of at least :data:`MIN_MEMORY_MAX`; absent or null: none."""
        entry = fields.get("memoryMax")
        if entry is None:
            return None
        path = f"{path}.memoryMax"
        value = self.value(entry.value, path)
        if value is UNREADABLE or value is None:
            return None
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.error(entry.line, path, f"{exc}; or null")
            return None
        if size < MIN_MEMORY_MAX:
            self.error(entry.line, path, f"must be at least 1M, got {show(value)}")
            return None
        return size

    def name(self, node: Node, line: int, path: str, what: str) -> str | None:
        """A name given as a value, read from the raw text just as names given as keys are."""
        if isinstance(node, ScalarNode) and not is_null(node):
            return str(node.value)
        self.mismatch(line, path, f"{what} name", node)
        return None

    def check_name(self, name: str, line: int, path: str, what: str) -> None:
        if not NAME_RE.fullmatch(name):
            self.error(line, path, f"{show(name)} is not a valid {what} name: {NAME_RULE}")
