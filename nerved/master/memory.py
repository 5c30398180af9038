"""Resident memory of a process, read from ``/proc/<pid>/statm``.

``status`` shows it per worker and for the whole tree, and the metrics per unit: one reader,
so that a worker's RSS in ``nervectl top`` and in ``nerve_worker_resident_memory_bytes`` is
the same number.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Final

PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def rss(pid: int) -> int | None:
    """Resident bytes of ``pid``; None once it is gone (or /proc cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE
    return None


def total_rss(pids: Iterable[int]) -> int:
    """Resident bytes of ``pids`` together, those gone counted as 0."""
    return sum(rss(pid) or 0 for pid in pids)
