"""The textfile for node_exporter's textfile collector, written whole or not at all.

node_exporter reads every ``*.prom`` file of its directory at each scrape, whenever that
comes: a file written in place could be read half-written. So the text goes to a hidden
file beside it (``.nerve.prom.<pid>.tmp``: not a ``*.prom``, never read) and is renamed
over it, which is atomic within a directory; a write that fails removes its temporary
file. Not prometheus_client's ``write_to_textfile``, which does the same but leaves the
mode to the umask (systemd's ``UMask=0027`` would hide the file from node_exporter's
user) and follows a link planted at its temporary path; no fsync either: the file is
rewritten every interval and a host that crashes meanwhile loses nothing nerve keeps.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

MODE: Final = 0o644  # node_exporter runs as a user of its own: it must read the file

_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def temporary(path: Path) -> Path:
    """Where ``path`` is written before its rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; raises OSError, leaving no file behind
    but ``path`` as it was."""
    scratch = temporary(path)
    try:
        fd = os.open(scratch, _FLAGS, MODE)
        try:
            os.fchmod(fd, MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise
