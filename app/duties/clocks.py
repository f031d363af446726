"""The law's clocks, as pure functions of an instant (docs/duties.md).

Korean periods are counted in the Korean calendar day (KST, UTC+9, no daylight saving) and by the
Civil Act: the day of the act is not counted (Art. 157), a period of days ends at the end of its
last day (Art. 159), a period of years ends at the end of the day before the corresponding date,
and at the end of the month when that month has no such date (Art. 160(2), (3): 29 February).
Every deadline here is returned as the first instant *after* the period (00:00 KST of the next
day), so "met in time" is simply `at < deadline`.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, time, timedelta

from app.permissions.rules import KST

RESULT_NOTICE_DAYS = 14  # Network Act Art. 50(7), Decree Art. 62-2
RECONFIRM_YEARS = 2  # Network Act Art. 50(8), Decree Art. 62-3
SUPPRESSION_DAYS = 10  # PIPA Art. 37(4)/(5), Decree Art. 41(2), 44(2): the result within 10 days
DESTRUCTION_DAYS = 5  # PIPA Art. 21(1) "without delay": within 5 days (PIPC guideline, Decree Art. 16)
ASK_AT_14_DAYS = 30  # asking a child who turns 14: announced that day, due within a month (tenant practice)


def kst_date(at: datetime) -> date:
    return at.astimezone(KST).date()


def start_of(day: date) -> datetime:
    """00:00 KST of `day`."""
    return datetime.combine(day, time(0), tzinfo=KST)


def days_after(at: datetime, days: int) -> datetime:
    """The deadline of a period of `days` days from an act at `at` (the act's day not counted)."""
    return start_of(kst_date(at) + timedelta(days=days + 1))


def add_years(day: date, years: int) -> date | None:
    """The corresponding date `years` later, or None when that month has none (29 Feb)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return None


def years_after(at: datetime, years: int) -> datetime:
    """The deadline of a period of `years` years from an act at `at`: before the same calendar date
    (Civil Act Art. 160(2)); from 29 February to a year without one, the period ends with 28 February
    (Art. 160(3)), so the deadline is 1 March."""
    day = kst_date(at)
    same = add_years(day, years)
    if same is None:
        last = date(day.year + years, day.month, calendar.monthrange(day.year + years, day.month)[1])
        return start_of(last + timedelta(days=1))
    return start_of(same)


def reconfirmation(consented_at: datetime, lead_days: int, cycle: int = 1) -> tuple[datetime, datetime]:
    """(announce from, deadline) of the `cycle`-th reconfirmation of an ad-reception consent given
    at `consented_at`: before the same calendar date 2, 4, ... years later (every two years from
    the consent's date, however late a notice was sent), announced `lead_days` ahead."""
    deadline = years_after(consented_at, RECONFIRM_YEARS * cycle)
    return deadline - timedelta(days=lead_days), deadline


def add_months(day: date, months: int) -> date | None:
    """The corresponding date `months` later, or None when that month has none."""
    year, month = divmod(day.month - 1 + months, 12)
    try:
        return day.replace(year=day.year + year, month=month + 1)
    except ValueError:
        return None


def period_after(at: datetime, *, years: int = 0, months: int = 0, days: int = 0) -> datetime:
    """The first instant after a period of years, months and days from an act at `at`. It starts
    the day after the act (Civil Act Art. 157); months (years are 12) end the day before the date
    corresponding to that first day, or with the month's last day when it has none (Art. 160(2),
    (3)); the days are counted after that. 15 Mar 2024 + 1 year: 16 Mar 2024 .. 15 Mar 2025."""
    first = kst_date(at) + timedelta(days=1)
    months += 12 * years
    end = first
    if months:
        end = add_months(first, months)
        if end is None:  # no corresponding date: the period ends with that month
            y, m = divmod(first.month - 1 + months + 1, 12)
            end = date(first.year + y, m + 1, 1)
    return start_of(end + timedelta(days=days))


def retention_end(at: datetime, rule: dict) -> datetime:
    """When the data of a purpose whose processing ended at `at` must be gone (PIPA Art. 21(1)):
    at once, or after the statutory period the rule names."""
    if not (rule.get("years") or rule.get("months") or rule.get("days")):
        return at
    return period_after(at, years=rule.get("years", 0), months=rule.get("months", 0), days=rule.get("days", 0))
