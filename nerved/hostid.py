"""This nerved's host id: the name it goes by in a store several hosts share (issue 15).

``--host-id``, else ``$NERVE_HOST_ID``, else the machine id (``/etc/machine-id``: one per
installed system, kept across reboots, what systemd and journald name a machine by), else
the host name. With SQLite it only names this host in ``status``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Final

MACHINE_ID: Final = Path("/etc/machine-id")
_GRAMMAR: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE: Final = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64"


class BadHostId(ValueError):
    """A host id that breaks :data:`RULE`: the message says which and why."""


def check(host_id: str, origin: str) -> str:
    if not _GRAMMAR.fullmatch(host_id):
        raise BadHostId(f"{origin}: {host_id!r} is not a host id ({RULE})")
    return host_id


def resolve(option: str | None) -> str:
    """The host id, from the first of ``option`` (``--host-id``), ``$NERVE_HOST_ID``, the
    machine id and the host name; BadHostId for a given one that breaks the rule."""
    if option is not None:  # --host-id '' too: refused, not the machine id in silence
        return check(option, "--host-id")
    if value := os.environ.get("NERVE_HOST_ID"):
        return check(value, "NERVE_HOST_ID")
    try:
        machine = MACHINE_ID.read_text().strip()
    except OSError:
        machine = ""
    if _GRAMMAR.fullmatch(machine):
        return machine
    name = socket.gethostname().split(".")[0]
    return name if _GRAMMAR.fullmatch(name) else "localhost"
