"""Loading and validation of ``<root>/nerve.yaml`` (SPEC section 3).

The file is read with ``yaml.compose`` instead of ``yaml.safe_load`` so that every value keeps
the line it came from: an operator fixing a bad file at 3 a.m. needs ``nerve.yaml:12`` and the
key, not "invalid configuration". Every problem is collected before raising (up to
:data:`MAX_ERRORS`), so that one edit-and-reload cycle can fix them all. The result is frozen
because a running daemon swaps whole configurations on reload and must never see one
half-changed.

The master parses this file in its only thread, at every reload, so no file may cost it more
than a bounded amount of time and memory, whatever its shape: only a regular file is read,
and at most :data:`MAX_FILE_SIZE` of it; nesting is bounded while composing
(:data:`MAX_NESTING`), and so is what aliases expand to (:data:`MAX_VALUES`, against "billion
laughs" documents); every error message is built from clipped text. Whatever a file holds,
it ends in a :class:`ConfigError`, never another exception.

One module per job, each importing only those before it:

- ``messages``: how a value is shown in a message (``got 'ten'``, ``got a list``);
- ``grammar``: durations, sizes and names, nerve.yaml's and ``nervectl``'s alike (no PyYAML);
- ``model``: the frozen dataclasses (:class:`NerveConfig`, :class:`SenseConfig`, ...), their
  defaults, :class:`ConfigError`;
- ``walker``: PyYAML's nodes walked with every error kept, with its line and key path;
- ``cron``: cron expressions and time zones as instants (cronsim, zoneinfo; no PyYAML);
- ``schedules``: a reflex's ``cron:``, ``timezone:``, ``catchUp:`` and ``key:``;
- ``policies``: a workflow's ``roles:``, the :class:`RolePolicy` of each role named there;
- ``metrics``: the top-level ``metrics:``, the :class:`MetricsConfig` (the textfile);
- ``schema``: which keys each section takes, and the :class:`NerveConfig` they make;
- ``load``: the bounded read and the bounded composer: ``load_config``, :func:`parse_config`;
- ``packages``: ``check_packages``, the packages the configuration names;
- ``root``: :func:`load_root`, the one way a root's configuration is read (the start, each
  reload, ``nerved check``): the links to the root, ``load`` and ``packages``, one
  :class:`ConfigError` with every problem.

The public names below are imported on first use (PEP 562's module ``__getattr__``), as
``nerved``'s are: ``nervectl`` imports ``nerved.config.grammar``, which imports this package
first, and must not pay for PyYAML and the daemon's modules on every command.
"""

# typing.TYPE_CHECKING would import typing; type checkers take any name TYPE_CHECKING as true,
# and these imports are what mypy and editors see.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from nerved.config.grammar import (
        NAME_RE,
        NAME_RULE,
        duration_ms,
        parse_duration,
        parse_size,
    )
    from nerved.config.load import MAX_FILE_SIZE, MAX_NESTING, MAX_VALUES, parse_config
    from nerved.config.model import (
        CONFIG_FILE,
        ConfigError,
        ControlConfig,
        CronSpec,
        MetricsConfig,
        NerveConfig,
        OnError,
        Overflow,
        Placement,
        Reflex,
        RetentionConfig,
        RetryPolicy,
        RolePolicy,
        SenseConfig,
        SenseReflex,
        WorkflowConfig,
        WorkflowReflex,
        group_memory_max,
        unlined,
    )
    from nerved.config.root import load_root
    from nerved.config.walker import MAX_ERRORS

_MODULE_OF = {
    "NAME_RE": "nerved.config.grammar",
    "NAME_RULE": "nerved.config.grammar",
    "duration_ms": "nerved.config.grammar",
    "parse_duration": "nerved.config.grammar",
    "parse_size": "nerved.config.grammar",
    "MAX_FILE_SIZE": "nerved.config.load",
    "MAX_NESTING": "nerved.config.load",
    "MAX_VALUES": "nerved.config.load",
    "parse_config": "nerved.config.load",
    "CONFIG_FILE": "nerved.config.model",
    "ConfigError": "nerved.config.model",
    "ControlConfig": "nerved.config.model",
    "MetricsConfig": "nerved.config.model",
    "CronSpec": "nerved.config.model",
    "NerveConfig": "nerved.config.model",
    "OnError": "nerved.config.model",
    "Overflow": "nerved.config.model",
    "Placement": "nerved.config.model",
    "Reflex": "nerved.config.model",
    "RetentionConfig": "nerved.config.model",
    "RetryPolicy": "nerved.config.model",
    "RolePolicy": "nerved.config.model",
    "SenseConfig": "nerved.config.model",
    "SenseReflex": "nerved.config.model",
    "WorkflowConfig": "nerved.config.model",
    "WorkflowReflex": "nerved.config.model",
    "group_memory_max": "nerved.config.model",
    "unlined": "nerved.config.model",
    "load_root": "nerved.config.root",
    "MAX_ERRORS": "nerved.config.walker",
}

__all__ = [
    "CONFIG_FILE",
    "MAX_ERRORS",
    "MAX_FILE_SIZE",
    "MAX_NESTING",
    "MAX_VALUES",
    "NAME_RE",
    "NAME_RULE",
    "ConfigError",
    "ControlConfig",
    "CronSpec",
    "MetricsConfig",
    "NerveConfig",
    "OnError",
    "Overflow",
    "Placement",
    "Reflex",
    "RetentionConfig",
    "RetryPolicy",
    "RolePolicy",
    "SenseConfig",
    "SenseReflex",
    "WorkflowConfig",
    "WorkflowReflex",
    "duration_ms",
    "group_memory_max",
    "load_root",
    "parse_config",
    "parse_duration",
    "parse_size",
    "unlined",
]

if not TYPE_CHECKING:  # hidden from type checkers, which would then take any name as valid
    from nerved._lazy import exports

    __getattr__, __dir__ = exports(globals(), _MODULE_OF, __all__)
