"""``workflow list`` and ``workflow trigger [--wait]``; how a run and its entries are shown
(``workflow inspect`` is :mod:`nervectl.history`).
"""

from __future__ import annotations

import sys

from nervectl import render
from nervectl.client import FOREVER, RemoteError
from nervectl.exits import FAILED, INTERRUPTED, OK, USAGE, CliError
from nervectl.limits import MAX_QUERY_LIMIT
from nervectl.times import format_ago, format_duration, format_local, now_ms

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

    from nervectl.context import Context

# workflow.wait's own timeout comes first: the socket's is only a backstop against a daemon
# that stopped answering, so it waits this much longer.
WAIT_MARGIN: Final = 5.0

_RUN_FIELDS: Final = (
    ("runId", "run"),
    ("workflow", "workflow"),
    ("status", "status"),
    ("steps", "steps"),
    ("createdAt", "created"),
    ("updatedAt", "updated"),
    ("error", "error"),
)


SHORT_ID: Final = 8
"""Characters of a run id ``workflow list`` shows: the prefix every command takes."""
LIST_DEFAULT_LIMIT: Final = 100  # workflow.list's own default


def workflow_list(ctx: Context) -> int:
    args = ctx.args
    filters = {
        "all": True if args.all else None,
        # one status as a string, several as a list: workflow.list takes both
        "status": args.status[0] if args.status and len(args.status) == 1 else args.status,
        "workflow": args.workflow,
        "host": args.host,
    }
    limit = args.limit or LIST_DEFAULT_LIMIT
    runs: list[dict[str, Any]] = ctx.call("workflow.list", {**filters, "limit": limit})
    if ctx.json:
        ctx.print_json(runs)
        return OK
    if not runs:
        everything = args.all or args.status
        of = f" of host {args.host}" if args.host else ""
        ctx.print(
            f"no runs{of}" if everything
            else f"no active runs{of} (--all lists finished ones too)"
        )  # fmt: skip
        return OK
    now = now_ms()
    # HOST only for a store several hosts share: there a run carries the host that drove
    # it; with SQLite no run has one, and the table stays as it always was.
    fleet = any(run.get("host") is not None for run in runs)
    rows = [
        (
            _run_id(run.get("runId"), args.full),
            run.get("workflow", "-"),
            *((run.get("host") or "-",) if fleet else ()),  # an any run still queued: none
            run.get("status", "-"),
            run.get("steps", "-"),
            _age(run.get("createdAt"), now),
            _took(run, now),
            in_flight(run, now),
            render.cell(run.get("error"), 200),
        )
        for run in runs
    ]
    headers = (
        "RUN", "WORKFLOW", *(("HOST",) if fleet else ()), "STATUS", "STEPS", "AGE",
        "DURATION", "IN FLIGHT", "ERROR",
    )  # fmt: skip
    last = len(headers) - 1  # cut first: ERROR, then IN FLIGHT, then WORKFLOW
    fitted = render.fit(rows, headers, render.terminal_width(ctx.out), cut=(last, last - 1, 1))
    ctx.print(render.table(fitted, headers))
    if len(runs) >= limit:  # a full page: say what it leaves out, never pass for the whole
        total = int(ctx.call("workflow.count", filters).get("count", 0))
        if total > len(runs):
            narrow = "--status, --workflow, --host" if fleet else "--status, --workflow"
            how = "use --limit" if limit < MAX_QUERY_LIMIT else f"narrow with {narrow}"
            ctx.print(f"{total - len(runs)} more ({how})")
    note = fatal_note(runs)
    if note:
        ctx.note(note)
    return OK


def _run_id(run_id: Any, full: bool) -> str:
    text = "-" if run_id is None else str(run_id)
    return text if full else text[:SHORT_ID]


def _age(created: Any, now: int) -> str:
    """How long ago the run was triggered."""
    if not isinstance(created, (int, float)):
        return "-"
    return format_duration(max(0, now - created) / 1000)


def _took(run: Mapping[str, Any], now: int) -> str:
    """How long a final run took, trigger to end; ``-`` for an active one (IN FLIGHT says
    where it stands)."""
    created, updated = run.get("createdAt"), run.get("updatedAt")
    if run.get("status") in _ACTIVE or not isinstance(created, (int, float)):
        return "-"
    if not isinstance(updated, (int, float)):
        return "-"
    took = max(0, updated - created)
    return f"{int(took)}ms" if took < 1000 else format_duration(took / 1000)


_ACTIVE: Final = frozenset({"queued", "started", "waiting"})


def fatal_note(runs: list[dict[str, Any]]) -> str | None:
    """What to say when a listed run waits on a worker in state ``fatal`` (a newer daemon
    sends each active run's ``worker``): those runs cannot go on until the code is fixed."""
    names = sorted({str(run.get("workflow")) for run in runs if run.get("worker") == "fatal"})
    if not names:
        return None
    which = f"workflow {names[0]}" if len(names) == 1 else f"workflows {', '.join(names)}"
    return (
        f"the worker of {which} is fatal: its runs wait until its code is fixed and reloaded"
        " (nervectl status says why)"
    )


def run_fields(run: dict[str, Any]) -> str:
    """The run's own fields first, in the protocol's order, then whatever else it carries,
    each in words (``retryOf`` is ``retry of``: :func:`nervectl.render.label`). A field that
    says nothing is left out: no error, no retry of, no workers lost (``attempts`` 0), no
    key; ``--json`` has them all."""
    pairs: list[tuple[str, Any]] = []
    for key, label in _RUN_FIELDS:
        value = run.get(key)
        if key in ("createdAt", "updatedAt"):
            value = format_local(value)
        elif key == "error":
            if value is None:
                continue
            value = render.one_line(str(value))
        pairs.append((label, "-" if value is None else value))
    # Where it runs, on a store several hosts share: the host that last drove it, and its
    # workflow's placement (``any``: whichever host claims it; a queued one has no host
    # yet). With SQLite no run has a host and every run is ``local``: neither is shown.
    if run.get("host") is not None:
        pairs.append(("host", str(run["host"])))
    if run.get("host") is not None or run.get("placement") not in (None, "local"):
        pairs.append(("placement", str(run.get("placement") or "-")))
    if run.get("attempts"):  # workers that died under it; maxAttempts of them crash it
        pairs.append(("workers lost", run["attempts"]))
    if run.get("retryOf") is not None:
        pairs.append(("retry of", str(run["retryOf"])))
    if run.get("idempotencyKey") is not None:  # shown only when it was triggered with one
        pairs.append(("key", str(run["idempotencyKey"])))
    if run.get("progress") is not None:
        pairs.append(("in flight", in_flight(run)))
    pending = run.get("pendingSignals")
    if pending:  # signals no wait took yet, oldest first
        names = ", ".join(render.one_line(str(p.get("name"))) for p in pending[:10])
        more = f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        pairs.append(("pending signals", f"{len(pending)}: {names}{more}"))
    if "triggerPayloadUnreadable" in run:
        pairs.append(("payload", f"[unreadable: {run['triggerPayloadUnreadable']}]"))
    elif "triggerPayload" in run:
        pairs.append(("payload", render.cell(run["triggerPayload"])))
    # An active run's try, next try and wait are in its "in flight" line; a final run has none.
    known = {key for key, _ in _RUN_FIELDS} | {
        "events", "progress", "tries", "retryAt", "idempotencyKey", "waitFor", "wakeAt",
        "pendingSignals", "attempts", "retryOf", "triggerPayload", "triggerPayloadUnreadable",
        "host", "placement",
    }  # fmt: skip
    pairs += [
        (key, render.cell(value))
        for key, value in run.items()
        if key not in known and value not in (None, False, 0, "", [], {})  # says nothing
    ]
    return render.fields(pairs)


def summarise(entry: Mapping[str, Any], width: int = 100) -> str:
    """One line per history entry: for a step, who spoke and what they said."""
    payload = entry.get("payload")
    marker = render.unreadable(entry)
    if marker is not None:
        return render.truncate(marker, width)
    kind = entry.get("type")
    if kind in ("step_complete", "input") and isinstance(payload, dict):
        event = payload.get("event")
        said = event.get("type", "?") if isinstance(event, dict) else "?"
        way = f"{payload.get('role', '?')} ->" if kind == "step_complete" else "moderator <-"
        return render.truncate(f"{way} {said} {render.compact(event)}", width)
    if kind == "step_failed" and isinstance(payload, dict):
        retry_at, at = payload.get("retryAt"), entry.get("ts")
        then = "no more tries"
        if isinstance(retry_at, (int, float)) and isinstance(at, (int, float)):
            then = f"next try after {format_duration(max(0, retry_at - at) / 1000)}"
        text = f"{payload.get('role', '?')} try {payload.get('try', '?')}, {then}: "
        return render.truncate(render.one_line(f"{text}{payload.get('error')}"), width)
    if kind == "waiting" and isinstance(payload, dict):
        until = payload.get("until")
        deadline = "" if until is None else f" (until {format_local(until)})"
        if payload.get("wait") is None:
            text = f"sleeps {format_duration((payload.get('sleep') or 0) / 1000)}{deadline}"
        else:
            text = f"waits for signal {payload.get('wait')!r}" + (
                deadline if until is not None else ", no deadline"
            )
        return render.truncate(render.one_line(text), width)
    if kind == "signal" and isinstance(payload, dict):
        text = f"{payload.get('name')!r} {render.compact(payload.get('payload'))}"
        return render.truncate(render.one_line(text), width)
    if kind == "resumed" and isinstance(payload, dict):
        lost = payload.get("attempt", "?")
        text = f"after {payload.get('reason')}; workers lost under it: {lost} (maxAttempts)"
        return render.truncate(render.one_line(text), width)
    if kind == "copied" and isinstance(payload, dict):
        steps = payload.get("steps")
        these = "the next step is" if steps == 1 else f"the next {steps} steps are"
        text = f"{these} run {payload.get('from')}'s, kept"
        return render.truncate(render.one_line(f"{text}, not run again"), width)
    if kind == "cancelled" and isinstance(payload, dict):
        reason = payload.get("reason")
        text = f"by uid {payload.get('uid')}" + ("" if reason is None else f": {reason}")
        return render.truncate(render.one_line(text), width)
    return render.cell(payload, width)


def in_flight(run: Mapping[str, Any], now: int | None = None) -> str:
    """Where a started run stands (its ``progress``): ``step 3 (role writer, try 2) for
    12s``, or ``step 3, try 2 due in 4s`` while it waits to try again; a waiting run's wait,
    ``signal 'approve', timeout in 23h``; ``-`` otherwise."""
    if run.get("status") == "waiting":
        wake_at, name = run.get("wakeAt"), run.get("waitFor")
        if name is None:
            return f"sleeps, wakes {format_ago(wake_at, now)}"
        due = "" if wake_at is None else f", timeout {format_ago(wake_at, now)}"
        return f"signal {render.one_line(str(name))!r}{due}"
    progress = run.get("progress")
    if not isinstance(progress, dict):
        return "-"
    step, tries = progress.get("step", "?"), progress.get("try", 1)
    retry_at = progress.get("retryAt")
    role = progress.get("role")
    if retry_at is not None:
        who = f" (role {role})" if role else ""
        return f"step {step}{who}, try {tries} due {format_ago(retry_at, now)}"
    details = ([f"role {role}"] if role else []) + ([f"try {tries}"] if tries != 1 else [])
    where = f"step {step}" + (f" ({', '.join(details)})" if details else "")
    since = progress.get("since")
    if since is None:
        return f"{where}, waiting for a worker"
    elapsed = max(0, (now_ms() if now is None else now) - since) / 1000
    return f"{where} for {format_duration(elapsed)}"


def workflow_trigger(ctx: Context) -> int:
    args = ctx.args
    if args.timeout is not None and not args.wait:
        raise CliError("--timeout only applies with --wait", USAGE)
    payload = payload_of(args)
    params: dict[str, Any] = {"workflow": args.name}
    if payload is not NO_PAYLOAD:
        params["payload"] = payload
    if args.key is not None:
        params["idempotencyKey"] = args.key
    accepted: dict[str, Any] = ctx.call("workflow.trigger", params)
    run_id = accepted.get("runId")
    deduplicated = bool(accepted.get("deduplicated"))
    status = accepted.get("status")
    if deduplicated:  # the key's run, in whatever status it is now
        status = f"{status} (an earlier trigger with key {args.key})"
    if accepted.get("worker") == "fatal" and accepted.get("status") in ("queued", "started"):
        ctx.note(
            f"workflow {args.name}: its worker is fatal (see nervectl status); run {run_id}"
            " waits until its code is fixed and reloaded"
        )
    if not args.wait:
        if ctx.json:
            shown = {"runId": run_id, "status": accepted.get("status")}
            ctx.print_json({**shown, "deduplicated": deduplicated})
        else:
            ctx.print(f"run {run_id}: {status}")
        return OK
    if not ctx.json:
        ctx.print(f"run {run_id}: {status}; waiting for it to finish")
        ctx.out.flush()
    return wait_and_show(ctx, str(run_id), args.timeout)


def wait_and_show(ctx: Context, run_id: str, timeout: float | None) -> int:
    """``--wait``: the run once it ends (``timeout`` seconds at most: None, no bound),
    shown; OK if it completed, else FAILED. When the time runs out, FAILED, and with
    ``--json`` the run as it is now with ``"timedOut": true`` (its events left out)."""
    wait: dict[str, Any] = {"runId": run_id}
    socket_timeout = FOREVER
    if timeout is not None:
        wait["timeout"] = timeout  # seconds, as workflow.wait takes it
        socket_timeout = timeout + WAIT_MARGIN
    try:
        run: dict[str, Any] = ctx.call("workflow.wait", wait, timeout=socket_timeout)
    except RemoteError as exc:
        if isinstance(exc.data, dict) and exc.data.get("timeout"):
            if ctx.json:  # a script reads stdout: the run as it is now, never nothing
                now = ctx.call("workflow.inspect", {"runId": run_id})  # (what any nerved takes)
                for key in ("events", "earlier", "more"):
                    now.pop(key, None)
                ctx.print_json({**now, "timedOut": True})
            message = f"run {run_id} did not finish in time ({exc.message}); it goes on"
            raise CliError(message, FAILED) from None
        raise
    except KeyboardInterrupt:
        message = f"interrupted; run {run_id} goes on (nervectl workflow inspect {run_id})"
        raise CliError(message, INTERRUPTED) from None
    if ctx.json:
        ctx.print_json(run)
    else:
        ctx.print(run_fields(run))
    return OK if run.get("status") == "completed" else FAILED


class _NoPayload:
    def __repr__(self) -> str:
        return "no payload"


NO_PAYLOAD: Final = _NoPayload()
"""No ``--payload`` nor ``--payload-file``: the trigger carries no ``payload`` param."""


def parse_payload(data: str | bytes) -> Any:
    """A trigger payload, held to the rules the daemon holds it to (:mod:`nerved.wire`).

    Checked here, so that what the daemon would refuse (NaN, ``1e400``, a lone surrogate,
    nesting past 100 levels, more than 1 MiB encoded) is a usage error (exit 2) before
    anything is sent. Raises ValueError naming the problem; argparse reports it for
    ``--payload``.
    """
    from nerved import wire  # the daemon's own codec: imported by triggers alone

    try:
        value = wire.loads(data)
        wire.check_value(value, "the payload")  # what decodes may still not encode: 1e400
    except wire.Invalid as exc:
        raise ValueError(str(exc)) from None
    return value


# Bytes of a payload file read at most: past this it is refused without reading on (its
# exact size is said up to here: ``the payload is 2.0 MiB; at most 1.0 MiB is kept``).
_PAYLOAD_FILE_CAP: Final = 16 * 1024 * 1024


def payload_of(args: Any) -> Any:
    """The payload ``--payload`` or ``--payload-file`` gave (arguments._payload_options), or
    :data:`NO_PAYLOAD` when neither was."""
    if args.payload_file is not None:  # "" is a file that cannot be read, not no payload
        return read_payload_file(args.payload_file)
    return vars(args).get("payload", NO_PAYLOAD)  # --payload, parsed by argparse


def read_payload_file(name: str) -> Any:
    """The payload in file ``name`` (``-``: stdin), read no further than
    :data:`_PAYLOAD_FILE_CAP`: ``/dev/zero`` or an endless pipe is refused, not read until
    memory runs out."""
    try:
        if name == "-":
            if sys.stdin is None:  # started with fd 0 closed
                raise OSError(0, "stdin is closed")
            data = sys.stdin.buffer.read(_PAYLOAD_FILE_CAP + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(_PAYLOAD_FILE_CAP + 1)
    except OSError as exc:
        why = exc.strerror or exc
        raise CliError(f"cannot read the payload file {name}: {why}", USAGE) from None
    if len(data) > _PAYLOAD_FILE_CAP:
        shown = "stdin" if name == "-" else name
        raise CliError(f"{shown}: the payload is over 16 MiB; at most 1.0 MiB is kept", USAGE)
    try:
        return parse_payload(data)
    except ValueError as exc:
        raise CliError(f"{'stdin' if name == '-' else name}: {exc}", USAGE) from None
