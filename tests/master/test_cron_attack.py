"""Attacks on cron reflexes and reflex keys (issue 12): the schedule on the days a zone with a
half-hour change turns its clocks, the test clock given a time out of range, and the keys
a workflow reflex reads from a signal's payload."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from support import QUICK, Nerved, wait_until

from nerved.config.cron import Schedule
from nerved.config.model import WorkflowReflex
from nerved.master.reflexes import _ABSENT, key_of, resolve

LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # +11 in summer, +10:30 in winter


def firings_on(expr: str, day: tuple[int, int, int]) -> list[str]:
    """The wall-clock times (with their offset) ``expr`` fires at on ``day``, Lord Howe."""
    schedule = Schedule(expr, LORD_HOWE)
    at = int(datetime(*day, tzinfo=LORD_HOWE).timestamp() * 1000) - 1
    end = int(datetime(*day, 23, 59, 59, tzinfo=LORD_HOWE).timestamp() * 1000)
    shown = []
    while (at := schedule.next_after(at)) is not None and at <= end:  # type: ignore[assignment]
        shown.append(datetime.fromtimestamp(at / 1000, LORD_HOWE).strftime("%H:%M%z"))
    return shown


def test_a_real_time_expression_misses_no_firing_on_a_half_hour_change_back() -> None:
    """README: an expression whose hour is ``*`` or ``*/N`` runs in real time, "on a
    changeover day no firing is missed". On 2026-04-05 Lord Howe goes from 02:00 +11:00
    back to 01:30 +10:30: the wall clock then reaches 02:00 once, at +10:30 (15:30 UTC).
    ``0 */2 * * *`` skips it: 00:00 +11:00, then 04:00 +10:30, four and a half real hours
    later. ``last_until`` does find 02:00 +10:30, so the two directions disagree (a catch-up
    at start could fire an instant the forward schedule never does)."""
    fired = firings_on("0 */2 * * *", (2026, 4, 5))
    assert "02:00+1030" in fired, fired
    schedule = Schedule("0 */2 * * *", LORD_HOWE)
    two = int(datetime(2026, 4, 5, 2, 0, tzinfo=LORD_HOWE).timestamp() * 1000)
    assert schedule.last_until(two) == two
    midnight = int(datetime(2026, 4, 5, 0, 0, fold=0, tzinfo=LORD_HOWE).timestamp() * 1000)
    assert schedule.next_after(midnight) == two


def test_a_real_time_expression_misses_no_firing_on_a_half_hour_change_forward() -> None:
    """On 2026-10-04 Lord Howe jumps from 02:00 +10:30 to 02:30 +11:00: 02:30 exists (it is
    the first minute after the jump), yet ``30 * * * *`` fires at 01:30 +10:30 and then at
    03:30 +11:00, an hour and a half later, skipping 02:30 +11:00."""
    fired = firings_on("30 * * * *", (2026, 10, 4))
    assert "02:30+1100" in fired, fired


def test_a_test_clock_out_of_range_is_refused_in_one_line(nerved_factory) -> None:
    """``NERVED_TEST_NOW`` garbage ("garbage", "-5", an ISO time without its offset) is
    refused at start with one line and exit 78 (nerved/master/daemon.py turns the Clock's
    ValueError into Fatal(EX_CONFIG)). A number of milliseconds past year 9999 (or past 64
    bits) passes _parse_now (``isdigit``) and nerved then dies with a traceback, exit 70:
    ``ValueError: year 10000 is out of range`` in Schedule._forward, or ``OverflowError:
    Python int too large to convert to SQLite INTEGER`` recording the reflex's arming."""
    config = (
        "workflows:\n  b: {}\n"
        "reflexes:\n  - {kind: workflow, workflow: b, cron: '0 * * * *', catchUp: true}\n"
    )
    quick = """
        from nerved import WorkflowDefinition
        def work(prompt, ctx):
            return {"type": "done"}
        def moderate(thread, event):
            return None
        workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
    """
    for name, now in (("y10k", "253402300800000"), ("big", "99999999999999999999999")):
        daemon: Nerved = nerved_factory(config, None, {"b": quick}, name=name)
        daemon.env = {"NERVED_TEST_NOW": now}
        daemon.start(wait=False)
        code = daemon.wait()
        log = daemon.log()
        assert code == 78, f"NERVED_TEST_NOW={now}: exit {code}\n{log[-1500:]}"
        assert "Traceback" not in log and "NERVED_TEST_NOW" in log, log[-1500:]


def test_a_pointer_reads_array_indexes_in_ascii_digits_only() -> None:
    """RFC 6901: an array index is ``0`` or ASCII digits without a leading zero; reflexes.resolve
    uses ``str.isdecimal``, which takes any Unicode decimal digit, so ``/\u0663`` (ARABIC-INDIC
    DIGIT THREE) and ``/\uff13`` (FULLWIDTH) name element 3 instead of nothing."""
    items = ["a", "b", "c", "d"]
    assert resolve("/3", items) == "d"
    assert resolve("/\u0663", items) is _ABSENT
    assert resolve("/\uff13", items) is _ABSENT


def test_one_json_value_gives_one_key_whatever_its_members_order() -> None:
    """README: "any other value [is the key as] its compact JSON text", so that a sense that
    keeps signalling the same alert starts one run per distinct key. JSON objects are
    unordered (RFC 8259), yet key_of writes members in the order the payload happened to
    hold them: the same alert ``{"host": "a", "check": "disk"}`` signalled once with its
    members the other way round gets a second key, and a second run."""
    reflex = WorkflowReflex(workflow="page", on=("alerts",), line=3, key="/alert")
    one = key_of(reflex, {"alert": {"host": "a", "check": "disk"}})
    other = key_of(reflex, {"alert": {"check": "disk", "host": "a"}})
    assert one is not None and one == other


def test_two_reflexes_firing_at_one_instant_each_start_their_run(nerved_factory) -> None:
    """Two cron reflexes of one workflow with one expression in two zones (UTC and
    Europe/London, an hour apart in June) are two reflexes (README: a reflex is its kind,
    target, expression *and zone*), and fire at the same instants for ``30 * * * *``. The
    firing's idempotency key is ``cron:<expr>@<scheduledAt>``, without the zone, so the
    second reflex's firing is deduplicated onto the first one's run: one run starts, and
    ``schedule.list`` shows both reflexes with that one run as their own (OUTCOME
    ``completed``). A reflex that fires should start its own run (or at least not claim
    another's)."""
    config = """\
workflows:
  w: {concurrency: 5}
reflexes:
  - {kind: workflow, workflow: w, cron: "30 * * * *", timezone: UTC}
  - {kind: workflow, workflow: w, cron: "30 * * * *", timezone: Europe/London}
"""
    daemon: Nerved = nerved_factory(config, None, {"w": QUICK})
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T10:29:58+00:00"}
    daemon.start()

    def fired() -> list[dict[str, object]] | None:
        listed: list[dict[str, object]] = daemon.rpc("schedule.list")
        return listed if all(row["last"] is not None for row in listed) else None

    listed = wait_until(fired, timeout=15, what="both firings at 10:30")
    runs = daemon.rpc("workflow.list", workflow="w", all=True)
    assert len(runs) == 2, runs
    assert listed[0]["lastRunId"] != listed[1]["lastRunId"], listed
