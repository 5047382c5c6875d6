"""Maintenance windows: membership, next opening, DST, and the operator's words."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.maintenance_window import (
    DAY_NAMES,
    MaintenanceWindow,
    WindowError,
    all_open,
    next_opening,
    parse_days,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def w(
    days: str = "daily", start: str = "02:00", end: str = "04:00", tz: str = "UTC"
) -> MaintenanceWindow:
    return MaintenanceWindow.build("w", days, start, end, tz)


def at(*args: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


# ---- the operator's words


def test_parse_days() -> None:
    assert parse_days("mon-fri") == DAY_NAMES[:5]
    assert parse_days("sat,sun") == ("sat", "sun")
    assert parse_days("Mon-Wed, fri") == ("mon", "tue", "wed", "fri")
    assert parse_days("fri-mon") == ("mon", "fri", "sat", "sun")
    assert parse_days("daily") == DAY_NAMES


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"days": "monday"}, "days"),
        ({"days": "mon-"}, "days"),
        ({"start": "24:00"}, "start"),
        ({"end": "2:00"}, "end"),
        ({"start": "02:00:61"}, "start"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
    ],
)
def test_bad_words_name_the_field(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(WindowError, match=f"^{field}"):
        w(**kwargs)


def test_wire_form_round_trips() -> None:
    win = w("mon-fri", "22:00", "02:00:30", "Europe/Berlin")
    again = MaintenanceWindow.model_validate(win.to_dict())
    assert again == win
    assert win.to_dict()["days"] == ["mon", "tue", "wed", "thu", "fri"]


def test_naive_time_refused() -> None:
    with pytest.raises(WindowError, match="no time zone"):
        w().is_open(dt.datetime(2026, 1, 1))


# ---- membership and the next opening


def test_inside_and_next_open_simple() -> None:
    win = w("mon-fri", "02:00", "04:00", "Europe/Berlin")
    mon_0300 = at(2026, 12, 7, 3, 0, tz=BERLIN)  # a Monday
    assert win.is_open(mon_0300)
    assert win.next_open(mon_0300) == mon_0300
    assert win.closes_at(mon_0300) == at(2026, 12, 7, 4, 0, tz=BERLIN)
    mon_0400 = at(2026, 12, 7, 4, 0, tz=BERLIN)
    assert not win.is_open(mon_0400)  # the end is exclusive
    assert win.next_open(mon_0400) == at(2026, 12, 8, 1, 0)  # Tue 02:00 CET
    fri_0500 = at(2026, 12, 11, 5, 0, tz=BERLIN)
    assert win.next_open(fri_0500) == at(2026, 12, 14, 1, 0)  # over the weekend


def test_crossing_midnight_belongs_to_its_start_day() -> None:
    win = w("fri", "22:00", "02:00", "UTC")
    assert win.is_open(at(2026, 12, 11, 23, 0))  # Friday night
    assert win.is_open(at(2026, 12, 12, 1, 59))  # Saturday early
    assert not win.is_open(at(2026, 12, 12, 23, 0))  # Saturday night: not listed
    assert not win.is_open(at(2026, 12, 11, 1, 0))  # Friday early: Thursday's, not listed


def test_start_equal_end_is_a_whole_day() -> None:
    win = w("wed", "00:00", "00:00", "UTC")
    assert win.is_open(at(2026, 12, 9, 0, 0))
    assert win.is_open(at(2026, 12, 9, 23, 59, 59))
    assert not win.is_open(at(2026, 12, 10, 0, 0))


def test_dst_spring_forward_gap_moves_forward() -> None:
    # Europe/Berlin skips 02:00-03:00 on Sunday 29 March 2026.
    win = w("sun", "02:30", "04:00", "Europe/Berlin")
    opens = win.next_open(at(2026, 3, 28, 12, 0))
    assert opens == at(2026, 3, 29, 1, 30)  # 02:30 +01:00 == 03:30 CEST
    assert opens.astimezone(BERLIN).hour == 3
    # Both ends inside the gap: the whole occurrence moves forward by the gap.
    inside = w("sun", "02:10", "02:50", "Europe/Berlin")
    assert inside.next_open(at(2026, 3, 28, 12, 0)) == at(2026, 3, 29, 1, 10)
    # A start moved past its end: that day's occurrence does not open.
    empty = w("sun", "02:30", "03:00", "Europe/Berlin")
    assert empty.next_open(at(2026, 3, 28, 12, 0)) == at(2026, 4, 5, 0, 30)


def test_dst_fall_back_overlap_first_occurrence() -> None:
    # Europe/Berlin repeats 02:00-03:00 on Sunday 25 October 2026.
    win = w("sun", "02:30", "03:30", "Europe/Berlin")
    assert win.next_open(at(2026, 10, 24, 12, 0)) == at(2026, 10, 25, 0, 30)  # 02:30 CEST
    # The occurrence lasts 2 h of real time: 02:30 CEST .. 03:30 CET.
    assert win.is_open(at(2026, 10, 25, 2, 15))
    assert not win.is_open(at(2026, 10, 25, 2, 30))


def test_windows_together_and_never_meeting() -> None:
    a = w("daily", "01:00", "05:00", "UTC")
    b = w("daily", "04:00", "06:00", "UTC")
    now = at(2026, 12, 7, 0, 0)
    assert next_opening([a, b], now) == at(2026, 12, 7, 4, 0)
    assert all_open([a, b], at(2026, 12, 7, 4, 30))
    assert not all_open([a, b], at(2026, 12, 7, 5, 0))
    c = w("daily", "10:00", "11:00", "UTC")
    assert next_opening([a, c], now) is None
    assert next_opening([], now) == now


# ---- properties

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
times = st.builds(
    lambda s: f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}", st.integers(0, 86399)
)
windows = st.builds(
    lambda days, start, end, tz: MaintenanceWindow(
        name="p", days=days, start=start, end=end, tz=tz
    ),
    st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True),
    times,
    times,
    st.sampled_from(ZONES),
)
instants = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(windows, instants)
def test_next_open_is_open_and_nothing_earlier_is(win: MaintenanceWindow, now: dt.datetime) -> None:
    nxt = win.next_open(now)
    assert nxt is not None  # a weekly window always opens within 15 days
    assert nxt >= now
    assert win.is_open(nxt)
    if nxt > now:
        assert not win.is_open(now)
        assert not win.is_open(nxt - dt.timedelta(microseconds=1))
        # Nothing in between either: sample it.
        step = (nxt - now) / 17
        assert not any(win.is_open(now + step * i) for i in range(17))


@settings(max_examples=300, deadline=None)
@given(windows, instants)
def test_closes_after_it_opens(win: MaintenanceWindow, now: dt.datetime) -> None:
    end = win.closes_at(now)
    assert (end is not None) == win.is_open(now)
    if end is not None:
        assert end > now
        assert not win.is_open(end) or win.closes_at(end) not in (None, end)


def _wall_clock_open(win: MaintenanceWindow, now: dt.datetime) -> bool:
    """The reference: read the local wall clock and the weekday, nothing else."""
    local = now.astimezone(ZoneInfo(win.tz))
    t = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6

    def sec(text: str) -> int:
        parts = [int(p) for p in text.split(":")] + [0]
        return parts[0] * 3600 + parts[1] * 60 + parts[2]

    s, e = sec(win.start), sec(win.end)
    today = DAY_NAMES[local.weekday()]
    yesterday = DAY_NAMES[(local.weekday() - 1) % 7]
    if e > s:
        return today in win.days and s <= t < e
    return (today in win.days and t >= s) or (yesterday in win.days and t < e)


def _near_transition(zone: ZoneInfo, now: dt.datetime) -> bool:
    offsets = {(now + dt.timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(-30, 31)}
    return len(offsets) > 1


@settings(max_examples=500, deadline=None)
@given(windows, instants)
def test_agrees_with_the_wall_clock_away_from_dst(win: MaintenanceWindow, now: dt.datetime) -> None:
    if _near_transition(ZoneInfo(win.tz), now):
        return
    assert win.is_open(now) == _wall_clock_open(win, now)


@settings(max_examples=200, deadline=None)
@given(st.lists(windows, min_size=1, max_size=3), instants)
def test_next_opening_of_several(ws: list[MaintenanceWindow], now: dt.datetime) -> None:
    nxt = next_opening(ws, now)
    if nxt is None:
        return
    assert nxt >= now and all_open(ws, nxt)
    if nxt > now:
        assert not all_open(ws, nxt - dt.timedelta(microseconds=1))
