"""Reading ``<root>/nerve.yaml`` within bounds, and parsing it: :func:`load_config`.

The master parses this file in its only thread, at every reload, so no file may cost it more
than a bounded amount of time and memory, whatever its shape: only a regular file is read,
and at most :data:`MAX_FILE_SIZE` of it; nesting is bounded while composing
(:data:`MAX_NESTING`), and so is what aliases expand to (:data:`MAX_VALUES`, against "billion
laughs" documents); every error message is built from clipped text. Whatever a file holds,
it ends in a :class:`ConfigError`, never another exception.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import cast

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from nerved.config.messages import clip
from nerved.config.model import CONFIG_FILE, ConfigError, NerveConfig
from nerved.config.schema import Validator
from nerved.config.walker import MAX_ERRORS, TooManyErrors
from nerved.wire import KiB, size_text

# Bounds on what one file may cost the master (see the module docstring). Parsing is pure
# Python: about 13 s per MiB for the densest YAML on a 2-core VM, so 256 KiB stays a few
# seconds away from the 30 s watchdog, and is still dozens of times any real nerve.yaml.
MAX_FILE_SIZE = 256 * KiB
MAX_NESTING = 32  # levels, aliases and merges included; nerve.yaml itself needs 5
MAX_VALUES = 100_000  # nodes of the document, counting each alias as what it repeats


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
                self._refuse(f"alias *{clip(str(event.anchor))} is inside its own anchor", event)
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
        message = clip(exc.problem or exc.context or "cannot parse", 200)
        if exc.problem and exc.context:
            context = clip(exc.context, 200)
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
    validator = Validator(path.name)
    try:
        root = yaml.compose(text, Loader=_Loader)
        config = validator.config(root, path)
    except yaml.YAMLError as exc:
        line, message = _yaml_error(exc, text)
        raise ConfigError(validator.format(line, "", f"invalid YAML: {message}")) from None
    except TooManyErrors:
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
