"""Recurring maintenance windows: when a robot may switch to a new bundle.

A window is a set of weekdays, a local start and end time of day, and an IANA time
zone. Each listed day opens one *occurrence* at ``start`` local time; it closes at
``end`` local time on the same day, or on the next day when ``end`` is not after
``start`` (``22:00``–``02:00`` crosses midnight; ``start == end`` is a whole day).
Times are ``HH:MM`` or ``HH:MM:SS``.

Daylight saving time: local times are converted with :mod:`zoneinfo`. A start or end
that falls into a spring-forward gap is moved forward by the gap (``02:30`` on the day
Europe/Berlin skips 02:00–03:00 is 03:30 local); one that falls into an autumn
overlap means its first occurrence. An occurrence whose end comes out before its start
that way (``02:30``–``03:00`` on the spring-forward day) does not open at all.

Several windows apply together: an update may switch only while *all* of them are
open (each one is a restriction), and :func:`next_opening` finds the first instant at
which they are. The plane and the robot share this module; the robot answers with its
own clock, so it keeps to the window while offline.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DAY_NAMES",
    "MaintenanceWindow",
    "WindowError",
    "all_open",
    "next_opening",
    "parse_days",
]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
#: How far ahead an opening is searched: every weekly window opens within 8 days.
HORIZON_DAYS = 15


class WindowError(ValueError):
    """A window that cannot be used; the message names the field and what was expected."""


def parse_days(text: str) -> tuple[str, ...]:
    """``mon-fri``, ``sat,sun``, ``mon-wed,fri`` or ``daily`` as weekday names in order."""
    spec = text.strip().lower()
    if spec in ("daily", "all", "*"):
        return DAY_NAMES
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        first, sep, last = part.partition("-")
        for name in (first, last) if sep else (first,):
            if name not in DAY_NAMES:
                raise WindowError(
                    f"days: {part!r} is not a weekday; expected names like mon-fri or sat,sun "
                    f"(from {', '.join(DAY_NAMES)}) or daily"
                )
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if sep else a
        if b < a:  # fri-mon wraps over the weekend
            chosen.update(range(a, 7))
            chosen.update(range(0, b + 1))
        else:
            chosen.update(range(a, b + 1))
    return tuple(DAY_NAMES[i] for i in sorted(chosen))


def _seconds(text: str, field: str) -> int:
    m = _TIME.match(text)
    if m is None:
        raise WindowError(f"{field}: {text[:40]!r} is not a time of day HH:MM or HH:MM:SS")
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3] or 0)


class MaintenanceWindow(BaseModel):
    """One recurring window, as the plane stores it and the desired state carries it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(min_length=1, max_length=100)
    days: tuple[str, ...] = Field(min_length=1, max_length=7)
    start: str
    end: str
    tz: str = Field(min_length=1, max_length=64)

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_days(value)
        if isinstance(value, list | tuple):
            names = [str(v).lower() for v in value]
            bad = [n for n in names if n not in DAY_NAMES]
            if bad:
                raise ValueError(f"{bad[0][:20]!r} is not one of {', '.join(DAY_NAMES)}")
            return tuple(d for d in DAY_NAMES if d in names)
        return value

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str) -> str:
        if _TIME.match(value) is None:
            raise ValueError(f"{value[:40]!r} is not a time of day HH:MM or HH:MM:SS")
        return value

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value[:64]!r} is not an IANA time zone") from exc
        return value

    @model_validator(mode="after")
    def _names_days(self) -> Self:
        if len(set(self.days)) != len(self.days):
            raise ValueError("days lists a weekday twice")
        return self

    @classmethod
    def build(cls, name: str, days: str, start: str, end: str, tz: str) -> Self:
        """A window from the operator's words; WindowError names the bad field."""
        from pydantic import ValidationError

        try:
            return cls(name=name, days=parse_days(days), start=start, end=end, tz=tz)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "window"
            raise WindowError(f"{where}: {err['msg']}") from exc

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def describe(self) -> str:
        """``mon,tue,wed,thu,fri 02:00-04:00 Europe/Berlin``."""
        return f"{','.join(self.days)} {self.start}-{self.end} {self.tz}"

    # ---- the occurrences

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def _occurrence(self, day: dt.date) -> tuple[dt.datetime, dt.datetime] | None:
        """The UTC [start, end) of the occurrence opening on local date `day`, if any."""
        if DAY_NAMES[day.weekday()] not in self.days:
            return None
        zone = self._zone()
        s = _seconds(self.start, "start")
        e = _seconds(self.end, "end")
        end_day = day if e > s else day + dt.timedelta(days=1)
        opens = _utc(day, s, zone)
        closes = _utc(end_day, e, zone)
        if closes <= opens:
            return None
        return opens, closes

    def _occurrences(self, at: dt.datetime, days: int) -> Iterator[tuple[dt.datetime, dt.datetime]]:
        local = at.astimezone(self._zone()).date()
        for i in range(-1, days):
            occ = self._occurrence(local + dt.timedelta(days=i))
            if occ is not None:
                yield occ

    def is_open(self, at: dt.datetime) -> bool:
        """Whether `at` (an aware datetime) lies inside an occurrence."""
        _aware(at)
        return any(o <= at < c for o, c in self._occurrences(at, 1))

    def closes_at(self, at: dt.datetime) -> dt.datetime | None:
        """The end of the occurrence `at` lies in (None when the window is closed)."""
        _aware(at)
        ends = [c for o, c in self._occurrences(at, 1) if o <= at < c]
        return max(ends) if ends else None

    def next_open(self, at: dt.datetime) -> dt.datetime | None:
        """`at` itself while open, else the next opening (UTC); None if none in 15 days."""
        _aware(at)
        if self.is_open(at):
            return at
        for o, _c in self._occurrences(at, HORIZON_DAYS):
            if o > at:
                return o
        return None

    def openings(self, at: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
        """Every opening after `at` and not after `until` (UTC)."""
        days = (until - at).days + 2
        for o, _c in self._occurrences(at, days):
            if at < o <= until:
                yield o


def _aware(at: dt.datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise WindowError(f"{at.isoformat()} has no time zone")


def _utc(day: dt.date, seconds: int, zone: ZoneInfo) -> dt.datetime:
    """Local wall time `seconds` after midnight of `day` in `zone`, as UTC.

    fold=0: in an overlap the first occurrence; in a gap the offset before it, which
    moves the time forward by the gap."""
    h, rest = divmod(seconds, 3600)
    local = dt.datetime(day.year, day.month, day.day, h, rest // 60, rest % 60, tzinfo=zone)
    return local.astimezone(dt.UTC)


def all_open(windows: Sequence[MaintenanceWindow], at: dt.datetime) -> bool:
    """Whether every window is open at `at` (no windows: always)."""
    return all(w.is_open(at) for w in windows)


def next_opening(windows: Sequence[MaintenanceWindow], at: dt.datetime) -> dt.datetime | None:
    """`at` while all windows are open, else the first later instant at which they all
    are (the latest of their openings), None if they do not meet within 15 days."""
    _aware(at)
    if all_open(windows, at):
        return at
    until = at + dt.timedelta(days=HORIZON_DAYS)
    candidates = sorted({o for w in windows for o in w.openings(at, until)})
    for t in candidates:
        if all_open(windows, t):
            return t
    return None
