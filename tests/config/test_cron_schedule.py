"""Cron schedules as instants (nerved.config.cron), on the days Europe/Berlin changes its
offset in 2026: spring 2026-03-29 02:00 CET -> 03:00 CEST, autumn 2026-10-25 03:00 CEST ->
02:00 CET. No firing is missed and none comes twice."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from nerved.config.cron import CronError, Schedule, check_expression, zone

BERLIN = ZoneInfo("Europe/Berlin")


def _ms(text: str) -> int:
    """An instant written in UTC: ``2026-03-29T01:00``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def _firings(expr: str, start: str, end: str) -> list[str]:
    schedule = Schedule(expr, BERLIN)
    found, at, stop = [], _ms(start), _ms(end)
    while (nxt := schedule.next_after(at)) is not None and nxt < stop:
        found.append(_utc(nxt))
        at = nxt
    return found


def test_a_time_of_day_in_the_skipped_hour_fires_once_at_the_end_of_the_jump() -> None:
    # 02:30 does not exist on 2026-03-29: it fires at 03:00 CEST (01:00 UTC), once.
    assert _firings("30 2 * * *", "2026-03-27T12:00", "2026-03-31T00:00") == [
        "2026-03-28T01:30",  # 02:30 CET
        "2026-03-29T01:00",  # 03:00 CEST, right after the jump
        "2026-03-30T00:30",  # 02:30 CEST
    ]


def test_a_time_of_day_in_the_repeated_hour_fires_once() -> None:
    # 02:30 happens twice on 2026-10-25 (CEST, then CET): it fires the first time only.
    assert _firings("30 2 * * *", "2026-10-23T12:00", "2026-10-27T00:00") == [
        "2026-10-24T00:30",  # 02:30 CEST
        "2026-10-25T00:30",  # 02:30 CEST, the first pass
        "2026-10-26T01:30",  # 02:30 CET
    ]


def test_hourly_fires_every_real_hour_on_both_changeover_days() -> None:
    spring = _firings("0 * * * *", "2026-03-28T22:59", "2026-03-29T22:00")
    assert len(spring) == 23 == len(set(spring))  # a 23-hour day, every real hour
    assert spring[:4] == ["2026-03-28T23:00", "2026-03-29T00:00", "2026-03-29T01:00",
                          "2026-03-29T02:00"]  # fmt: skip
    autumn = _firings("0 * * * *", "2026-10-24T21:59", "2026-10-25T23:00")
    assert len(autumn) == 25 == len(set(autumn))  # a 25-hour day
    assert "2026-10-25T00:00" in autumn and "2026-10-25T01:00" in autumn  # 02:00 CEST, CET


def test_several_times_in_the_skipped_hour_collapse_into_one_firing() -> None:
    assert _firings("*/30 2 * * *", "2026-03-28T12:00", "2026-03-29T12:00") == ["2026-03-29T01:00"]
    assert _firings("*/30 2 * * *", "2026-10-24T12:00", "2026-10-25T12:00") == [
        "2026-10-25T00:00",
        "2026-10-25T00:30",
    ]


def test_asked_from_the_second_pass_the_next_firing_is_tomorrow() -> None:
    # 02:15 CET (01:15 UTC) on 2026-10-25: 02:30 CEST has fired already, 02:30 CET never does.
    schedule = Schedule("30 2 * * *", BERLIN)
    assert _utc(schedule.next_after(_ms("2026-10-25T01:15")) or 0) == "2026-10-26T01:30"
    assert _utc(schedule.last_until(_ms("2026-10-25T01:15")) or 0) == "2026-10-25T00:30"


def test_last_until_is_the_latest_firing_at_or_before() -> None:
    schedule = Schedule("30 2 * * *", BERLIN)
    assert _utc(schedule.last_until(_ms("2026-03-29T05:00")) or 0) == "2026-03-29T01:00"
    assert schedule.last_until(_ms("2026-03-29T01:00")) == _ms("2026-03-29T01:00")
    assert _utc(schedule.last_until(_ms("2026-03-29T00:59")) or 0) == "2026-03-28T01:30"
    hourly = Schedule("0 * * * *", BERLIN)
    assert _utc(hourly.last_until(_ms("2026-10-25T01:30")) or 0) == "2026-10-25T01:00"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "expected five fields"),
        ("0 0 * * * *", "expected five fields"),
        ("61 * * * *", "bad minute field"),
        ("0 25 * * *", "bad hour field"),
        ("0 0 31 2 *", "bad day-of-month field"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_bad_expressions_say_why(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        check_expression(expr)


def test_zones() -> None:
    assert zone("Europe/Berlin") == BERLIN
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
    with pytest.raises(CronError, match="unknown time zone"):
        zone("../etc/passwd")


ZONES = ("Europe/Berlin", "Australia/Lord_Howe", "America/New_York", "Pacific/Apia",
         "Asia/Kolkata", "America/St_Johns", "UTC")  # fmt: skip
EXPRESSIONS = ("0 * * * *", "30 * * * *", "*/20 */2 * * *", "15 2 * * *", "0 1-3 * * *",
               "45 23 * * 0")  # fmt: skip


def _walk(schedule: Schedule, start: int, stop: int) -> list[int]:
    found, at = [], start
    while (nxt := schedule.next_after(at)) is not None and nxt < stop:
        found.append(nxt)
        at = nxt
    return found


@pytest.mark.parametrize("name", ZONES)
def test_forward_and_backward_agree_around_every_change_of_2026(name: str) -> None:
    """Around each offset change of 2026 (and a quiet day): the firings walked forward are
    those last_until finds walking back, each once; a real-time expression fires at every
    instant whose wall clock it matches and at no other (checked minute by minute)."""
    where = ZoneInfo(name)
    minute = 60_000
    year = range(_ms("2026-01-01T00:00"), _ms("2027-01-01T00:00"), 3_600_000)
    offsets = [datetime.fromtimestamp(t / 1000, where).utcoffset() for t in year]
    changes = [year[i] for i in range(1, len(offsets)) if offsets[i] != offsets[i - 1]]
    for centre in [*changes, _ms("2026-07-01T12:00")]:
        start, stop = centre - 86_400_000, centre + 86_400_000
        for expr in EXPRESSIONS:
            schedule = Schedule(expr, where)
            forward = _walk(schedule, start, stop)
            assert len(forward) == len(set(forward)), (name, expr)
            for firing in forward:
                assert schedule.last_until(firing) == firing, (name, expr, _utc(firing))
            if schedule.real_time:
                cron = expr.split()
                matching = [
                    t for t in range(start + minute - start % minute, stop, minute)
                    if _matches(cron, datetime.fromtimestamp(t / 1000, where))
                ]  # fmt: skip
                assert [t for t in forward if t > start] == [t for t in matching if t > start], (
                    name, expr,
                )  # fmt: skip


def _matches(cron: list[str], moment: datetime) -> bool:
    """A minute's wall clock against a real-time expression's minute and hour fields (the
    others are ``*`` in :data:`EXPRESSIONS`' real-time ones)."""

    def field(text: str, value: int) -> bool:
        if text == "*":
            return True
        if text.startswith("*/"):
            return value % int(text[2:]) == 0
        return value == int(text)

    return field(cron[0], moment.minute) and field(cron[1], moment.hour)
