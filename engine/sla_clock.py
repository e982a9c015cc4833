"""SLA clocks: a budget counted on a calendar from a start time, minus pauses.

Pure Python (no database, no Flask); the SLA/escalation layer persists clocks with
:meth:`SlaClock.to_dict` and rebuilds them with :meth:`SlaClock.from_dict`.

Budgets (:class:`Budget`):

- ISO 8601 durations (``PT2H``, ``PT24H``, ``P2D``, ``P1DT12H``, ``PT90M``, ``P1W``):
  wall-clock time, counted 24x7 (years and months are refused as ambiguous);
- ``3WD``: 3 working days = 3 x (working hours per day) of working time on the
  clock's business calendar (Friday 15:00 + 3WD = Wednesday 15:00 with 09:00-18:00);
- ``8BH``: 8 business (working) hours.

Counted time is time that is working time on the counting calendar AND not inside a
pause. The deadline is the moment counted time since the start reaches the budget; while
a pause is open the clock stands still and the deadline is ``None``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.calendar import (
    BusinessCalendar,
    Calendar,
    TwentyFourSeven,
    calendar_from_dict,
    ensure_aware,
    parse_aware,
)
from engine.errors import CareflowError

WALL = "wall"
WORKING_DAYS = "working_days"
BUSINESS_HOURS = "business_hours"

PAUSE_REASON_LABELS: dict[str, tuple[str, str]] = {
    "waiting_for_customer": ("waiting for customer", "等待客户"),
    "waiting_for_parts": ("waiting for parts", "等待配件"),
    "waiting_for_third_party": ("waiting for a third party", "等待第三方"),
    "customer_unreachable": ("customer unreachable", "客户无法联系"),
    "scheduled_visit": ("waiting for the scheduled visit", "等待预约上门"),
    "customer_requested": ("paused at the customer's request", "应客户要求暂停"),
}
"""Known pause reason codes -> (English, Chinese) labels; other reasons are shown as given."""


class BudgetError(CareflowError, ValueError):
    """A budget string is not one of the accepted forms."""


def _utcnow() -> datetime:
    from engine.clock import utcnow  # late import: keeps this module free of SpiffWorkflow at import time

    return utcnow()


# ---------------------------------------------------------------------------- budget

_ISO_RE = re.compile(
    r"P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_WORKING_RE = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>WD|BH)")
_ISO_UNITS = (("weeks", "week", "周"), ("days", "day", "天"), ("hours", "hour", "小时"),
              ("minutes", "minute", "分钟"), ("seconds", "second", "秒"))
_ACCEPTED = "an ISO 8601 duration like 'PT2H', 'PT24H' or 'P2D' (wall clock), '3WD' (working days) or '8BH' (business hours)"


def _num(d: Decimal) -> str:
    return format(d.normalize(), "f")


@dataclass(frozen=True)
class Budget:
    """An SLA budget; build it with :meth:`parse`. ``str(budget)`` is its canonical spec."""

    spec: str
    kind: str
    amount: Decimal
    wall: timedelta | None = None
    parts: tuple[tuple[str, Decimal], ...] = ()

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """Parse ``'PT2H'``, ``'P2D'``, ``'3WD'``, ``'8BH'`` (case-insensitive); raise :class:`BudgetError` otherwise."""
        if isinstance(text, Budget):
            return text
        if not isinstance(text, str):
            raise BudgetError(f"budget must be a string, got {text!r}; expected {_ACCEPTED}")
        return cls._parse_spec(text)

    @classmethod
    @functools.lru_cache(maxsize=512)  # a budget is immutable: every clock read parses one of a few specs
    def _parse_spec(cls, text: str) -> Budget:
        spec = text.strip().upper().replace(",", ".")
        m = _WORKING_RE.fullmatch(spec)
        if m:
            amount = Decimal(m["amount"])
            if amount <= 0:
                raise BudgetError(f"budget {text!r} must be positive")
            kind = WORKING_DAYS if m["unit"] == "WD" else BUSINESS_HOURS
            return cls(spec=f"{_num(amount)}{m['unit']}", kind=kind, amount=amount)
        if spec.startswith("P"):
            m = _ISO_RE.fullmatch(spec)
            if m and spec not in ("P", "PT") and not spec.endswith("T"):
                parts = tuple((k, Decimal(v)) for k, v in m.groupdict().items() if v is not None)
                try:
                    wall = timedelta(**{k: float(v) for k, v in parts})
                except (OverflowError, InvalidOperation) as exc:
                    raise BudgetError(f"budget {text!r} is too large") from exc
                if wall <= timedelta(0):
                    raise BudgetError(f"budget {text!r} must be positive")
                return cls(spec=spec, kind=WALL, amount=Decimal(wall.total_seconds()), wall=wall, parts=parts)
            date_part = spec[1:].split("T", 1)[0]
            if re.search(r"\d(?:\.\d+)?[YM]", date_part):
                raise BudgetError(
                    f"budget {text!r}: years and months are ambiguous; use days (e.g. 'P30D') or working days ('20WD')"
                )
        raise BudgetError(f"unrecognised budget {text!r}; expected {_ACCEPTED}")

    def __str__(self) -> str:
        return self.spec

    @property
    def is_wall_clock(self) -> bool:
        """True for ISO 8601 durations (counted 24x7)."""
        return self.kind == WALL

    def counting_calendar(self, calendar: Calendar) -> Calendar:
        """The calendar this budget is counted on: 24x7 (same zone) for wall-clock budgets, else ``calendar``."""
        if self.kind == WALL and not isinstance(calendar, TwentyFourSeven):
            return _twenty_four_seven(calendar.timezone_name)
        return calendar

    def duration(self, calendar: Calendar) -> timedelta:
        """The budget as counted time on ``calendar`` (3WD with 09:00-18:00 -> 27 h)."""
        if self.kind == WALL:
            assert self.wall is not None
            return self.wall
        if self.kind == WORKING_DAYS:
            return calendar.working_hours_per_day * float(self.amount)
        return timedelta(hours=float(self.amount))

    def describe(self) -> dict[str, str]:
        """Human labels: ``{'en': '3 working days', 'zh': '3 个工作日'}``, ``{'en': '24 hours wall-clock', 'zh': '全天候 24 小时'}``."""
        n = _num(self.amount)
        if self.kind == WORKING_DAYS:
            return {"en": f"{n} working day{'' if self.amount == 1 else 's'}", "zh": f"{n} 个工作日"}
        if self.kind == BUSINESS_HOURS:
            return {"en": f"{n} business hour{'' if self.amount == 1 else 's'}", "zh": f"{n} 个工作小时"}
        units = {k: (en, zh) for k, en, zh in _ISO_UNITS}
        en = " ".join(f"{_num(v)} {units[k][0]}{'' if v == 1 else 's'}" for k, v in self.parts if v)
        zh = " ".join(f"{_num(v)} {units[k][1]}" for k, v in self.parts if v)
        return {"en": f"{en} wall-clock", "zh": f"全天候 {zh}"}


@functools.lru_cache(maxsize=64)
def _twenty_four_seven(timezone: str) -> TwentyFourSeven:
    """The (immutable) 24x7 calendar of a zone, built once: every wall-clock deadline counts on one."""
    return TwentyFourSeven(timezone)


# ----------------------------------------------------------------------------- pause


@dataclass(frozen=True)
class Pause:
    """One entry of the pause ledger: ``[paused_at, resumed_at)``; open while ``resumed_at`` is None."""

    paused_at: datetime
    resumed_at: datetime | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "paused_at", ensure_aware(self.paused_at, "paused_at"))
        if self.resumed_at is not None:
            object.__setattr__(self, "resumed_at", ensure_aware(self.resumed_at, "resumed_at"))
            if self.resumed_at < self.paused_at:
                raise ValueError(f"pause resumed at {self.resumed_at} before it began at {self.paused_at}")

    @property
    def is_open(self) -> bool:
        """True while the pause has not been resumed."""
        return self.resumed_at is None

    def duration(self, now: datetime | None = None) -> timedelta:
        """Wall-clock length; an open pause counts up to ``now`` (default: the engine's now)."""
        end = self.resumed_at or ensure_aware(now or _utcnow(), "now")
        return max(end - self.paused_at, timedelta(0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form with ISO 8601 UTC strings."""
        return {
            "paused_at": self.paused_at.isoformat(),
            "resumed_at": self.resumed_at.isoformat() if self.resumed_at else None,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pause:
        """Inverse of :meth:`to_dict`."""
        resumed = data.get("resumed_at")
        return cls(
            paused_at=parse_aware(data["paused_at"], "paused_at"),
            resumed_at=parse_aware(resumed, "resumed_at") if resumed else None,
            reason=data.get("reason") or "",
        )


def reason_labels(reason: str) -> tuple[str, str]:
    """(English, Chinese) label of a pause reason code; unknown reasons are returned as given."""
    key = re.sub(r"[\s-]+", "_", reason.strip().lower())
    if key in PAUSE_REASON_LABELS:
        return PAUSE_REASON_LABELS[key]
    if not reason.strip():
        return ("no reason given", "未注明原因")
    return (reason, reason)


def _fmt_duration(td: timedelta) -> dict[str, Any]:
    """``{'seconds': 7200, 'en': '2 h 0 min', 'zh': '2 小时 0 分'}`` (minutes rounded down)."""
    seconds = int(td.total_seconds())
    sign = "-" if seconds < 0 else ""
    h, rest = divmod(abs(seconds), 3600)
    m = rest // 60
    return {"seconds": seconds, "en": f"{sign}{h} h {m} min", "zh": f"{sign}{h} 小时 {m} 分"}


# ----------------------------------------------------------------------------- clock


@dataclass
class SlaClock:
    """A budget counted on a calendar from ``started_at``, with a ledger of pauses.

    ``pause``/``resume`` change the ledger in place; ``with_budget`` returns a new clock
    with the same start and ledger. For ``deadline``/``explain``, ``now=None`` means "the
    ledger as recorded"; a given ``now`` evaluates the ledger as it stood then (entries
    after ``now`` ignored, pauses resumed after ``now`` still open). ``elapsed``,
    ``remaining`` and ``fraction_used`` default ``now`` to the engine's clock.
    """

    started_at: datetime
    budget: Budget
    calendar: Calendar = field(default_factory=BusinessCalendar.china)
    pauses: list[Pause] = field(default_factory=list)
    policy: str = "default"
    tier: str | None = None

    def __post_init__(self) -> None:
        self.started_at = ensure_aware(self.started_at, "started_at")
        self.budget = Budget.parse(self.budget)
        if not isinstance(self.calendar, Calendar):
            raise ValueError(f"calendar must be a BusinessCalendar or TwentyFourSeven, got {self.calendar!r}")
        self.pauses = list(self.pauses)
        previous_end = self.started_at
        for i, p in enumerate(self.pauses):
            if not isinstance(p, Pause):
                raise ValueError(f"pauses[{i}] must be a Pause, got {p!r}")
            if p.paused_at < previous_end:
                raise ValueError(
                    f"pauses[{i}] starts at {p.paused_at.isoformat()}, before the clock started or the previous "
                    f"pause ended ({previous_end.isoformat()})"
                )
            if p.is_open and i != len(self.pauses) - 1:
                raise ValueError(f"pauses[{i}] is open but is not the last pause")
            previous_end = p.resumed_at or p.paused_at

    # ---- ledger

    @property
    def is_paused(self) -> bool:
        """True if the last pause has not been resumed."""
        return bool(self.pauses) and self.pauses[-1].is_open

    def pause(self, at: datetime, reason: str = "") -> Pause:
        """Open a pause at ``at`` (in place); raise ``ValueError`` if already paused or out of order."""
        at = ensure_aware(at, "at")
        if self.is_paused:
            raise ValueError(f"clock is already paused since {self.pauses[-1].paused_at.isoformat()}")
        floor = self.pauses[-1].resumed_at if self.pauses else self.started_at
        assert floor is not None
        if at < floor:
            raise ValueError(f"cannot pause at {at.isoformat()}, before {floor.isoformat()}")
        entry = Pause(paused_at=at, reason=reason)
        self.pauses.append(entry)
        return entry

    def resume(self, at: datetime) -> Pause:
        """Close the open pause at ``at`` (in place) and return the closed entry."""
        at = ensure_aware(at, "at")
        if not self.is_paused:
            raise ValueError("clock is not paused")
        entry = dataclasses.replace(self.pauses[-1], resumed_at=at)  # validates at >= paused_at
        self.pauses[-1] = entry
        return entry

    def with_budget(self, new_budget: Budget | str, policy_name: str | None = None, tier: str | None = None) -> SlaClock:
        """A new clock with another budget (and policy/tier if given), same start, calendar and pauses."""
        return dataclasses.replace(
            self,
            budget=Budget.parse(new_budget),
            policy=self.policy if policy_name is None else policy_name,
            tier=self.tier if tier is None else tier,
            pauses=list(self.pauses),
        )

    def _ledger(self, now: datetime | None) -> list[tuple[datetime, datetime | None, str]]:
        """Pauses as (start, end or None, reason), as they stood at ``now`` (None: as recorded)."""
        if now is None:
            return [(p.paused_at, p.resumed_at, p.reason) for p in self.pauses]
        out: list[tuple[datetime, datetime | None, str]] = []
        for p in self.pauses:
            if p.paused_at > now:
                break
            out.append((p.paused_at, p.resumed_at if p.resumed_at and p.resumed_at <= now else None, p.reason))
        return out

    # ---- arithmetic

    @property
    def counting_calendar(self) -> Calendar:
        """Calendar the budget is counted on (24x7 for ISO-duration budgets)."""
        return self.budget.counting_calendar(self.calendar)

    @property
    def budget_duration(self) -> timedelta:
        """The budget as counted time (3WD on 09:00-18:00 -> 27 h)."""
        return self.budget.duration(self.calendar)

    def _counted_in_pauses(self, now: datetime) -> list[timedelta]:
        cal = self.counting_calendar
        return [
            cal.working_time_between(start, min(end or now, now)) if start < now else timedelta(0)
            for start, end, _ in self._ledger(now)
        ]

    def elapsed(self, now: datetime | None = None) -> timedelta:
        """Counted time (working and not paused) from the start until ``now``."""
        now = ensure_aware(now or _utcnow(), "now")
        if now <= self.started_at:
            return timedelta(0)
        total = self.counting_calendar.working_time_between(self.started_at, now)
        return total - sum(self._counted_in_pauses(now), timedelta(0))

    def remaining(self, now: datetime | None = None) -> timedelta:
        """Budget left at ``now``; negative once overdue; frozen while paused."""
        return self.budget_duration - self.elapsed(now)

    def fraction_used(self, now: datetime | None = None) -> float:
        """Share of the budget used at ``now`` (0.5 = half, 1.0 = due, 1.5 = 50 % overdue)."""
        return self.elapsed(now) / self.budget_duration

    def due_at_fraction(self, fraction: float, now: datetime | None = None) -> datetime | None:
        """UTC moment when ``fraction`` of the budget is used (escalation rungs); None while paused."""
        if fraction < 0:
            raise ValueError(f"fraction must be >= 0, got {fraction}")
        ledger = self._ledger(None if now is None else ensure_aware(now, "now"))
        if ledger and ledger[-1][1] is None:
            return None
        cal = self.counting_calendar
        remaining = self.budget_duration * fraction
        cursor = self.started_at
        for start, end, _ in ledger:
            segment = cal.working_time_between(cursor, start)
            if segment >= remaining:
                return cal.add_working_time(cursor, remaining)
            remaining -= segment
            assert end is not None
            cursor = end
        return cal.add_working_time(cursor, remaining)

    def deadline(self, now: datetime | None = None) -> datetime | None:
        """UTC moment when counted time reaches the budget; None while a pause is open."""
        return self.due_at_fraction(1.0, now)

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (ISO 8601 UTC strings, budget spec, calendar description)."""
        return {
            "version": 1,
            "started_at": self.started_at.isoformat(),
            "budget": self.budget.spec,
            "policy": self.policy,
            "tier": self.tier,
            "calendar": self.calendar.to_dict(),
            "pauses": [p.to_dict() for p in self.pauses],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], calendar: Calendar | None = None) -> SlaClock:
        """Inverse of :meth:`to_dict`; pass ``calendar`` to use a live calendar instead of the stored one."""
        if calendar is None:
            calendar = calendar_from_dict(data["calendar"]) if data.get("calendar") else BusinessCalendar.china()
        return cls(
            started_at=parse_aware(data["started_at"], "started_at"),
            budget=Budget.parse(data["budget"]),
            calendar=calendar,
            pauses=[Pause.from_dict(p) for p in data.get("pauses") or []],
            policy=data.get("policy") or "default",
            tier=data.get("tier"),
        )

    # ---- explanation

    def explain(self, now: datetime | None = None) -> dict[str, Any]:
        """Why the clock is due when it is: budget, policy, tier, calendar, pauses, due time and a sentence.

        ``sentence`` holds the same explanation in English (``en``) and Simplified Chinese
        (``zh``); durations are ``{'seconds', 'en', 'zh'}`` dicts. ``paused_total`` is the
        counted (working) time the pauses took off the clock; each pause also has its
        wall-clock ``duration``.
        """
        as_of = ensure_aware(now, "now") if now is not None else _utcnow()
        ledger = self._ledger(None if now is None else as_of)
        cal = self.counting_calendar
        due = self.deadline(now)
        paused_now = bool(ledger) and ledger[-1][1] is None

        def local(dt: datetime) -> str:
            return dt.astimezone(cal.tz).strftime("%Y-%m-%d %H:%M")

        pauses: list[dict[str, Any]] = []
        per_reason: dict[str, timedelta] = {}
        total = timedelta(0)
        for start, end, reason in ledger:
            stop = end or max(as_of, start)
            counted = cal.working_time_between(start, stop)
            total += counted
            per_reason[reason] = per_reason.get(reason, timedelta(0)) + counted
            en, zh = reason_labels(reason)
            pauses.append({
                "paused_at": start.isoformat(),
                "resumed_at": end.isoformat() if end else None,
                "open": end is None,
                "reason": reason,
                "reason_text": {"en": en, "zh": zh},
                "duration": _fmt_duration(stop - start),
                "counted": _fmt_duration(counted),
            })

        budget_text = self.budget.describe()
        cal_text = cal.describe()
        tier_en = f", tier {self.tier}" if self.tier else ""
        tier_zh = f"，客户等级 {self.tier}" if self.tier else ""
        en = (f"Budget {budget_text['en']} (policy {self.policy}{tier_en}) on calendar {cal_text['en']}, "
              f"started {local(self.started_at)}")
        zh = (f"时限 {budget_text['zh']}（策略 {self.policy}{tier_zh}），日历 {cal_text['zh']}，"
              f"开始于 {local(self.started_at)}")
        if ledger:
            tot = _fmt_duration(total)
            if len(per_reason) == 1:
                r_en, r_zh = reason_labels(next(iter(per_reason)))
            else:
                labelled = [(reason_labels(r), _fmt_duration(t)) for r, t in per_reason.items()]
                r_en = "; ".join(f"{lab[0]} {d['en']}" for lab, d in labelled)
                r_zh = "；".join(f"{lab[1]} {d['zh']}" for lab, d in labelled)
            en += f", paused {tot['en']} ({r_en})"
            zh += f"，暂停 {tot['zh']}（{r_zh}）"
        else:
            en += ", not paused"
            zh += "，未暂停"
        if paused_now:
            since = local(ledger[-1][0])
            left = self.remaining(as_of)
            if left >= timedelta(0):
                en += f", and is paused since {since} with {_fmt_duration(left)['en']} left, so it has no due time while paused."
                zh += f"，自 {since} 起暂停中，剩余 {_fmt_duration(left)['zh']}，暂停期间没有截止时间。"
            else:
                en += f", and is paused since {since}, overdue by {_fmt_duration(-left)['en']}; no due time while paused."
                zh += f"，自 {since} 起暂停中，已超时 {_fmt_duration(-left)['zh']}，暂停期间没有截止时间。"
        else:
            assert due is not None
            en += f", hence due at {local(due)} {cal.timezone_name}."
            zh += f"，因此截止于 {local(due)}（{cal.timezone_name}）。"

        elapsed = self.elapsed(as_of)
        return {
            "budget": self.budget.spec,
            "budget_text": budget_text,
            "budget_duration": _fmt_duration(self.budget_duration),
            "policy": self.policy,
            "tier": self.tier,
            "calendar": {
                "name": cal.name,
                "label_zh": cal.label_zh,
                "timezone": cal.timezone_name,
                "kind": "24x7" if isinstance(cal, TwentyFourSeven) else "business",
                "text": cal_text,
            },
            "started_at": self.started_at.isoformat(),
            "started_at_local": local(self.started_at),
            "pauses": pauses,
            "paused_total": _fmt_duration(total),
            "is_paused": paused_now,
            "as_of": as_of.astimezone(UTC).isoformat(),
            "elapsed": _fmt_duration(elapsed),
            "remaining": _fmt_duration(self.budget_duration - elapsed),
            "fraction_used": round(elapsed / self.budget_duration, 4),
            "due_at": due.isoformat() if due else None,
            "due_at_local": local(due) if due else None,
            "sentence": {"en": en, "zh": zh},
        }
