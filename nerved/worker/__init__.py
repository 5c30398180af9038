"""What runs in a forked worker, after the fork: its end of the channel, the sense and
workflow workers, the bound on moderator calls.

The master forks each kind of child with one of the mains below, and each imports its
module when the child runs it, never in the master: a forked child's resident memory counts
every page of the master's heap again, so a module the master imports only to hand it to its
children (asyncio and all of this package: about 3 MB) would be held twice by a daemon with
one worker, and once more by each other worker. What the master reads of this package
(:mod:`.timebox`'s bounds, :mod:`.histories`' entry types) imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket
    from collections.abc import Mapping

    from nerved.code.reading import Package


def sense_main(sock: socket.socket, group: str, packages: list[Package]) -> int:
    """A sense group's worker (:func:`nerved.worker.sense.run`)."""
    from nerved.worker import sense

    return sense.run(sock, group, packages)


def workflow_main(sock: socket.socket, package: Package, timeouts: Mapping[str, float]) -> int:
    """A workflow's worker (:func:`nerved.worker.workflow.run`)."""
    from nerved.worker import workflow

    return workflow.run(sock, package, timeouts)


def replay_main(sock: socket.socket, package: Package) -> int:
    """The replay check's child (:func:`nerved.worker.replay.run`)."""
    from nerved.worker import replay

    return replay.run(sock, package)
