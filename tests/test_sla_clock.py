"""SLA clocks: budgets, pause ledger, deadlines, explanations and persistence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.calendar import BusinessCalendar, TwentyFourSeven
from engine.sla_clock import Budget, BudgetError, Pause, SlaClock

SH = ZoneInfo("Asia/Shanghai")


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A Shanghai wall-clock time."""
    return datetime(y, mo, d, h, mi, tzinfo=SH)


@pytest.fixture(scope="module")
def cn() -> BusinessCalendar:
    return BusinessCalendar.from_config()


def friday_clock(cn: BusinessCalendar, budget: str = "3WD") -> SlaClock:
    """Started Friday 2026-11-20 15:00 Shanghai; 3WD with 09:00-18:00 is due Wed 25th 15:00."""
    return SlaClock(started_at=sh(2026, 11, 20, 15), budget=Budget.parse(budget), calendar=cn, tier="core")


# ------------------------------------------------------------------------ budgets


@pytest.mark.parametrize(
    ("text", "spec", "kind", "hours"),
    [
        ("PT2H", "PT2H", "wall", 2),
        ("PT24H", "PT24H", "wall", 24),
        ("P2D", "P2D", "wall", 48),
        ("p1dt12h", "P1DT12H", "wall", 36),
        ("PT90M", "PT90M", "wall", 1.5),
        ("P1W", "P1W", "wall", 168),
        ("3WD", "3WD", "working_days", 27),
        (" 1.5wd ", "1.5WD", "working_days", 13.5),
        ("8BH", "8BH", "business_hours", 8),
    ],
)
def test_budget_parsing(cn: BusinessCalendar, text: str, spec: str, kind: str, hours: float) -> None:
    budget = Budget.parse(text)
    assert str(budget) == spec
    assert budget.kind == kind
    assert budget.duration(cn) == timedelta(hours=hours)
    assert budget.is_wall_clock == (kind == "wall")


@pytest.mark.parametrize(
    "text",
    ["", "3", "3 days", "3D", "P", "PT", "P1DT", "PT0H", "0WD", "-3WD", "3WDX", "WD", "2H", "P1M", "P1Y", "P1Y2D", "soon"],
)
def test_bad_budget_strings_are_rejected(text: str) -> None:
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_budget_errors_explain_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="ISO 8601 duration.*3WD.*8BH"):
        Budget.parse("3 days")
    with pytest.raises(BudgetError, match="years and months are ambiguous"):
        Budget.parse("P1M")
    with pytest.raises(BudgetError):
        Budget.parse(3)  # type: ignore[arg-type]


def test_budget_descriptions() -> None:
    assert Budget.parse("3WD").describe() == {"en": "3 working days", "zh": "3 个工作日"}
    assert Budget.parse("1WD").describe() == {"en": "1 working day", "zh": "1 个工作日"}
    assert Budget.parse("8BH").describe() == {"en": "8 business hours", "zh": "8 个工作小时"}
    assert Budget.parse("P1DT12H").describe() == {"en": "1 day 12 hours wall-clock", "zh": "全天候 1 天 12 小时"}


# ---------------------------------------------------------------------- deadlines


def test_deadline_across_weekend(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    assert clock.deadline() == sh(2026, 11, 25, 15)
    assert clock.deadline().tzinfo is UTC


def test_deadline_across_national_day(cn: BusinessCalendar) -> None:
    clock = SlaClock(started_at=sh(2026, 9, 30, 15), budget="2WD", calendar=cn)
    # 3 h on 30 Sep, 1-7 Oct off, 9 h on 8 Oct, 6 h on Fri 9 Oct.
    assert clock.deadline() == sh(2026, 10, 9, 15)
    # 3WD reaches the 调休 Saturday 10 Oct.
    assert clock.with_budget("3WD").deadline() == sh(2026, 10, 10, 15)


def test_start_outside_working_hours(cn: BusinessCalendar) -> None:
    clock = SlaClock(started_at=sh(2026, 11, 21, 10), budget="8BH", calendar=cn)  # Saturday
    assert clock.deadline() == sh(2026, 11, 23, 17)
    assert clock.elapsed(sh(2026, 11, 22, 23)) == timedelta(0)
    assert clock.elapsed(sh(2026, 11, 23, 10)) == timedelta(hours=1)


def test_inputs_in_utc_calendar_in_shanghai(cn: BusinessCalendar) -> None:
    clock = SlaClock(started_at=datetime(2026, 11, 20, 7, tzinfo=UTC), budget="3WD", calendar=cn)
    assert clock.deadline() == datetime(2026, 11, 25, 7, tzinfo=UTC)
    assert clock.elapsed(datetime(2026, 11, 23, 2, tzinfo=UTC)) == timedelta(hours=4)  # Mon 10:00 Shanghai
    info = clock.explain(datetime(2026, 11, 23, 2, tzinfo=UTC))
    assert info["started_at"] == "2026-11-20T07:00:00+00:00"
    assert info["started_at_local"] == "2026-11-20 15:00"
    assert info["due_at"] == "2026-11-25T07:00:00+00:00"
    assert info["due_at_local"] == "2026-11-25 15:00"


def test_naive_datetimes_are_rejected(cn: BusinessCalendar) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SlaClock(started_at=datetime(2026, 11, 20, 15), budget="3WD", calendar=cn)
    clock = friday_clock(cn)
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.pause(datetime(2026, 11, 23, 10), "x")
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.elapsed(datetime(2026, 11, 23, 10))


# ------------------------------------------------------------------------- 24 x 7


def test_wall_clock_budgets_ignore_weekends_and_holidays(cn: BusinessCalendar) -> None:
    assert friday_clock(cn, "PT24H").deadline() == sh(2026, 11, 21, 15)
    assert friday_clock(cn, "P2D").deadline() == sh(2026, 11, 22, 15)
    assert friday_clock(cn, "PT2H").deadline() == sh(2026, 11, 20, 17)
    holiday = SlaClock(started_at=sh(2026, 10, 1, 10), budget="PT24H", calendar=cn)
    assert holiday.deadline() == sh(2026, 10, 2, 10)
    assert holiday.counting_calendar == TwentyFourSeven("Asia/Shanghai")


def test_wall_clock_budget_with_night_pause(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn, "PT24H")
    clock.pause(sh(2026, 11, 21, 1), "waiting_for_customer")
    clock.resume(sh(2026, 11, 21, 3))
    assert clock.deadline() == sh(2026, 11, 21, 17)
    assert clock.elapsed(sh(2026, 11, 21, 5)) == timedelta(hours=12)


# ------------------------------------------------------------------------- pauses


def test_closed_pause_moves_deadline(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    assert not clock.is_paused
    assert clock.deadline() == sh(2026, 11, 25, 17)


def test_pause_over_weekend_only_costs_working_time(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 20, 17), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 10))
    assert clock.deadline() == sh(2026, 11, 25, 17)
    info = clock.explain(sh(2026, 11, 24, 9))
    assert info["pauses"][0]["duration"]["seconds"] == 65 * 3600
    assert info["pauses"][0]["counted"]["seconds"] == 2 * 3600
    assert info["paused_total"] == {"seconds": 7200, "en": "2 h 0 min", "zh": "2 小时 0 分"}


def test_open_pause_stops_the_clock(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    assert clock.is_paused
    assert clock.deadline() is None
    assert clock.due_at_fraction(1.5) is None
    # 3 h Friday + 1 h Monday used; the rest is frozen while paused.
    assert clock.remaining(sh(2026, 11, 23, 10)) == timedelta(hours=23)
    assert clock.remaining(sh(2026, 11, 24, 16)) == timedelta(hours=23)
    assert clock.fraction_used(sh(2026, 11, 24, 16)) == pytest.approx(4 / 27)
    clock.resume(sh(2026, 11, 24, 14))
    # 23 h from Tue 14:00: 4 h Tue, 9 h Wed, 9 h Thu, 1 h Fri.
    assert clock.deadline() == sh(2026, 11, 27, 10)


def test_one_closed_and_one_open_pause(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    clock.pause(sh(2026, 11, 24, 9), "waiting_for_parts")
    assert clock.deadline() is None
    assert clock.remaining(sh(2026, 11, 24, 17)) == timedelta(hours=17)
    clock.resume(sh(2026, 11, 25, 9))
    assert clock.deadline() == sh(2026, 11, 26, 17)
    assert [p.reason for p in clock.pauses] == ["waiting_for_customer", "waiting_for_parts"]


def test_ledger_evaluated_as_of_now(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    assert clock.deadline(sh(2026, 11, 23, 9, 30)) == sh(2026, 11, 25, 15)  # pause not yet recorded
    assert clock.deadline(sh(2026, 11, 23, 11)) is None  # paused at that time
    assert clock.deadline(sh(2026, 11, 23, 13)) == sh(2026, 11, 25, 17)


def test_pause_ledger_validation(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    with pytest.raises(ValueError, match="not paused"):
        clock.resume(sh(2026, 11, 23, 10))
    with pytest.raises(ValueError, match="before"):
        clock.pause(sh(2026, 11, 20, 14), "too early")
    clock.pause(sh(2026, 11, 23, 10), "x")
    with pytest.raises(ValueError, match="already paused"):
        clock.pause(sh(2026, 11, 23, 11), "again")
    with pytest.raises(ValueError, match="before it began"):
        clock.resume(sh(2026, 11, 23, 9))
    clock.resume(sh(2026, 11, 23, 11))
    with pytest.raises(ValueError, match="before"):
        clock.pause(sh(2026, 11, 23, 10, 30), "overlapping")
    with pytest.raises(ValueError, match="not the last"):
        SlaClock(
            started_at=sh(2026, 11, 20, 15),
            budget="3WD",
            calendar=cn,
            pauses=[Pause(sh(2026, 11, 23, 10)), Pause(sh(2026, 11, 24, 10), sh(2026, 11, 24, 11))],
        )


# ------------------------------------------------------------------ budget change


def test_budget_change_keeps_pauses(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    urgent = clock.with_budget("1WD", "urgent")
    # 9 h: 3 h Fri, 1 h Mon before the pause, 5 h after it.
    assert urgent.deadline() == sh(2026, 11, 23, 17)
    assert urgent.policy == "urgent" and urgent.tier == "core"
    assert urgent.pauses == clock.pauses
    vip = clock.with_budget(Budget.parse("8BH"), "vip", tier="gold")
    assert vip.deadline() == sh(2026, 11, 23, 16)
    assert vip.tier == "gold"
    # The original clock is unchanged.
    assert clock.deadline() == sh(2026, 11, 25, 17) and clock.policy == "default"
    # New pauses on the new clock do not leak into the old one.
    urgent.pause(sh(2026, 11, 23, 13), "x")
    assert not clock.is_paused


def test_budget_change_while_paused(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    wider = clock.with_budget("5WD", "relaxed")
    assert wider.deadline() is None
    assert wider.remaining(sh(2026, 11, 23, 15)) == timedelta(hours=45 - 4)
    wider.resume(sh(2026, 11, 24, 9))
    # 41 h from Tue 09:00: Tue, Wed, Thu, Fri (36 h), then 5 h on Mon 30th.
    assert wider.deadline() == sh(2026, 11, 30, 14)


# ---------------------------------------------------------------- escalation rungs


def test_fraction_used_and_rungs(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    assert clock.due_at_fraction(0.5) == sh(2026, 11, 24, 10, 30)  # 13.5 h
    assert clock.due_at_fraction(1.0) == sh(2026, 11, 25, 15)
    assert clock.due_at_fraction(1.5) == sh(2026, 11, 27, 10, 30)  # 40.5 h
    assert clock.fraction_used(sh(2026, 11, 24, 10, 30)) == pytest.approx(0.5)
    assert clock.fraction_used(sh(2026, 11, 25, 15)) == pytest.approx(1.0)
    assert clock.fraction_used(sh(2026, 11, 27, 10, 30)) == pytest.approx(1.5)
    assert clock.remaining(sh(2026, 11, 27, 10, 30)) == timedelta(hours=-13.5)
    assert clock.fraction_used(sh(2026, 11, 19, 10)) == 0.0


def test_now_defaults_to_engine_clock(cn: BusinessCalendar) -> None:
    from engine.clock import FrozenClock, use_clock

    clock = friday_clock(cn)
    with use_clock(FrozenClock(sh(2026, 11, 23, 12))):
        assert clock.elapsed() == timedelta(hours=6)
        assert clock.remaining() == timedelta(hours=21)


# ------------------------------------------------------------------------ explain


def test_explain_closed_pause(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    info = clock.explain(sh(2026, 11, 24, 9))
    assert info["sentence"]["en"] == (
        "Budget 3 working days (policy default, tier core) on calendar CN (Asia/Shanghai), "
        "started 2026-11-20 15:00, paused 2 h 0 min (waiting for customer), "
        "hence due at 2026-11-25 17:00 Asia/Shanghai."
    )
    assert info["sentence"]["zh"] == (
        "时限 3 个工作日（策略 default，客户等级 core），日历 中国（Asia/Shanghai），"
        "开始于 2026-11-20 15:00，暂停 2 小时 0 分（等待客户），因此截止于 2026-11-25 17:00（Asia/Shanghai）。"
    )
    assert info["budget"] == "3WD"
    assert info["policy"] == "default" and info["tier"] == "core"
    assert info["calendar"]["name"] == "CN" and info["calendar"]["timezone"] == "Asia/Shanghai"
    assert info["due_at"] == "2026-11-25T09:00:00+00:00"
    assert info["paused_total"]["seconds"] == 7200
    assert info["pauses"] == [{
        "paused_at": "2026-11-23T02:00:00+00:00",
        "resumed_at": "2026-11-23T04:00:00+00:00",
        "open": False,
        "reason": "waiting_for_customer",
        "reason_text": {"en": "waiting for customer", "zh": "等待客户"},
        "duration": {"seconds": 7200, "en": "2 h 0 min", "zh": "2 小时 0 分"},
        "counted": {"seconds": 7200, "en": "2 h 0 min", "zh": "2 小时 0 分"},
    }]
    assert info["elapsed"]["seconds"] == 10 * 3600 and info["remaining"]["seconds"] == 17 * 3600
    assert info["is_paused"] is False
    json.dumps(info)


def test_explain_without_pauses_and_several_reasons(cn: BusinessCalendar) -> None:
    clock = SlaClock(started_at=sh(2026, 11, 20, 15), budget="3WD", calendar=cn)
    assert clock.explain(sh(2026, 11, 20, 16))["sentence"]["en"] == (
        "Budget 3 working days (policy default) on calendar CN (Asia/Shanghai), "
        "started 2026-11-20 15:00, not paused, hence due at 2026-11-25 15:00 Asia/Shanghai."
    )
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    clock.pause(sh(2026, 11, 24, 10), "Waiting for parts")
    clock.resume(sh(2026, 11, 24, 11))
    info = clock.explain(sh(2026, 11, 24, 12))
    assert info["due_at_local"] == "2026-11-25 18:00"
    assert "paused 3 h 0 min (waiting for customer 2 h 0 min; waiting for parts 1 h 0 min)" in info["sentence"]["en"]
    assert "暂停 3 小时 0 分（等待客户 2 小时 0 分；等待配件 1 小时 0 分）" in info["sentence"]["zh"]


def test_explain_open_pause(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 23, 10), "waiting for parts")
    info = clock.explain(sh(2026, 11, 24, 16))
    assert info["due_at"] is None and info["is_paused"] is True
    assert info["paused_total"]["seconds"] == 15 * 3600
    assert info["pauses"][0]["open"] is True
    assert info["sentence"]["en"] == (
        "Budget 3 working days (policy default, tier core) on calendar CN (Asia/Shanghai), "
        "started 2026-11-20 15:00, paused 15 h 0 min (waiting for parts), and is paused since "
        "2026-11-23 10:00 with 23 h 0 min left, so it has no due time while paused."
    )
    assert info["sentence"]["zh"].endswith("自 2026-11-23 10:00 起暂停中，剩余 23 小时 0 分，暂停期间没有截止时间。")


def test_explain_paused_after_breach(cn: BusinessCalendar) -> None:
    clock = friday_clock(cn)
    clock.pause(sh(2026, 11, 26, 9), "waiting_for_customer")
    info = clock.explain(sh(2026, 11, 26, 12))
    assert info["remaining"]["seconds"] == -3 * 3600
    assert "overdue by 3 h 0 min" in info["sentence"]["en"]
    assert "已超时 3 小时 0 分" in info["sentence"]["zh"]


def test_explain_wall_clock_budget(cn: BusinessCalendar) -> None:
    info = friday_clock(cn, "PT24H").explain(sh(2026, 11, 20, 16))
    assert info["calendar"]["kind"] == "24x7"
    assert info["sentence"]["en"] == (
        "Budget 24 hours wall-clock (policy default, tier core) on calendar 24x7 (Asia/Shanghai), "
        "started 2026-11-20 15:00, not paused, hence due at 2026-11-21 15:00 Asia/Shanghai."
    )
    assert info["sentence"]["zh"].startswith("时限 全天候 24 小时（策略 default，客户等级 core），日历 全天候（Asia/Shanghai）")


# -------------------------------------------------------------------- persistence


def test_to_dict_from_dict_round_trip(tmp_path) -> None:
    path = tmp_path / "acme.toml"
    path.write_text('name = "ACME"\nextra_workdays = [2026-11-21]\n[working_hours]\nlunch = ["12:00", "13:00"]\n')
    cal = BusinessCalendar.from_config(path)
    clock = SlaClock(started_at=sh(2026, 11, 20, 15), budget="3WD", calendar=cal, policy="gold-sla", tier="vip")
    clock.pause(sh(2026, 11, 23, 10), "waiting_for_customer")
    clock.resume(sh(2026, 11, 23, 12))
    clock.pause(sh(2026, 11, 24, 9), "waiting_for_parts")

    data = json.loads(json.dumps(clock.to_dict()))
    assert data["started_at"] == "2026-11-20T07:00:00+00:00"
    assert data["pauses"][1] == {"paused_at": "2026-11-24T01:00:00+00:00", "resumed_at": None, "reason": "waiting_for_parts"}
    again = SlaClock.from_dict(data)
    assert again.to_dict() == clock.to_dict()
    assert again == clock
    assert again.is_paused and again.deadline() is None

    again.resume(sh(2026, 11, 24, 10))
    # 3WD = 24 h on 8 h days (09-18 with lunch 12-13): Fri 15-18 (3 h), extra Saturday (8 h, 11 h),
    # Mon 09-10 (12 h), paused 10-12, 13-18 (17 h), Tue paused 09-10, 10-12 (19 h), 13-18 (24 h).
    assert again.deadline() == sh(2026, 11, 24, 18)

    with_live_calendar = SlaClock.from_dict(data, calendar=BusinessCalendar.from_config())
    assert with_live_calendar.calendar.name == "CN"
    assert with_live_calendar.budget == Budget.parse("3WD")
