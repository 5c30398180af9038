"""What every command handler gets: the parsed options, the output, and the daemon on demand.

The connection is opened lazily so that the commands that need no daemon (``init``) never
touch the socket, and closed once by ``main`` whatever the handler did.
"""

from __future__ import annotations

import json
import sys

from nervectl.client import Client

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    import argparse
    from typing import Any, TextIO


# Control characters but newline and tab: C0, DEL and C1 (0x9b is a CSI of its own).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (9, 10)}


def visible(text: str) -> str:
    """``text`` with every control character but newline and tab shown as ``\\xNN``.

    What nervectl prints for people comes in part from elsewhere: a run's error is the text
    of an exception in user code, a log line what a sense wrote. Printed raw, an escape
    sequence in it would be obeyed by the operator's terminal (recolour it, rewrite the
    title, hide lines, or on some terminals answer back into the shell's input).
    """
    return text.translate(_CONTROLS)


class Context:
    """``args`` as argparse parsed them, ``socket`` the control socket's path, ``json``
    whether ``--json`` was given, ``out`` where results go (stdout)."""

    def __init__(
        self, args: argparse.Namespace, socket: str, json: bool, out: TextIO | None = None
    ) -> None:
        self.args = args
        self.socket = socket
        self.json = json
        self.out = sys.stdout if out is None else out
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The daemon's client, connected by its first call (:mod:`nervectl.client`)."""
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """:meth:`Client.call`: the method's result; ``timeout`` in seconds (None: 30 s)."""
        return self.client.call(method, params, timeout)

    def print(self, text: str = "") -> None:
        """Text for people, on stdout, control characters shown (:func:`visible`)."""
        print(visible(text), file=self.out)

    def note(self, text: str) -> None:
        """A note for the operator, on stderr (never in what a script reads on stdout)."""
        print(f"nervectl: note: {visible(text)}", file=sys.stderr)

    def print_json(self, value: Any) -> None:
        """A whole result as ``--json`` prints it: indented, for jq and for people alike."""
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.out)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
