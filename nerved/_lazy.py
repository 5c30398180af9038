"""A package's public names imported on first use (PEP 562's module ``__getattr__``).

``nerved.store`` and ``nerved.config`` export names whose modules are costly or must not
come with the package (sqlite3 into a worker, PyYAML into ``nervectl``). (``nerved`` itself
writes its own: it is imported before ``nerved.early`` holds SIGHUP, where every module
loaded counts.)
"""

from __future__ import annotations

# Nothing at run time, not even typing (3 ms): nervectl imports this on every command.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any


def exports(
    namespace: dict[str, Any], module_of: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package whose globals are ``namespace``: a name in
    ``module_of`` is imported from its module (a full dotted name) on first use, then kept
    in ``namespace``, so later lookups never come here."""
    package = namespace["__name__"]
    names = set(public)

    def getattr_(name: str) -> object:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
