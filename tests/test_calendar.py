"""Business calendar arithmetic: weekends, Chinese holidays and 调休, overrides, time zones."""

from __future__ import annotations

import time as _time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest

from engine.calendar import (
    DEFAULT_CONFIG_PATH,
    BusinessCalendar,
    CalendarError,
    TwentyFourSeven,
    calendar_from_dict,
)

SH = ZoneInfo("Asia/Shanghai")


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A Shanghai wall-clock time."""
    return datetime(y, mo, d, h, mi, tzinfo=SH)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A UTC time."""
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


@pytest.fixture(scope="module")
def cn() -> BusinessCalendar:
    return BusinessCalendar.from_config()


# ------------------------------------------------------------------ package facts


def test_holidays_package_knows_2026_national_day_and_tiaoxiu() -> None:
    """Checks the data the other tests rely on, straight from the package."""
    table = holidays.country_holidays("CN", years=range(2025, 2028))
    for day in range(1, 8):
        d = date(2026, 10, day)
        assert not table.is_working_day(d), d
    # 调休: Sunday 2026-09-20 and Saturday 2026-10-10 are official working days.
    assert date(2026, 9, 20).weekday() == 6 and date(2026, 10, 10).weekday() == 5
    assert date(2026, 9, 20) in table.weekend_workdays
    assert date(2026, 10, 10) in table.weekend_workdays
    assert date(2026, 2, 14) in table.weekend_workdays  # Spring Festival make-up Saturday


# ---------------------------------------------------------------------- weekends


def test_friday_afternoon_plus_three_working_days_is_wednesday(cn: BusinessCalendar) -> None:
    due = cn.add_working_days(sh(2026, 11, 20, 15), 3)
    assert due == sh(2026, 11, 25, 15)
    assert due.tzinfo is UTC
    assert due == utc(2026, 11, 25, 7)


def test_working_hours_per_day_defaults_to_nine(cn: BusinessCalendar) -> None:
    assert cn.working_hours_per_day == timedelta(hours=9)


def test_budget_running_out_at_end_of_day_stays_on_that_day(cn: BusinessCalendar) -> None:
    assert cn.add_working_time(sh(2026, 11, 20, 15), timedelta(hours=3)) == sh(2026, 11, 20, 18)
    assert cn.add_working_time(sh(2026, 11, 20, 15), timedelta(hours=3, minutes=1)) == sh(2026, 11, 23, 9, 1)


def test_start_outside_working_hours_counts_from_next_working_moment(cn: BusinessCalendar) -> None:
    assert cn.add_working_time(sh(2026, 11, 20, 20), timedelta(hours=1)) == sh(2026, 11, 23, 10)  # Fri evening
    assert cn.add_working_time(sh(2026, 11, 21, 10), timedelta(hours=1)) == sh(2026, 11, 23, 10)  # Saturday
    assert cn.add_working_time(sh(2026, 11, 23, 7), timedelta(hours=2)) == sh(2026, 11, 23, 11)  # Mon early
    assert cn.next_working_moment(sh(2026, 11, 21, 10)) == sh(2026, 11, 23, 9)
    assert cn.next_working_moment(sh(2026, 11, 23, 10, 30)) == sh(2026, 11, 23, 10, 30)


def test_zero_and_negative_deltas(cn: BusinessCalendar) -> None:
    assert cn.add_working_time(sh(2026, 11, 21, 10), timedelta(0)) == sh(2026, 11, 21, 10)
    with pytest.raises(ValueError, match="negative"):
        cn.add_working_time(sh(2026, 11, 21, 10), timedelta(hours=-1))
    with pytest.raises(ValueError):
        cn.add_working_days(sh(2026, 11, 21, 10), -1)


def test_working_intervals_and_time_between(cn: BusinessCalendar) -> None:
    intervals = list(cn.working_intervals(sh(2026, 11, 20, 16), sh(2026, 11, 23, 10)))
    assert intervals == [(sh(2026, 11, 20, 16), sh(2026, 11, 20, 18)), (sh(2026, 11, 23, 9), sh(2026, 11, 23, 10))]
    assert all(a.tzinfo is UTC and b.tzinfo is UTC for a, b in intervals)
    assert cn.working_time_between(sh(2026, 11, 20, 16), sh(2026, 11, 23, 10)) == timedelta(hours=3)
    assert cn.working_time_between(sh(2026, 11, 23, 10), sh(2026, 11, 20, 16)) == timedelta(hours=-3)
    assert cn.working_time_between(sh(2026, 11, 21, 0), sh(2026, 11, 22, 23)) == timedelta(0)
    assert list(cn.working_intervals(sh(2026, 11, 23, 10), sh(2026, 11, 20, 16))) == []


def test_is_working_time_boundaries(cn: BusinessCalendar) -> None:
    assert cn.is_working_time(sh(2026, 11, 20, 9))
    assert cn.is_working_time(sh(2026, 11, 20, 17, 59))
    assert not cn.is_working_time(sh(2026, 11, 20, 18))
    assert not cn.is_working_time(sh(2026, 11, 20, 8, 59))
    assert not cn.is_working_time(sh(2026, 11, 21, 10))  # Saturday


# ------------------------------------------------------- Chinese statutory holidays


def test_national_day_2026_is_skipped(cn: BusinessCalendar) -> None:
    for day in range(1, 8):
        assert not cn.is_working_day(date(2026, 10, day))
    assert cn.is_working_day(date(2026, 10, 8))
    # Wed 30 Sep 15:00 + 1WD: 3 h on 30 Sep, then 1-7 Oct off, 6 h on Thu 8 Oct.
    assert cn.add_working_days(sh(2026, 9, 30, 15), 1) == sh(2026, 10, 8, 15)
    assert cn.working_time_between(sh(2026, 9, 30, 9), sh(2026, 10, 9, 9)) == timedelta(hours=18)


def test_tiaoxiu_weekend_days_are_working_days(cn: BusinessCalendar) -> None:
    assert cn.is_adjusted_workday(date(2026, 10, 10))
    assert cn.is_working_day(date(2026, 10, 10))  # Saturday
    assert cn.is_working_day(date(2026, 9, 20))  # Sunday
    assert not cn.is_working_day(date(2026, 9, 19))  # ordinary Saturday
    assert cn.add_working_days(sh(2026, 10, 9, 15), 1) == sh(2026, 10, 10, 15)
    assert cn.add_working_days(sh(2026, 9, 18, 15), 1) == sh(2026, 9, 20, 15)
    assert cn.is_working_time(sh(2026, 10, 10, 10))


def test_adjusted_workdays_can_be_ignored() -> None:
    cal = BusinessCalendar(adjusted_workdays=False)
    assert not cal.is_working_day(date(2026, 10, 10))
    assert cal.add_working_days(sh(2026, 10, 9, 15), 1) == sh(2026, 10, 12, 15)


def test_spring_festival_2026(cn: BusinessCalendar) -> None:
    # Off 15-23 Feb 2026 (Sun..Mon); Sat 14 Feb and Sat 28 Feb are working days.
    assert [d for d in range(13, 25) if cn.is_working_day(date(2026, 2, d))] == [13, 14, 24]
    assert cn.add_working_days(sh(2026, 2, 14, 12), 1) == sh(2026, 2, 24, 12)


def test_holiday_names_in_english_and_chinese(cn: BusinessCalendar) -> None:
    assert cn.holiday_name(date(2026, 10, 1)) == "National Day"
    assert cn.holiday_name(date(2026, 10, 1), "zh") == "国庆节"
    assert cn.holiday_name(date(2026, 10, 8)) is None
    assert cn.is_public_holiday(sh(2026, 10, 1, 12))
    assert not cn.is_public_holiday(sh(2026, 10, 8, 12))


def test_holiday_lookups_are_cached(cn: BusinessCalendar) -> None:
    from engine.calendar import _statutory_year

    cn.add_working_days(sh(2026, 9, 30, 15), 5)
    before = _statutory_year.cache_info()
    cn.is_working_day(date(2026, 5, 5))
    cn.add_working_days(sh(2026, 3, 2, 9), 20)
    after = _statutory_year.cache_info()
    assert after.misses == before.misses
    assert after.hits > before.hits


def test_long_budgets_iterate_days_not_minutes(cn: BusinessCalendar) -> None:
    started = _time.perf_counter()
    due = cn.add_working_days(sh(2026, 1, 5, 9), 2500)  # about ten years of working days
    assert _time.perf_counter() - started < 3.0
    assert cn.is_working_time(due - timedelta(minutes=1))
    assert cn.working_time_between(sh(2026, 1, 5, 9), due) == timedelta(hours=9 * 2500)


# -------------------------------------------------------------- override files


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "company.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_file_equals_builtin_defaults() -> None:
    assert DEFAULT_CONFIG_PATH.is_file()
    assert BusinessCalendar.from_config(DEFAULT_CONFIG_PATH) == BusinessCalendar.from_config(None)


def test_override_file_adds_holiday_and_working_day(tmp_path: Path) -> None:
    path = _write(tmp_path, """
name = "ACME"
label_zh = "ACME 公司"
extra_workdays = [2026-11-21]

[extra_holidays]
"2026-11-23" = "Company anniversary"
"2026-12-28..2026-12-30" = "Year-end closure"
""")
    cal = BusinessCalendar.from_config(path)
    assert cal.name == "ACME" and cal.timezone_name == "Asia/Shanghai"
    assert cal.is_working_day(date(2026, 11, 21))  # Saturday made a working day
    assert not cal.is_working_day(date(2026, 11, 23))  # Monday made a holiday
    assert cal.holiday_name(date(2026, 11, 23)) == "Company anniversary"
    assert [cal.is_working_day(date(2026, 12, d)) for d in (28, 29, 30, 31)] == [False, False, False, True]
    # Fri 15:00 + 1WD: 3 h Fri, 6 h on the extra Saturday.
    assert cal.add_working_days(sh(2026, 11, 20, 15), 1) == sh(2026, 11, 21, 15)
    # Fri 15:00 + 2WD: 3 h Fri, 9 h Sat, Sun off, Mon company holiday, 6 h Tue.
    assert cal.add_working_days(sh(2026, 11, 20, 15), 2) == sh(2026, 11, 24, 15)
    # Public holidays still apply.
    assert not cal.is_working_day(date(2026, 10, 1))


def test_override_file_hours_lunch_weekdays_and_zone(tmp_path: Path) -> None:
    path = _write(tmp_path, """
timezone = "Asia/Hong_Kong"
country = ""
working_weekdays = ["mon", "tue", "wed", "thu", "fri", "sat"]

[working_hours]
start = 08:30:00
end = "17:30"
lunch = ["12:00", "13:00"]
""")
    cal = BusinessCalendar.from_config(path)
    hk = ZoneInfo("Asia/Hong_Kong")
    assert cal.working_hours_per_day == timedelta(hours=8)
    assert not cal.is_working_time(datetime(2026, 11, 23, 12, 30, tzinfo=hk))
    assert cal.is_working_day(date(2026, 11, 21))  # Saturday
    assert cal.is_working_day(date(2026, 10, 1))  # no public holidays
    # Mon 11:00 + 2 h skips lunch.
    assert cal.add_working_time(datetime(2026, 11, 23, 11, tzinfo=hk), timedelta(hours=2)) == datetime(
        2026, 11, 23, 14, tzinfo=hk
    )
    # Sat 16:30 + 1WD (8 h): 1 h Sat, Sunday off, 3.5 h before lunch + 3.5 h after on Monday.
    assert cal.add_working_days(datetime(2026, 11, 21, 16, 30, tzinfo=hk), 1) == datetime(
        2026, 11, 23, 16, 30, tzinfo=hk
    )


def test_company_overrides_beat_statutory_rules() -> None:
    cal = BusinessCalendar.from_dict({
        "extra_workdays": ["2026-10-01"],
        "extra_holidays": {"2026-10-10": "Team day"},
    })
    assert cal.is_working_day(date(2026, 10, 1))
    assert not cal.is_working_day(date(2026, 10, 10))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "blue"', "unknown keys"),
        ('timezone = "Mars/Olympus"', "unknown time zone"),
        ('country = "XX"', "no public holidays"),
        ('working_weekdays = ["funday"]', "mon"),
        ('[working_hours]\nstart = "18:00"\nend = "09:00"', "start before"),
        ('[working_hours]\nlunch = ["08:00", "09:30"]', "lunch break"),
        ('[working_hours]\nstart = "9h"', "09:00"),
        ('extra_workdays = [2026-11-21]\n[extra_holidays]\n"2026-11-21" = "x"', "both"),
        ('extra_workdays = ["21/11/2026"]', "2026-10-01"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_override_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CalendarError, match=message):
        BusinessCalendar.from_config(_write(tmp_path, text))


def test_missing_override_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CalendarError, match="cannot read"):
        BusinessCalendar.from_config(tmp_path / "nope.toml")


def test_calendar_without_any_working_day_fails_clearly() -> None:
    cal = BusinessCalendar(country=None, working_weekdays=())
    with pytest.raises(CalendarError, match="no working time"):
        cal.add_working_time(sh(2026, 1, 1), timedelta(hours=1))


def test_to_dict_round_trip_keeps_overrides() -> None:
    cal = BusinessCalendar.from_dict({
        "name": "ACME",
        "working_hours": {"start": "08:00", "end": "17:00", "lunch": ["12:00", "13:00"]},
        "extra_holidays": {"2026-11-23": "Anniversary"},
        "extra_workdays": ["2026-11-21"],
    })
    again = calendar_from_dict(cal.to_dict())
    assert again == cal
    # 8 h day: 2 h Fri, then 4 h + 2 h on the extra Saturday around lunch.
    assert again.add_working_days(sh(2026, 11, 20, 15), 1) == sh(2026, 11, 21, 15)


# --------------------------------------------------------------------- time zones


def test_inputs_in_utc_calendar_in_shanghai(cn: BusinessCalendar) -> None:
    # 07:00Z on Friday is 15:00 in Shanghai.
    assert cn.add_working_days(utc(2026, 11, 20, 7), 3) == utc(2026, 11, 25, 7)
    # 23:00Z Friday is already Saturday 07:00 in Shanghai: not a working day.
    assert not cn.is_working_day(utc(2026, 11, 20, 23))
    assert cn.is_working_day(utc(2026, 11, 20, 15))
    # 23:30Z Sunday is Monday 07:30 in Shanghai; work starts at 01:00Z.
    assert cn.next_working_moment(utc(2026, 11, 22, 23, 30)) == utc(2026, 11, 23, 1)
    ny = ZoneInfo("America/New_York")
    assert cn.add_working_days(datetime(2026, 11, 20, 2, tzinfo=ny), 3) == utc(2026, 11, 25, 7)


def test_naive_datetimes_are_rejected(cn: BusinessCalendar) -> None:
    naive = datetime(2026, 11, 20, 15)
    for call in (
        lambda: cn.add_working_time(naive, timedelta(hours=1)),
        lambda: cn.is_working_time(naive),
        lambda: cn.is_working_day(naive),
        lambda: list(cn.working_intervals(naive, sh(2026, 11, 21))),
        lambda: cn.working_time_between(sh(2026, 11, 19), naive),
        lambda: TwentyFourSeven().add_working_time(naive, timedelta(hours=1)),
    ):
        with pytest.raises(ValueError, match="timezone-aware"):
            call()


def test_daylight_saving_zone_counts_real_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    cal = BusinessCalendar(name="DE", timezone="Europe/Berlin", country=None)
    # Clocks go forward on Sun 29 Mar 2026; Fri 17:00 + 2 h = Mon 10:00 local = 08:00Z.
    due = cal.add_working_time(datetime(2026, 3, 27, 17, tzinfo=berlin), timedelta(hours=2))
    assert due == utc(2026, 3, 30, 8)


# ------------------------------------------------------------------------ 24 x 7


def test_twenty_four_seven() -> None:
    cal = TwentyFourSeven()
    assert cal.add_working_time(sh(2026, 11, 20, 15), timedelta(hours=24)) == sh(2026, 11, 21, 15)
    assert cal.add_working_days(sh(2026, 11, 20, 15), 2) == sh(2026, 11, 22, 15)
    assert cal.working_time_between(sh(2026, 9, 30, 9), sh(2026, 10, 2, 9)) == timedelta(hours=48)
    assert cal.is_working_day(date(2026, 10, 1)) and cal.is_working_time(sh(2026, 10, 1, 3))
    assert list(cal.working_intervals(utc(2026, 1, 1), utc(2026, 1, 2))) == [(utc(2026, 1, 1), utc(2026, 1, 2))]
    assert calendar_from_dict(cal.to_dict()) == cal
