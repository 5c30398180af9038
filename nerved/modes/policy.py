"""Strict modes' policy and its reporting: strict or not, a violation's message, the refusals.

One process-wide setting (``--no-strict-modes``, :func:`configure`) decides what a
violation does: :func:`enforce` turns violations into refusals, or into WARNING lines. It is
a module of its own so that the checks (:mod:`nerved.modes.checks`) and the state files
(:mod:`nerved.modes.statefiles`) share the policy and the words of a message without
importing each other's work; it imports nothing of nerve.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("nerved.modes")

_strict = True
_refusals = 0  # strict-modes refusals made in this process (see refusals())

HINT: Final = (
    "strict modes: nerved runs code and keeps state only where nobody but root and its own"
    " user can write (nerved --no-strict-modes would only warn)"
)


def configure(*, strict: bool) -> None:
    """Set the policy of this process, once, from the command line (``--no-strict-modes``).

    A process-wide setting, like logging's: the reloader and ``nerved check`` reach the
    checks through nerved.config's ``check_packages``, which the flag must not have to be
    threaded through.
    """
    global _strict
    _strict = strict


def strict() -> bool:
    return _strict


@dataclass(frozen=True, slots=True)
class Violation:
    """One path nerve cannot trust: what is wrong with it and the command that fixes it."""

    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"strict modes: {self.path} {self.problem}; fix: {self.fix}"


def enforce(violations: Iterable[Violation]) -> list[str]:
    """The refusals: every violation's message; or, with ``--no-strict-modes``, none (each is
    logged as a WARNING instead, so that it is said at start and at every reload)."""
    global _refusals
    messages = [str(violation) for violation in violations]
    if not messages:
        return messages
    if _strict:
        _refusals += 1
        return [*messages, HINT]
    for message in messages:
        log.warning("%s (ignored: --no-strict-modes)", message)
    return []


def refusals() -> int:
    """How many times :func:`enforce` refused something in this process (never under
    ``--no-strict-modes``): the daemon compares it across reloads, nerved.master.autoreload."""
    return _refusals


def user_name(uid: int) -> str:
    """The user's name, or its number where it has none (for a ``chown`` command)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def user_label(uid: int) -> str:
    """``alice (uid 1000)``, or ``uid 1000`` for a user without a name."""
    name = user_name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def mode_text(st: os.stat_result) -> str:
    """``0644``: the permission bits as ``chmod`` takes them."""
    return f"{stat.S_IMODE(st.st_mode):04o}"
