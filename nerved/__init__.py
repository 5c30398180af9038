"""nerve: a host-local automation daemon.

User code imports its types from here::

    from nerved import WorkflowDefinition, ThreadState, WorkflowContext, SenseContext

They are imported on first use (PEP 562's module ``__getattr__``), not with the package,
because every ``nerved.*`` module imports this package first: the daemon's entry point
``nerved.cli`` (whose ``main()`` puts SIGHUP on hold: until then a SIGHUP kills nerved) and
``nervectl``'s ``nerved.wire`` and ``nerved._version``. Importing them eagerly brought
``nerved.api``, ``nerved.store`` and sqlite3 (about 35 ms here) before nerved could hold a
SIGHUP, and into every ``nervectl`` command.
"""

from nerved._version import __version__

# typing.TYPE_CHECKING would import typing (3 ms) before SIGHUP is held; type checkers take
# any name TYPE_CHECKING as true, and these imports are what mypy and editors see.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from nerved.api import (
        CommandEvent,
        ComputeFn,
        Fatal,
        JsonValue,
        ModerateFn,
        ModerateResult,
        Retry,
        RoleFn,
        SenseContext,
        Sleep,
        ThreadState,
        WaitFor,
        WorkflowContext,
        WorkflowDefinition,
        sleep,
        wait_for,
    )
    from nerved.store.records import LogEntry

__all__ = [
    "CommandEvent",
    "ComputeFn",
    "Fatal",
    "JsonValue",
    "LogEntry",
    "ModerateFn",
    "ModerateResult",
    "Retry",
    "RoleFn",
    "SenseContext",
    "Sleep",
    "ThreadState",
    "WaitFor",
    "WorkflowContext",
    "WorkflowDefinition",
    "__version__",
    "sleep",
    "wait_for",
]

_MODULE_OF = {name: "nerved.api" for name in __all__ if name not in ("LogEntry", "__version__")}
_MODULE_OF["LogEntry"] = "nerved.store.records"

if not TYPE_CHECKING:  # hidden from type checkers, which would then take any name as valid

    def __getattr__(name: str) -> object:
        """Import a public name on first use, then keep it (later lookups never come here)."""
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module 'nerved' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
