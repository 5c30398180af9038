"""The top-level ``metrics:`` of nerve.yaml: where the Prometheus text is written for
node_exporter's textfile collector, and how often.

Its own module because it is a section of its own, and the only one that names a file of
the host's: its form is checked here (absolute, ending in ``.prom``, the only files the
textfile collector reads); whether its directory can be written is known only when the
daemon writes it, as its own user, so a directory that is missing or not writable is a
warning in the daemon's log then, not a configuration error (``nerved check`` may run as
another user, and node_exporter may be installed after nerve).
"""

from __future__ import annotations

import os
from pathlib import Path

from nerved.config.messages import UNREADABLE, describe, show
from nerved.config.model import DEFAULT_METRICS_INTERVAL_MS, MetricsConfig
from nerved.config.walker import Entry, Walker

_METRICS_KEYS = ("textfile", "interval")
MAX_PATH = 4096  # PATH_MAX: longer is no path the kernel takes


def metrics_config(
    walker: Walker, section: Entry | None, root: Path | None = None
) -> MetricsConfig:
    """The ``metrics:`` section; its defaults when it is absent (no textfile). ``root``: the
    nerve root the file sits in, where the textfile may not go (see :func:`_textfile`)."""
    if section is None:
        return MetricsConfig()
    entries = walker.mapping(section.value, section.line, "metrics", "a mapping")
    fields = walker.known(entries or [], _METRICS_KEYS, "metrics")
    interval = DEFAULT_METRICS_INTERVAL_MS
    if "interval" in fields:
        ms = walker.duration(fields["interval"], "metrics.interval", positive=True, at_least="1s")
        if ms is not None and ms > 3_600_000:
            walker.error(fields["interval"].line, "metrics.interval", "must be at most 1h")
        elif ms is not None:
            interval = ms
    textfile = None
    if "textfile" in fields:
        textfile = _textfile(walker, fields["textfile"], root)
    return MetricsConfig(textfile=textfile, interval_ms=interval)


def _textfile(walker: Walker, entry: Entry, root: Path | None) -> Path | None:
    value = walker.value(entry.value, "metrics.textfile")
    if value is UNREADABLE or value is None:
        return None  # null: no textfile, as when the key is absent
    path = "metrics.textfile"
    if not isinstance(value, str) or not value:
        walker.error(entry.line, path, f"must be a file's path, got {describe(value)}")
        return None
    if "\x00" in value or len(value.encode(errors="surrogateescape")) > MAX_PATH:
        walker.error(entry.line, path, f"is no path the kernel takes: {show(value)}")
        return None
    file = Path(value)
    if not file.is_absolute():
        walker.error(entry.line, path, f"must be an absolute path, got {show(value)}")
        return None
    if file.suffix != ".prom" or file.name == ".prom":
        walker.error(
            entry.line,
            path,
            f"must end in .prom (node_exporter's textfile collector reads no other file),"
            f" got {show(value)}",
        )
        return None
    if root is not None and _within(file, root):
        walker.error(
            entry.line,
            path,
            f"{show(value)} is inside the nerve root ({show(str(root))}): nerve watches it, and"
            " each write would be a change to reload for; write it elsewhere, such as"
            " /var/lib/prometheus/node-exporter/nerve.prom",
        )
        return None
    return file


def _within(file: Path, root: Path) -> bool:
    """Whether ``file`` is in ``root``, as written or once links are followed."""
    absolute = Path(os.path.abspath(root))
    if Path(os.path.abspath(file)).is_relative_to(absolute):
        return True
    try:
        return file.resolve().is_relative_to(absolute.resolve())
    except (OSError, RuntimeError):  # a loop of links, a directory not readable: as written
        return False
