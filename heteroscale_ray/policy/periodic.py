"""Periodic policy: a time table of fixed decode counts (and optional P/D ratios) by UTC time of day."""

from __future__ import annotations

from heteroscale_ray.config import PeriodicEntry

DAY_S = 86_400


def time_of_day_s(now: float) -> float:
    """Seconds since midnight UTC for an epoch timestamp."""
    return now % DAY_S


def clock_text(now: float) -> str:
    """'HH:MM' UTC of an epoch timestamp, for messages."""
    minutes = int(time_of_day_s(now)) // 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def covers(entry: PeriodicEntry, time_of_day: float) -> bool:
    """start inclusive, end exclusive; an end before the start wraps past midnight; start == end is all day."""
    start, end = entry.start_s(), entry.end_s()
    if start < end:
        return start <= time_of_day < end
    return time_of_day >= start or time_of_day < end


def active_entry(table: list[PeriodicEntry], now: float) -> PeriodicEntry | None:
    """The first row covering ``now`` (rows are read in order), or None."""
    tod = time_of_day_s(now)
    return next((entry for entry in table if covers(entry, tod)), None)
