"""Exit codes of nervectl (SPEC §7) and the one exception that carries them to ``main``.

Scripts branch on these numbers, so they are part of the contract: a handler raises
``CliError`` with the code and ``main`` turns it into one line on stderr and that status.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Final

OK: Final = 0
FAILED: Final = 1  # the daemon reported an error, a waited-for run did not complete, init refused
USAGE: Final = 2
UNREACHABLE: Final = 3
NOT_FOUND: Final = 4
INTERRUPTED: Final = 130  # what a shell reports for a command ended by SIGINT


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
