"""The schema of nerve.yaml (SPEC section 3): which keys each section takes, and what they make.

:class:`Validator` walks the document with :class:`~nerved.config.walker.Walker`'s checks and
builds a :class:`~nerved.config.model.NerveConfig`, reporting every problem it finds on the
way, references included: a reflex naming a sense or workflow nobody declared.
"""

from __future__ import annotations

import enum
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

from yaml.nodes import Node, ScalarNode, SequenceNode

from nerved.config.messages import UNREADABLE, clip, show
from nerved.config.metrics import metrics_config
from nerved.config.model import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONTROL_IDLE_TIMEOUT_MS,
    DEFAULT_DRAIN_TIMEOUT_MS,
    DEFAULT_GRACE_PERIOD_MS,
    DEFAULT_GROUP,
    DEFAULT_IDLE_TIMEOUT_MS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_STEPS,
    DEFAULT_RUN_MAX_AGE_MS,
    DEFAULT_RUN_MAX_COUNT,
    DEFAULT_SIGNAL_MAX_AGE_MS,
    DEFAULT_THROTTLE_MS,
    DEFAULT_TIMEOUT_MS,
    ControlConfig,
    NerveConfig,
    Overflow,
    Placement,
    Reflex,
    RetentionConfig,
    SenseConfig,
    SenseReflex,
    WorkflowConfig,
    WorkflowReflex,
)
from nerved.config.policies import role_policies
from nerved.config.schedules import cron_spec, json_pointer
from nerved.config.walker import (
    MAX_INTEGER,
    SEQ_TAG,
    Entry,
    Walker,
    did_you_mean,
    is_null,
    join_key,
    node_line,
)

MIN_CONNECTIONS, MAX_CONNECTIONS = 32, 4096

_Choice = TypeVar("_Choice", bound=enum.StrEnum)
_TOP_KEYS = ("senses", "reflexes", "workflows", "retention", "control", "metrics", "store")
STORE_SCHEMES: Final = ("postgresql://", "postgres://")
_SENSE_KEYS = ("group", "throttle", "timeout", "gracePeriod", "memoryMax")
_CRON_KEYS = ("cron", "timezone", "catchUp")
_SENSE_REFLEX_KEYS = ("kind", "sense", "interval", "on", *_CRON_KEYS)
_WORKFLOW_REFLEX_KEYS = ("kind", "workflow", "on", "key", *_CRON_KEYS)
_WORKFLOW_KEYS = (
    "concurrency",
    "overflow",
    "maxQueue",
    "idleTimeout",
    "drainTimeout",
    "maxSteps",
    "maxAttempts",
    "memoryMax",
    "placement",
    "roles",
)
_RETENTION_KEYS = ("runs", "signals")
_RUNS_KEYS = ("maxAge", "maxCount")
_SIGNALS_KEYS = ("maxAge",)
_CONTROL_KEYS = ("idleTimeout", "maxConnections")


class Validator(Walker):
    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        # Names declared, valid or not: a bad sense definition should not also produce an
        # "unknown sense" for every reflex that uses it. None: the section itself was unusable.
        self.sense_names: set[str] | None = set()
        self.workflow_names: set[str] | None = set()

    def reference(
        self, name: str, line: int, path: str, what: str, declared: set[str] | None, section: str
    ) -> None:
        if declared is None or name in declared:
            return
        hint = did_you_mean(name, declared)
        if not hint and "," in name:
            hint = f" (for several, use a list: [{clip(name)}])"
        self.error(line, path, f"unknown {what} {show(name)}{hint}; declare it under {section}:")

    def sense_list(self, entry: Entry, path: str) -> list[str] | None:
        """Sense names for ``on``; a single name is accepted as a list of one."""
        node = entry.value
        if isinstance(node, ScalarNode) and not is_null(node):
            items: list[tuple[Node, int]] = [(node, entry.line)]
        elif isinstance(node, SequenceNode) and node.tag == SEQ_TAG:
            items = [(item, node_line(item)) for item in node.value]
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
        top: dict[str, Entry] = {}
        if root is not None:
            entries = self.mapping(root, node_line(root), "", "a mapping at the top level")
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
            metrics=metrics_config(self, top.get("metrics"), path.parent),
            store=self.store(top.get("store")),
        )

    def store(self, entry: Entry | None) -> str | None:
        """``store:``: ``sqlite`` (logs.db in the state directory: the default) or a
        PostgreSQL URL (issue 15), checked for its scheme only: libpq reads the rest."""
        if entry is None:
            return None
        value = self.value(entry.value, "store")
        if value is UNREADABLE:
            return None
        if not isinstance(value, str):
            self.mismatch(entry.line, "store", "sqlite or a postgresql:// URL", entry.value)
            return None
        if value == "sqlite":
            return None
        if not value.startswith(STORE_SCHEMES):
            self.error(
                entry.line, "store",
                f"expected sqlite or a postgresql:// URL, got {_scheme(value)}",
            )  # fmt: skip
            return None
        return value

    def senses(self, section: Entry | None) -> dict[str, SenseConfig]:
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
            path = join_key("senses", entry.key)
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
        fields: dict[str, Entry],
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
        fields: dict[str, Entry],
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

    def workflows(self, section: Entry | None) -> dict[str, WorkflowConfig]:
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
            path = join_key("workflows", entry.key)
            self.check_name(entry.key, entry.line, path, "workflow")
            settings = self.mapping(entry.value, entry.line, path, "a mapping of workflow settings")
            fields = self.known(settings or [], _WORKFLOW_KEYS, path)
            overflow = self._choice(fields, "overflow", path, Overflow.QUEUE)
            placement = self._choice(fields, "placement", path, Placement.LOCAL)
            if overflow is Overflow.DROP and "maxQueue" in fields:
                self.error(
                    fields["maxQueue"].line,
                    f"{path}.maxQueue",
                    "only applies with overflow: queue "
                    f"(overflow is drop on line {fields['overflow'].line})",
                )
            roles = fields.get("roles")
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
                placement=placement,
                roles=MappingProxyType(
                    {} if roles is None else role_policies(self, roles, f"{path}.roles")
                ),
            )
        return result

    def _choice(self, fields: dict[str, Entry], key: str, path: str, default: _Choice) -> _Choice:
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

    def reflexes(self, section: Entry | None) -> list[Reflex]:
        if section is None or is_null(section.value):
            return []
        node = section.value
        if not (isinstance(node, SequenceNode) and node.tag == SEQ_TAG):
            self.mismatch(section.line, "reflexes", "a list", node)
            return []
        result: list[Reflex] = []
        for index, item in enumerate(node.value):
            path = f"reflexes[{index}]"
            line = node_line(item)
            entries = self.mapping(item, line, path, "a mapping")
            if entries is None:
                continue
            reflex = self.reflex(entries, line, path)
            if reflex is not None:
                result.append(reflex)
        return result

    def reflex(self, entries: list[Entry], line: int, path: str) -> Reflex | None:
        by_key = {entry.key: entry for entry in entries}
        if "kind" not in by_key:
            self.error(line, f"{path}.kind", "required key is missing; use sense or workflow")
            return None
        kind = self.value(by_key["kind"].value, f"{path}.kind")
        if kind == "sense":
            return self.sense_reflex(entries, line, path)
        if kind == "workflow":
            return self.workflow_reflex(entries, line, path)
        if kind is not UNREADABLE:
            self.error(
                by_key["kind"].line,
                f"{path}.kind",
                f"expected sense or workflow, got {show(kind)}",
            )
        return None

    def clock_or_signals(
        self, fields: dict[str, Entry], path: str, others: tuple[str, ...]
    ) -> None:
        """``cron`` stands instead of ``others`` (``on``, and a sense's ``interval``)."""
        if "cron" not in fields:
            return
        for key in others:
            if key in fields:
                self.error(
                    fields["cron"].line,
                    f"{path}.cron",
                    f"cron replaces {' and '.join(others)}: a reflex fires on a clock or on "
                    f"signals, not both ({key} is on line {fields[key].line})",
                )
                return

    def sense_reflex(self, entries: list[Entry], line: int, path: str) -> SenseReflex | None:
        elsewhere = {
            "workflow": "'workflow' belongs to a reflex of kind: workflow",
            "key": "'key' belongs to a reflex of kind: workflow",
        }
        fields = self.known(entries, _SENSE_REFLEX_KEYS, path, elsewhere)
        self.clock_or_signals(fields, path, ("interval", "on"))
        cron = cron_spec(self, fields, path)
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
        elif "interval" not in fields and "cron" not in fields:
            self.error(line, path, "a sense reflex needs interval, on, both, or cron")
        if sense is None:
            return None
        return SenseReflex(
            sense=sense, interval_ms=interval, on=tuple(on or ()), line=line, cron=cron
        )

    def workflow_reflex(self, entries: list[Entry], line: int, path: str) -> WorkflowReflex | None:
        elsewhere = {
            "interval": "interval belongs to a reflex of kind: sense; "
            "a workflow starts on signals (on:) or on a clock (cron:)",
            "sense": "'sense' belongs to a reflex of kind: sense",
        }
        fields = self.known(entries, _WORKFLOW_REFLEX_KEYS, path, elsewhere)
        self.clock_or_signals(fields, path, ("on",))
        cron = cron_spec(self, fields, path)
        key: str | None = None
        if "key" in fields:
            key = json_pointer(self, fields["key"], f"{path}.key")
            if "cron" in fields:
                self.error(
                    fields["key"].line,
                    f"{path}.key",
                    "key reads a signal's payload; a cron reflex keys each run by its firing",
                )
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
        if "on" in fields:
            on = self.sense_list(fields["on"], f"{path}.on")
        elif "cron" not in fields:
            self.error(
                line,
                f"{path}.on",
                "required key is missing: the senses whose signals start it (or cron:)",
            )
        if workflow is None or not (on or cron) or (on and "cron" in fields):
            return None
        return WorkflowReflex(workflow=workflow, on=tuple(on or ()), line=line, cron=cron, key=key)

    def retention(self, section: Entry | None) -> RetentionConfig:
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
        self, entry: Entry | None, path: str, allowed: tuple[str, ...]
    ) -> dict[str, Entry]:
        if entry is None:
            return {}
        entries = self.mapping(entry.value, entry.line, path, "a mapping")
        return self.known(entries or [], allowed, path)

    def control(self, section: Entry | None) -> ControlConfig:
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


def _scheme(url: str) -> str:
    """What to show of a store URL that is not one: its scheme, never the rest (a password
    may follow)."""
    scheme, sep, _rest = url.partition("://")
    return f"{show(scheme)} URL" if sep else "something else"
