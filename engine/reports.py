"""Monthly after-sales analysis (售后月度数据分析): the figures supervisors run their month from.

One function per figure group, each ``(session, month, team=None, now=None)`` returning plain
dicts and lists: ``ticket_volume``, ``resolution_times``, ``sla_compliance``,
``complaint_compliance``, ``satisfaction``, ``revisit_coverage``, ``backlog``.
``month_report`` runs them all with one shared read of the month's tickets;
``report_tables`` lays a report out as the tables the web page, its CSV export and
``careflow report`` show (``table_matrix`` formats one of them).

Every number is a *cell* ``{"count": n, "tickets": [...]}``: the count and the references
behind it for drill-down — ticket numbers, and where a figure is about something else
``complaints`` (complaint numbers), ``customers`` (customer ids), ``tasks`` (human task ids)
or ``surveys`` (survey response ids). Everything is read with SQL from the side tables
(tickets, sla_clocks, complaints, survey_responses, customer_revisits, customers,
human_tasks); no workflow instance is ever loaded.

Definitions (all figures are as known at ``now``, default the engine clock):

- **Month** ``YYYY-MM``: from the 1st 00:00 to the next 1st 00:00, Asia/Shanghai local time.
- **The month's tickets**: tickets *registered* in the month (``tickets.created_at``, the
  date in the ticket number). ``opened`` counts them; ``resolved`` those now resolved,
  waiting for their revisit or closed; ``open`` the others (still being handled);
  ``reopened`` those reopened at least once. Problem types are their ``type``; fault
  categories those of their product faults.
- **Times and SLA** are per SLA clock of the month's tickets — one first-response and one
  solution clock per round (a reopened ticket opens a new round with new clocks; the complaint
  rule's ``respond``/``resolve`` clocks of service-complaint tickets count as first response /
  solution). A clock is *met* or *breached* when stopped (``engine.sla.stop_clock``, measured
  against a deadline that paused time already moved), *breached* also when still running past
  its due time or paused beyond its budget, else *pending*. Compliance = met / (met +
  breached). Times (hours) are from the clock's start (the customer's contact, or the
  reopening) to its stop, wall clock, minus the time it stood paused; clocks still running
  are not timed. Mean, median and p90 (linear interpolation, as ``percentile_cont``) are
  computed in Python from durations read with SQL.
- **Complaints**: complaints *received* in the month (as the weekly review); 1-24-48
  compliance per clock ``respond``/``plan``/``resolve`` as above; by cause: resolved, open,
  resolved within 48 h (``resolve`` clock met), late (any clock breached).
- **Satisfaction**: the surveys of the month's tickets (taken at the closing revisit,
  ``tickets.satisfaction``) and the survey answers given in the month (links and phone,
  ``survey_responses.at``). Average per dimension; share of overall scores >= 4 (goal 90 %);
  low scores (overall <= 2) with the supervisor follow-ups started and completed.
- **Revisits**: revisits due in the month (``customer_revisits.due_at``), per tier as recorded
  on the revisit. A revisit is *on time* when completed within ``REVISIT_GRACE`` (7 days) of
  when it was due or started, whichever is later (the revisit task's own due date, see
  ``engine.revisits.revisit_data``), *late* when completed after that, *missed* when failed
  or not completed by then, else *pending*. **Customers overdue now**: active customers with
  an open revisit past that limit, or whose next revisit fell due more than 7 days ago and
  was never started; per their current tier.
- **Backlog now** (the month does not apply): open human tasks per group and per assignee,
  overdue when past their due time; SLA clocks running past their due time per group and
  owner.

**Team** (``team`` = a group key such as ``technical_support``): the group and its members
(``group_members``). A ticket belongs to team G when a member of G registered it
(``created_by``) or handles it (``engineer``), or a clock of its current round is owned by a
member of G or owed by G itself (``sla_clocks.owner`` / ``group_name``). A complaint: recorded
by a member, or a clock owned by a member or owed by G. A survey answer: taken by a member,
or about a ticket of G. A revisit: the customer's account manager is a member, or a task of
the revisit's instance is in G or held by a member. Backlog: tasks of group G or held by a
member; clocks owed by G or owned by a member. ``team=None`` is every team.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Float, String, and_, case, cast, exists, false, or_, select, type_coerce
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.functions import FunctionElement

from engine import sla
from engine.complaints import CAUSES, Complaint
from engine.customers import Customer
from engine.errors import Problem, ValidationFailed
from engine.models import GroupMembership, HumanTask, Instance, User
from engine.revisits import CADENCES, CustomerRevisit
from engine.surveys import DIMENSIONS, LOW_SCORE_MAX, SurveyResponse
from engine.tickets import CLOCK_ROLES, PRIORITIES, SLA_GROUP, TYPES, Ticket, subject_key

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
RESOLVED_STATES = ("resolved", "revisit", "closed")
COMPLAINT_CLOCKS = ("respond", "plan", "resolve")
COMPLAINT_GROUP = "customer_service"  # complaint clocks are owed by customer service (engine.complaints)
ROLES = ("first_response", "solution")
REVISIT_GRACE = timedelta(days=7)  # a revisit's task is due 7 days after it was due or started
SATISFIED_MIN = 4
SATISFACTION_GOAL = 0.9
COMPLAINT_GOAL = 1.0
CHUNK = 2000  # ids per IN (...) list
_MONTH_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")

REF_KINDS = ("tickets", "complaints", "customers", "tasks", "surveys")

TYPE_LABELS = {"product_fault": ("Product fault", "产品故障"), "usage_question": ("Usage question", "使用咨询"),
               "service_complaint": ("Service complaint", "服务投诉"), "other": ("Other", "其他")}
PRIORITY_LABELS = {"urgent": ("Urgent", "紧急"), "important": ("Important", "重要"), "general": ("General", "一般")}
ROLE_LABELS = {"first_response": ("First response", "首次响应"), "solution": ("Solution", "解决")}
COMPLAINT_CLOCK_LABELS = {"respond": ("Respond and record", "响应并记录"), "plan": ("Solution plan", "解决方案"),
                          "resolve": ("Resolved and reported", "解决并反馈")}
FAULT_LABELS = {"hardware": ("Hardware", "硬件"), "software": ("Software", "软件"), "network": ("Network", "网络"),
                "configuration": ("Configuration", "配置"), "operation": ("Operation / usage", "操作使用"),
                "other": ("Other", "其他"), "": ("Not classified", "未分类")}
TIER_LABELS = {"core": ("Core", "核心客户"), "important": ("Important", "重要客户"), "basic": ("Basic", "基础客户"),
               "potential": ("Potential", "潜在客户"), "A": ("A (strategic)", "A 类（战略）"),
               "B": ("B (growth)", "B 类（成长）"), "C": ("C (regular)", "C 类（一般）"), "": ("No tier", "未分级")}
GROUP_LABELS = {"customer_service": ("Customer service", "客服"), "technical_support": ("Technical support", "技术支持"),
                "supervisor": ("Supervisors", "主管"), "account_manager": ("Account managers", "客户经理"),
                "sales": ("Sales", "销售"), "": ("No group", "无分组")}


def label_of(table: dict[str, tuple[str, str]], key: str | None) -> dict[str, str]:
    """``{"en", "zh"}`` label of a key in one of the label tables (the key itself when unknown)."""
    en, zh = table.get(key or "", (key or "—", key or "—"))
    return {"en": en, "zh": zh}


# ------------------------------------------------------------------------------ month, team


@dataclass(frozen=True)
class Period:
    """A report month: ``YYYY-MM`` and its UTC bounds ``[start, end)`` (Asia/Shanghai midnights)."""

    month: str
    start: datetime
    end: datetime


def parse_month(month: str | None, now: datetime | None = None) -> Period:
    """The period of ``YYYY-MM`` (default: the month of ``now`` in China); ``ValidationFailed`` if malformed."""
    if month is None or str(month).strip() == "":
        local = (now or _utcnow()).astimezone(LOCAL_TZ)
        year, mon = local.year, local.month
    else:
        m = _MONTH_RE.match(str(month))
        if not m or not 1 <= int(m[2]) <= 12 or not 2000 <= int(m[1]) <= 2999:
            raise ValidationFailed([Problem(f"{month!r} is not a month", field="month", hint="write YYYY-MM, e.g. 2026-03")])
        year, mon = int(m[1]), int(m[2])
    start = datetime(year, mon, 1, tzinfo=LOCAL_TZ)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=LOCAL_TZ)
    return Period(f"{year:04d}-{mon:02d}", start.astimezone(UTC), end.astimezone(UTC))


@dataclass(frozen=True)
class Team:
    """A report team: a group key and its members; ``name`` None means every team."""

    name: str | None
    members: tuple[str, ...] = ()


def known_teams(session: Session) -> list[str]:
    """Group keys that can be reported on: every group with members, and the groups SLA clocks are owed by."""
    names = set(session.scalars(select(GroupMembership.group_name).distinct()))
    return sorted(names | {SLA_GROUP, COMPLAINT_GROUP})


def resolve_team(session: Session, team: str | None) -> Team:
    """The team of a group key (members from ``group_members``); ``ValidationFailed`` for an unknown group."""
    if team is None or str(team).strip() == "":
        return Team(None)
    team = str(team).strip()
    teams = known_teams(session)
    if team not in teams:
        raise ValidationFailed([Problem(f"no team {team!r}", field="team", hint=f"teams: {', '.join(teams)}")])
    members = tuple(sorted(session.scalars(select(GroupMembership.username)
                                           .where(GroupMembership.group_name == team))))
    return Team(team, members)


def _members_in(column, team: Team):
    return column.in_(team.members) if team.members else false()


def _clock_in_team(team: Team, clock=sla.SlaClockRow):
    return or_(clock.group_name == team.name, _members_in(clock.owner, team))


def ticket_in_team(team: Team):
    """SQL condition: the ticket (``tickets`` row) belongs to ``team`` (see the module docstring)."""
    if team.name is None:
        return None
    clock = aliased(sla.SlaClockRow)  # distinct from a clock table the outer query may join
    return or_(_members_in(Ticket.created_by, team), _members_in(Ticket.engineer, team),
               exists().where(clock.subject_key == Ticket.sla_subject, _clock_in_team(team, clock)))


def complaint_in_team(team: Team):
    """SQL condition: the complaint belongs to ``team``."""
    if team.name is None:
        return None
    clock = aliased(sla.SlaClockRow)
    return or_(_members_in(Complaint.recorded_by, team),
               exists().where(clock.subject_key == Complaint.number, _clock_in_team(team, clock)))


def _where(query, *conds):
    return query.where(*[c for c in conds if c is not None])


# ------------------------------------------------------------------------------- helpers


def _utcnow() -> datetime:
    from engine.clock import utcnow

    return utcnow()


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def cell(refs: Iterable[str] = (), kind: str = "tickets", count: int | None = None, **more: Iterable) -> dict:
    """A figure: ``{"count": n, kind: sorted distinct refs}`` (``count`` defaults to the number of refs)."""
    items = sorted(set(refs))  # one kind of reference per list: all str or all int
    out: dict[str, Any] = {"count": len(items) if count is None else count, kind: items}
    for k, v in more.items():
        out[k] = sorted(set(v))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of sorted ``values`` with linear interpolation (PostgreSQL's percentile_cont)."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 2)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _run(session: Session, query):
    """Execute a figure query on the session's connection (Core rows: no ORM loading overhead)."""
    return session.connection().execute(query)


def _chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _paused_seconds(pauses: list[dict] | None, until: datetime) -> float:
    """Wall-clock seconds a clock stood paused up to ``until`` (an open pause counts up to it)."""
    total = 0.0
    for p in pauses or []:
        start = _aware(datetime.fromisoformat(p["paused_at"]))
        end = _aware(datetime.fromisoformat(p["resumed_at"])) if p.get("resumed_at") else until
        end = min(end, until)
        if end > start:
            total += (end - start).total_seconds()
    return total


def _raw(column):
    """``column`` read without its SQLAlchemy type's result processing (the hot report queries
    parse only what they use: ``_dt`` for times, ``_json`` for non-empty JSON)."""
    return type_coerce(column, String)


def _dt(value: Any) -> datetime | None:
    """An aware UTC datetime from a raw column value (SQLite: ISO text in UTC; PostgreSQL: datetime)."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(value: Any) -> Any:
    """A raw JSON column value (text, or already decoded by the driver); ``[]`` for none."""
    if value is None or value == "[]":
        return []
    return json.loads(value) if isinstance(value, str) else value


def _ticket_of(key: str) -> str:
    """The ticket number of an SLA subject key (``NUMBER`` or ``NUMBER/R<round>``)."""
    return key if "/" not in key else key.split("/R", 1)[0]


class seconds_between(FunctionElement):
    """SQL: whole seconds from the first timestamp to the second (``seconds_between(a, b)``)."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element, compiler, **kw) -> str:
    a, b = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST(strftime('%s', {b}) AS INTEGER) - CAST(strftime('%s', {a}) AS INTEGER))"


@compiles(seconds_between, "postgresql")
def _seconds_between_pg(element, compiler, **kw) -> str:
    a, b = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({b} - {a})) AS DOUBLE PRECISION)"


class _Clock:
    """One SLA clock as the reports need it: outcome and duration from SQL; the pause ledger and
    the fields of ``sla.clock_of`` parsed only for clocks that were paused."""

    __slots__ = ("number", "name", "role", "state", "priority", "seconds", "budget", "_row")

    def __init__(self, row: Any, subject_type: str):
        key, self.name, self.state, self.priority, self.seconds, self.budget = row[:6]
        self.number = _ticket_of(key)
        self.role = _ROLE_OF.get(self.name) if subject_type == "ticket" else self.name
        self._row = row if row[6] not in (None, "[]", []) or self.state == sla.PAUSED else None

    def _pauses(self) -> list[dict]:
        return _json(self._row[6]) if self._row is not None else []

    def outcome(self, now: datetime) -> str:
        """``met``, ``breached`` or ``pending`` as known at ``now`` (paused time excluded)."""
        if self.state != sla.PAUSED:
            return self.state
        _, _, _, _, _, budget, pauses, started, _, history, policy, tier = self._row
        clock = sla.clock_of(SimpleNamespace(started_at=_dt(started), budget=budget, pauses=_json(pauses),
                                             history=_json(history), policy=policy, tier=tier))
        return sla.BREACHED if clock.remaining(now) < timedelta(0) else "pending"

    def duration(self) -> float | None:
        """Seconds from start to stop minus paused time; None while the clock runs."""
        if self.seconds is None:
            return None
        if self._row is None:
            return float(self.seconds)
        return float(self.seconds) - _paused_seconds(self._pauses(), _dt(self._row[8]))

    def paused(self, now: datetime) -> float:
        """Seconds paused so far."""
        if self._row is None:
            return 0.0
        return _paused_seconds(self._pauses(), _dt(self._row[8]) or now)


_ROLE_OF = {name: role for role, names in CLOCK_ROLES.items() for name in names}


def _clock_select(now: datetime):
    """SELECT of the clock columns ``_Clock`` reads, the outcome and the stopped duration computed in SQL.

    JSON columns are read as text (decoded only for clocks that were paused); the keys of the
    month's subjects come from a join or a short ``IN`` list added by the caller.
    """
    c = sla.SlaClockRow
    stopped = c.status.in_((sla.MET, sla.BREACHED))
    state = case((stopped, c.status), (and_(c.status == sla.RUNNING, c.due_at <= now), sla.BREACHED),
                 (c.status == sla.PAUSED, sla.PAUSED), else_="pending")
    seconds = case((stopped, seconds_between(c.started_at, c.stopped_at)), else_=None)
    return select(c.subject_key, c.name, state, c.priority, seconds, c.budget, cast(c.pauses, String),
                  _raw(c.started_at), _raw(c.stopped_at), cast(c.history, String), c.policy, c.tier)


def _clocks(session: Session, query, subject_type: str) -> list[_Clock]:
    return [_Clock(r, subject_type) for r in _run(session, query.where(sla.SlaClockRow.subject_type == subject_type))]


def _clocks_of_keys(session: Session, keys: list[str], subject_type: str, now: datetime) -> list[_Clock]:
    out = []
    for part in _chunks(sorted(set(keys))):
        out += _clocks(session, _clock_select(now).where(sla.SlaClockRow.subject_key.in_(part)), subject_type)
    return out


# ------------------------------------------------------------------------------- context


@dataclass
class _Ctx:
    session: Session
    period: Period
    team: Team
    now: datetime
    _tickets: list | None = None
    _clocks: list[_Clock] | None = None

    def tickets(self) -> list:
        """The month's tickets (narrow rows), read once."""
        if self._tickets is None:
            scores = [Ticket.satisfaction[(d, "score")].as_integer().label(d) for d in DIMENSIONS]
            q = select(Ticket.number, Ticket.type, Ticket.priority, Ticket.status, Ticket.fault_category,
                       Ticket.reopen_count, Ticket.sla_subject, Ticket.overall_score, *scores) \
                .where(self.month_tickets())
            self._tickets = list(_run(self.session, q.order_by(Ticket.number)))
        return self._tickets

    def month_tickets(self):
        """SQL condition on ``tickets``: registered in the month, of the team."""
        return and_(Ticket.created_at >= self.period.start, Ticket.created_at < self.period.end,
                    *[c for c in (ticket_in_team(self.team),) if c is not None])

    def clocks(self) -> list[_Clock]:
        """Every SLA clock (all rounds) of the month's tickets: round 1 by a join, later rounds by key."""
        if self._clocks is None:
            first = _clock_select(self.now).join(Ticket, Ticket.number == sla.SlaClockRow.subject_key) \
                .where(self.month_tickets())
            later = []
            for t in self.tickets():
                head, sep, tail = t.sla_subject.rpartition("/R")
                last = int(tail) if sep and head == t.number and tail.isdigit() else 1
                later += [subject_key(t.number, r) for r in range(2, last + 1)]
            self._clocks = _clocks(self.session, first, "ticket") + \
                _clocks_of_keys(self.session, later, "ticket", self.now)
        return self._clocks


def _ctx(session: Session, month: str | None, team: str | None, now: datetime | None) -> _Ctx:
    now = _aware(now) if now is not None else _utcnow()
    return _Ctx(session=session, period=parse_month(month, now), team=resolve_team(session, team), now=now)


# --------------------------------------------------------------------------- figure groups


def ticket_volume(session: Session, month: str | None, team: str | None = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """The month's tickets: opened, resolved, open, reopened; problem types; fault categories of product faults."""
    return _ticket_volume(_ctx(session, month, team, now))


def _ticket_volume(ctx: _Ctx) -> dict[str, Any]:
    rows = ctx.tickets()
    numbers = [t.number for t in rows]
    by_type: dict[str, list[str]] = defaultdict(list)
    faults: dict[str, list[str]] = defaultdict(list)
    for t in rows:
        by_type[t.type].append(t.number)
        if t.type == "product_fault":
            faults[t.fault_category or ""].append(t.number)
    total = len(numbers)
    types = [*TYPES, *sorted(k for k in by_type if k not in TYPES)]
    return {
        "opened": cell(numbers),
        "resolved": cell(t.number for t in rows if t.status in RESOLVED_STATES),
        "open": cell(t.number for t in rows if t.status not in RESOLVED_STATES),
        "reopened": cell(t.number for t in rows if (t.reopen_count or 0) > 0),
        "by_type": [{"type": k, "label": label_of(TYPE_LABELS, k), **cell(by_type.get(k, ())),
                     "share": _ratio(len(by_type.get(k, ())), total)} for k in types],
        "fault_categories": [{"category": k or None, "label": label_of(FAULT_LABELS, k), **cell(v),
                              "share": _ratio(len(v), sum(len(x) for x in faults.values()))}
                             for k, v in sorted(faults.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
    }


def resolution_times(session: Session, month: str | None, team: str | None = None,
                     now: datetime | None = None) -> dict[str, Any]:
    """Hours to first response and to resolution of the month's tickets by priority: mean, median, p90."""
    return _resolution_times(_ctx(session, month, team, now))


def _time_row(priority: str | None, samples: list[tuple[float, str]]) -> dict[str, Any]:
    values = sorted(s for s, _ in samples)
    return {"priority": priority, "label": label_of(PRIORITY_LABELS, priority) if priority else
            {"en": "All priorities", "zh": "全部优先级"},
            **cell((n for _, n in samples), count=len(values)),
            "mean_hours": _hours(sum(values) / len(values)) if values else None,
            "median_hours": _hours(percentile(values, 0.5)), "p90_hours": _hours(percentile(values, 0.9))}


def _resolution_times(ctx: _Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, key in (("first_response", "first_response"), ("solution", "resolution")):
        samples: dict[str | None, list[tuple[float, str]]] = defaultdict(list)
        for c in ctx.clocks():
            if c.role != role:
                continue
            d = c.duration()
            if d is not None:
                samples[c.priority].append((d, c.number))
        priorities = [*PRIORITIES, *sorted(p for p in samples if p not in PRIORITIES and p is not None)]
        rows = [_time_row(p, samples.get(p, [])) for p in priorities]
        rows.append(_time_row(None, [s for v in samples.values() for s in v]))
        out[key] = rows
    return out


def _outcome_row(clocks: list[_Clock], now: datetime, wrap=cell, **head: Any) -> dict[str, Any]:
    by: dict[str, list[str]] = {"met": [], "breached": [], "pending": []}
    for c in clocks:
        by[c.outcome(now)].append(c.number)
    met, breached = len(by["met"]), len(by["breached"])
    return {**head, "total": wrap([c.number for c in clocks], count=len(clocks)),
            "met": wrap(by["met"], count=met), "breached": wrap(by["breached"], count=breached),
            "pending": wrap(by["pending"], count=len(by["pending"])),
            "compliance": _ratio(met, met + breached),
            "paused_hours": round(sum(c.paused(now) for c in clocks) / 3600, 2)}


def sla_compliance(session: Session, month: str | None, team: str | None = None,
                   now: datetime | None = None) -> dict[str, Any]:
    """SLA clocks of the month's tickets per priority and clock (first response, solution): met, breached, pending."""
    return _sla_compliance(_ctx(session, month, team, now))


def _sla_compliance(ctx: _Ctx) -> dict[str, Any]:
    groups: dict[tuple[str | None, str], list[_Clock]] = defaultdict(list)
    for c in ctx.clocks():
        if c.role in ROLES:
            groups[(c.priority, c.role)].append(c)
    priorities = [*PRIORITIES, *sorted({p for p, _ in groups if p not in PRIORITIES and p is not None})]
    rows = [_outcome_row(groups.get((p, r), []), ctx.now, priority=p, clock=r,
                         label={"priority": label_of(PRIORITY_LABELS, p), "clock": label_of(ROLE_LABELS, r)})
            for p in priorities for r in ROLES]
    overall = {r: _outcome_row([c for (_, role), cs in groups.items() if role == r for c in cs], ctx.now,
                               priority=None, clock=r,
                               label={"priority": {"en": "All priorities", "zh": "全部优先级"},
                                      "clock": label_of(ROLE_LABELS, r)}) for r in ROLES}
    return {"rows": rows, "overall": overall}


def complaint_compliance(session: Session, month: str | None, team: str | None = None,
                         now: datetime | None = None) -> dict[str, Any]:
    """Complaints received in the month: 1-24-48 compliance per clock and the weekly-review list by cause."""
    return _complaint_compliance(_ctx(session, month, team, now))


def _complaint_compliance(ctx: _Ctx) -> dict[str, Any]:
    p = ctx.period
    month_complaints = and_(Complaint.received_at >= p.start, Complaint.received_at < p.end,
                            *[c for c in (complaint_in_team(ctx.team),) if c is not None])
    q = select(Complaint.number, Complaint.cause, Complaint.status, Complaint.resolved_at,
               Complaint.related_ticket).where(month_complaints)
    rows = list(_run(ctx.session, q.order_by(Complaint.number)))
    clocks = _clocks(ctx.session, _clock_select(ctx.now).join(Complaint, Complaint.number == sla.SlaClockRow.subject_key)
                     .where(month_complaints), "complaint")
    by_number: dict[str, dict[str, _Clock]] = defaultdict(dict)
    for c in clocks:
        by_number[c.number][c.name] = c
    related = {r.number: r.related_ticket for r in rows if r.related_ticket}

    def ccell(numbers: Iterable[str], count: int | None = None) -> dict:
        numbers = list(numbers)
        return cell(numbers, kind="complaints", count=count, tickets=[related[n] for n in numbers if n in related])

    per_clock = []
    for name in COMPLAINT_CLOCKS:
        cs = [by_number[r.number][name] for r in rows if name in by_number[r.number]]
        row = _outcome_row(cs, ctx.now, wrap=ccell, clock=name, label=label_of(COMPLAINT_CLOCK_LABELS, name))
        row["budget"] = cs[0].budget if cs else None
        per_clock.append(row)
    causes: dict[str, list] = defaultdict(list)
    for r in rows:
        causes[r.cause or ""].append(r)
    cause_rows = []
    for cause, items in sorted(causes.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        resolved = [r.number for r in items if r.resolved_at is not None]
        in_48 = [r.number for r in items if (c := by_number[r.number].get("resolve")) is not None
                 and c.outcome(ctx.now) == sla.MET]
        late = [r.number for r in items if any(c.outcome(ctx.now) == sla.BREACHED
                                               for c in by_number[r.number].values())]
        label = CAUSES.get(cause, (cause or "Unclassified", cause or "未分类"))
        cause_rows.append({"cause": cause or None, "label": {"en": label[0], "zh": label[1]},
                           "complaints": ccell(r.number for r in items), "resolved": ccell(resolved),
                           "open": ccell(r.number for r in items if r.resolved_at is None),
                           "resolved_in_48h": ccell(in_48), "late": ccell(late),
                           "resolution_rate": _ratio(len(resolved), len(items))})
    resolved_all = [r.number for r in rows if r.resolved_at is not None]
    return {"clocks": per_clock, "causes": cause_rows, "total": ccell(r.number for r in rows),
            "resolved": ccell(resolved_all), "resolution_rate": _ratio(len(resolved_all), len(rows)),
            "goal": COMPLAINT_GOAL}


def satisfaction(session: Session, month: str | None, team: str | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """Satisfaction of the month's ticket surveys and the survey answers given in the month."""
    return _satisfaction(_ctx(session, month, team, now))


def _score(score: Any) -> int | None:
    return score if isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5 else None


def _satisfaction(ctx: _Ctx) -> dict[str, Any]:
    answers: list[dict[str, Any]] = []  # {"ticket", "survey", "scores", "followup"}
    for t in ctx.tickets():
        if t.overall_score is None:
            continue
        scores = {d: _score(getattr(t, d)) for d in DIMENSIONS}
        scores["overall"] = _score(t.overall_score)
        answers.append({"ticket": t.number, "survey": None, "scores": scores, "followup": None})
    p = ctx.period
    q = select(SurveyResponse.id, SurveyResponse.ticket_number, SurveyResponse.followup_instance_id,
               *[getattr(SurveyResponse, d) for d in DIMENSIONS]).where(SurveyResponse.at >= p.start,
                                                                        SurveyResponse.at < p.end)
    if ctx.team.name is not None:
        q = q.where(or_(_members_in(SurveyResponse.taken_by, ctx.team),
                        exists().where(Ticket.number == SurveyResponse.ticket_number, ticket_in_team(ctx.team))))
    responses = list(_run(ctx.session, q.order_by(SurveyResponse.id)))
    followups = [r.followup_instance_id for r in responses if r.followup_instance_id is not None]
    done: set[int] = set()
    for part in _chunks(followups):
        done |= set(ctx.session.scalars(select(Instance.id).where(Instance.id.in_(part),
                                                                  Instance.status == "completed")))
    for r in responses:
        answers.append({"ticket": r.ticket_number, "survey": r.id,
                        "scores": {d: getattr(r, d) for d in DIMENSIONS}, "followup": r.followup_instance_id})

    def acell(items: list[dict]) -> dict:
        return cell((a["ticket"] for a in items if a["ticket"]), count=len(items),
                    surveys=[a["survey"] for a in items if a["survey"] is not None])

    dims = []
    for d, (en, zh) in DIMENSIONS.items():
        scored = [a for a in answers if a["scores"].get(d) is not None]
        values = [a["scores"][d] for a in scored]
        dims.append({"dimension": d, "label": {"en": en, "zh": zh}, "answers": acell(scored),
                     "average": round(sum(values) / len(values), 2) if values else None})
    rated = [a for a in answers if a["scores"].get("overall") is not None]
    satisfied = [a for a in rated if a["scores"]["overall"] >= SATISFIED_MIN]
    low = [a for a in rated if a["scores"]["overall"] <= LOW_SCORE_MAX]
    started = [a for a in low if a["followup"] is not None]
    return {"dimensions": dims, "answers": acell(rated), "satisfied": acell(satisfied),
            "rate": _ratio(len(satisfied), len(rated)), "goal": SATISFACTION_GOAL, "low_scores": acell(low),
            "followups_started": acell(started),
            "followups_done": acell([a for a in started if a["followup"] in done])}


def revisit_coverage(session: Session, month: str | None, team: str | None = None,
                     now: datetime | None = None) -> dict[str, Any]:
    """Revisits due in the month per tier (on time, late, missed, pending) and customers overdue now."""
    return _revisit_coverage(_ctx(session, month, team, now))


def _revisit_in_team(team: Team):
    if team.name is None:
        return None
    return or_(_members_in(Customer.account_manager, team),
               exists().where(HumanTask.instance_id == CustomerRevisit.instance_id,
                              or_(HumanTask.group_name == team.name, _members_in(HumanTask.assignee, team))))


def _revisit_outcome(now: datetime):
    """SQL: ``on_time``, ``late``, ``missed`` or ``pending`` of a revisit row at ``now``.

    The limit is ``REVISIT_GRACE`` after the later of due and start: completed within it is on
    time (``completed - grace <= due`` or ``<= started``), after it late; failed, or not completed
    when the limit has passed (due and start both before ``now - grace``), missed.
    """
    r, grace, cut = CustomerRevisit, REVISIT_GRACE.total_seconds(), now - REVISIT_GRACE
    completed = and_(r.status == "completed", r.completed_at.is_not(None))
    in_time = or_(seconds_between(r.due_at, r.completed_at) <= grace,
                  and_(r.started_at.is_not(None), seconds_between(r.started_at, r.completed_at) <= grace))
    return case((and_(completed, in_time), "on_time"), (completed, "late"),
                (or_(r.status == "failed", _limit_passed(cut)), "missed"), else_="pending")


def _limit_passed(cut: datetime):
    r = CustomerRevisit
    return and_(r.due_at < cut, or_(r.started_at.is_(None), r.started_at < cut))


def _revisit_coverage(ctx: _Ctx) -> dict[str, Any]:
    p, now = ctx.period, ctx.now
    q = select(CustomerRevisit.customer_id, CustomerRevisit.tier, _revisit_outcome(now)) \
        .join(Customer, Customer.id == CustomerRevisit.customer_id) \
        .where(CustomerRevisit.due_at >= p.start, CustomerRevisit.due_at < p.end)
    due: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for cid, tier, outcome in _run(ctx.session, _where(q, _revisit_in_team(ctx.team))):
        due[tier or ""][outcome].append(cid)
        due[tier or ""]["due"].append(cid)
    overdue: dict[str, set[int]] = defaultdict(set)
    never_started = select(Customer.id, Customer.tier).where(
        Customer.status == "active", Customer.revisit_due_at <= now - REVISIT_GRACE,
        ~exists().where(CustomerRevisit.customer_id == Customer.id,
                        CustomerRevisit.status.in_(("requested", "started"))))
    if ctx.team.name is not None:
        never_started = never_started.where(_members_in(Customer.account_manager, ctx.team))
    for cid, tier in _run(ctx.session, never_started):
        overdue[tier or ""].add(cid)
    open_q = select(CustomerRevisit.customer_id, Customer.tier) \
        .join(Customer, Customer.id == CustomerRevisit.customer_id) \
        .where(CustomerRevisit.status.in_(("requested", "started")), Customer.status == "active",
               _limit_passed(now - REVISIT_GRACE))
    for cid, tier in _run(ctx.session, _where(open_q, _revisit_in_team(ctx.team))):
        overdue[tier or ""].add(cid)
    order = [*CADENCES, ""]
    tiers = sorted(set(due) | set(overdue), key=lambda t: (order.index(t) if t in order else len(order), t))
    rows = []
    for tier in tiers:
        d = due.get(tier, {})
        on_time, late, missed = len(d.get("on_time", [])), len(d.get("late", [])), len(d.get("missed", []))
        cad = CADENCES.get(tier)
        rows.append({"tier": tier or None, "label": label_of(TIER_LABELS, tier),
                     "cadence": {"en": cad.en, "zh": cad.zh} if cad else {"en": "Monthly contact", "zh": "每月联系"},
                     "due": cell(d.get("due", []), kind="customers", count=len(d.get("due", []))),
                     **{k: cell(d.get(k, []), kind="customers", count=len(d.get(k, [])))
                        for k in ("on_time", "late", "missed", "pending")},
                     "on_time_rate": _ratio(on_time, on_time + late + missed),
                     "overdue_now": cell(overdue.get(tier, set()), kind="customers")})
    totals = {k: sum(r[k]["count"] for r in rows) for k in ("due", "on_time", "late", "missed", "pending")}
    decided = totals["on_time"] + totals["late"] + totals["missed"]
    return {"tiers": rows, "totals": {**totals, "on_time_rate": _ratio(totals["on_time"], decided),
                                      "overdue_now": sum(r["overdue_now"]["count"] for r in rows)}}


def backlog(session: Session, month: str | None = None, team: str | None = None,
            now: datetime | None = None) -> dict[str, Any]:
    """Open work now (the month does not apply): open tasks and overdue SLA clocks per group and agent."""
    return _backlog(_ctx(session, month, team, now))


def _backlog(ctx: _Ctx) -> dict[str, Any]:
    now, team = ctx.now, ctx.team
    q = select(HumanTask.id, HumanTask.group_name, HumanTask.assignee, HumanTask.due_at, Ticket.number,
               Complaint.number.label("complaint")) \
        .outerjoin(Ticket, Ticket.instance_id == HumanTask.instance_id) \
        .outerjoin(Complaint, Complaint.instance_id == HumanTask.instance_id) \
        .where(HumanTask.status == "ready")
    if team.name is not None:
        q = q.where(or_(HumanTask.group_name == team.name, _members_in(HumanTask.assignee, team)))
    tasks = list(_run(ctx.session, q.order_by(HumanTask.due_at, HumanTask.id)))
    cq = select(sla.SlaClockRow.subject_type, sla.SlaClockRow.subject_key, sla.SlaClockRow.owner,
                sla.SlaClockRow.group_name).where(sla.SlaClockRow.status == sla.RUNNING,
                                                  sla.SlaClockRow.due_at <= now)
    if team.name is not None:
        cq = cq.where(_clock_in_team(team))
    clocks = list(_run(ctx.session, cq))

    def new() -> dict[str, list]:
        return {"tasks": [], "overdue": [], "unassigned": [], "clocks": []}

    groups: dict[str, dict[str, list]] = defaultdict(new)
    agents: dict[str, dict[str, list]] = defaultdict(new)
    for t in tasks:
        ref = (t.id, t.number, t.complaint)
        buckets = [groups[t.group_name or ""]] + ([agents[t.assignee]] if t.assignee else [])
        for b in buckets:
            b["tasks"].append(ref)
            if t.due_at is not None and t.due_at < now:
                b["overdue"].append(ref)
        if not t.assignee:
            groups[t.group_name or ""]["unassigned"].append(ref)
    for c in clocks:
        number = _ticket_of(c.subject_key)
        ref = (None, number if c.subject_type == "ticket" else None, number if c.subject_type != "ticket" else None)
        groups[c.group_name or ""]["clocks"].append(ref)
        if c.owner:
            agents[c.owner]["clocks"].append(ref)

    def tcell(refs: list) -> dict:
        return cell((r[1] for r in refs if r[1]), count=len(refs), tasks=[r[0] for r in refs if r[0]],
                    complaints=[r[2] for r in refs if r[2]])

    names = {u: n for u, n in _run(ctx.session, select(User.username, User.display_name).where(
        User.username.in_(sorted(agents))))} if agents else {}

    def rows(data: dict, key: str, labels) -> list[dict]:
        out = []
        for k, b in sorted(data.items(), key=lambda kv: (-len(kv[1]["tasks"]), -len(kv[1]["clocks"]), kv[0])):
            row = {key: k or None, "label": labels(k), "open_tasks": tcell(b["tasks"]),
                   "overdue_tasks": tcell(b["overdue"]), "overdue_clocks": tcell(b["clocks"])}
            if key == "group":
                row["unassigned"] = tcell(b["unassigned"])
            out.append(row)
        return out

    return {"as_of": now.isoformat(),
            "groups": rows(groups, "group", lambda k: label_of(GROUP_LABELS, k)),
            "agents": rows(agents, "agent", lambda k: {"en": names.get(k) or k, "zh": names.get(k) or k})}


GROUP_FUNCTIONS = {"ticket_volume": _ticket_volume, "resolution_times": _resolution_times,
                   "sla_compliance": _sla_compliance, "complaints": _complaint_compliance,
                   "satisfaction": _satisfaction, "revisit_coverage": _revisit_coverage, "backlog": _backlog}


def month_report(session: Session, month: str | None, team: str | None = None, now: datetime | None = None,
                 groups: Iterable[str] | None = None) -> dict[str, Any]:
    """Every figure group of a month (or only ``groups``, keys of ``GROUP_FUNCTIONS``), with the period and team."""
    ctx = _ctx(session, month, team, now)
    wanted = list(GROUP_FUNCTIONS) if groups is None else [g for g in GROUP_FUNCTIONS if g in set(groups)]
    out: dict[str, Any] = {"month": ctx.period.month, "team": ctx.team.name, "timezone": str(LOCAL_TZ),
                           "from": ctx.period.start.isoformat(), "to": ctx.period.end.isoformat(),
                           "as_of": ctx.now.isoformat()}
    for name in wanted:
        out[name] = GROUP_FUNCTIONS[name](ctx)
    return out


# ------------------------------------------------------------------------------- tables


def _col(key: str, en: str, zh: str, kind: str = "count") -> dict:
    return {"key": key, "label": {"en": en, "zh": zh}, "kind": kind}


def _c(value: Any, kind: str | None = None) -> dict:
    """A table cell: a figure (``cell``) keeps its refs; a plain value is shown as is."""
    if isinstance(value, dict) and "count" in value:
        refs = {k: value[k] for k in REF_KINDS if k in value and value[k]}
        out = {"value": value["count"], "refs": refs}
    else:
        out = {"value": value, "refs": {}}
    if kind:
        out["kind"] = kind
    return out


def _table(tid: str, group: str, en: str, zh: str, columns: list[dict], rows: list[dict]) -> dict:
    return {"id": tid, "group": group, "title": {"en": en, "zh": zh}, "columns": columns, "rows": rows}


OUTCOME_COLUMNS = [_col("met", "Met", "达标"), _col("breached", "Breached", "超时"),
                   _col("pending", "Pending", "进行中"), _col("compliance", "Compliance", "达标率", "percent")]


def report_tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as tables (the groups it holds): id, title, columns (key, label, kind) and rows of cells.

    A cell is ``{"value", "refs", "kind"?}``; ``refs`` are the references behind a count
    (``tickets``, ``complaints``...). The web page, its CSV export and the CLI all show these.
    """
    tables = []
    v = report.get("ticket_volume")
    if v is not None:
        tables.append(_table("ticket_volume", "ticket_volume", "Tickets of the month", "本月工单",
                             [_col("figure", "Figure", "指标", "text"), _col("tickets", "Tickets", "工单数")], [
            {"key": k, "cells": {"figure": _c(label), "tickets": _c(v[k])}} for k, label in (
                ("opened", {"en": "Opened", "zh": "受理"}), ("resolved", {"en": "Resolved", "zh": "已解决"}),
                ("open", {"en": "Still open", "zh": "未解决"}), ("reopened", {"en": "Reopened", "zh": "重开"}))]))
        tables.append(_table("problem_types", "ticket_volume", "Problem types", "问题类型分布",
                             [_col("type", "Type", "类型", "text"), _col("tickets", "Tickets", "工单数"),
                              _col("share", "Share", "占比", "percent")],
                             [{"key": r["type"], "cells": {"type": _c(r["label"]), "tickets": _c(r),
                                                           "share": _c(r["share"])}} for r in v["by_type"]]))
        tables.append(_table("fault_categories", "ticket_volume", "Product faults by category", "产品故障类别",
                             [_col("category", "Category", "故障类别", "text"), _col("tickets", "Tickets", "工单数"),
                              _col("share", "Share", "占比", "percent")],
                             [{"key": r["category"] or "-", "cells": {"category": _c(r["label"]), "tickets": _c(r),
                                                                      "share": _c(r["share"])}}
                              for r in v["fault_categories"]]))
    t = report.get("resolution_times")
    if t is not None:
        rows = []
        for key, label in (("first_response", {"en": "First response", "zh": "首次响应"}),
                           ("resolution", {"en": "Resolution", "zh": "解决"})):
            for r in t[key]:
                rows.append({"key": f"{key}/{r['priority'] or 'all'}", "cells": {
                    "measure": _c(label), "priority": _c(r["label"]), "count": _c(r),
                    "mean": _c(r["mean_hours"]), "median": _c(r["median_hours"]), "p90": _c(r["p90_hours"])}})
        tables.append(_table("resolution_times", "resolution_times", "Time to first response and resolution (hours)",
                             "首次响应与解决用时（小时）",
                             [_col("measure", "Measure", "指标", "text"), _col("priority", "Priority", "优先级", "text"),
                              _col("count", "Clocks", "计时数"), _col("mean", "Mean", "平均", "hours"),
                              _col("median", "Median", "中位数", "hours"), _col("p90", "P90", "P90", "hours")], rows))
    s = report.get("sla_compliance")
    if s is not None:
        rows = [{"key": f"{r['priority']}/{r['clock']}", "cells": {
            "priority": _c(r["label"]["priority"]), "clock": _c(r["label"]["clock"]), "total": _c(r["total"]),
            **{k: _c(r[k]) for k in ("met", "breached", "pending", "compliance", "paused_hours")}}}
            for r in [*s["rows"], *s["overall"].values()]]
        for row in rows[-len(ROLES):]:
            row["key"] = "all/" + row["key"].split("/", 1)[1]
        tables.append(_table("sla_compliance", "sla_compliance", "SLA compliance (paused time excluded)",
                             "SLA 达标率（不计暂停时间）",
                             [_col("priority", "Priority", "优先级", "text"), _col("clock", "Clock", "时限", "text"),
                              _col("total", "Clocks", "计时数"), *OUTCOME_COLUMNS,
                              _col("paused_hours", "Paused (h)", "暂停（小时）", "hours")], rows))
    c = report.get("complaints")
    if c is not None:
        tables.append(_table("complaint_clocks", "complaints", "Complaints: 1-24-48 compliance", "投诉 1-24-48 达标",
                             [_col("clock", "Clock", "环节", "text"), _col("budget", "Within", "时限", "text"),
                              _col("total", "Complaints", "投诉数"), *OUTCOME_COLUMNS],
                             [{"key": r["clock"], "cells": {"clock": _c(r["label"]), "budget": _c(_budget_text(r["budget"])),
                                                            **{k: _c(r[k]) for k in ("total", "met", "breached",
                                                                                     "pending", "compliance")}}}
                              for r in c["clocks"]]))
        tables.append(_table("complaint_causes", "complaints", "Complaints by cause (weekly review list)",
                             "投诉原因（周度复盘）",
                             [_col("cause", "Cause", "原因", "text"), _col("complaints", "Complaints", "投诉数"),
                              _col("resolved", "Resolved", "已解决"), _col("open", "Open", "未解决"),
                              _col("resolved_in_48h", "Resolved within 48 h", "48 小时内解决"),
                              _col("late", "Late", "超时"), _col("resolution_rate", "Resolution rate", "解决率", "percent")],
                             [{"key": r["cause"] or "-", "cells": {"cause": _c(r["label"]),
                                                                   **{k: _c(r[k]) for k in (
                                                                       "complaints", "resolved", "open",
                                                                       "resolved_in_48h", "late", "resolution_rate")}}}
                              for r in c["causes"]]))
    f = report.get("satisfaction")
    if f is not None:
        tables.append(_table("satisfaction", "satisfaction", "Satisfaction by dimension (1-5)", "各维度满意度（1-5 分）",
                             [_col("dimension", "Dimension", "维度", "text"), _col("answers", "Answers", "答卷数"),
                              _col("average", "Average", "平均分", "score")],
                             [{"key": r["dimension"], "cells": {"dimension": _c(r["label"]), "answers": _c(r["answers"]),
                                                                "average": _c(r["average"])}}
                              for r in f["dimensions"]]))
        summary = (("answers", "Surveys answered", "答卷数", f["answers"], "count"),
                   ("satisfied", "Overall score 4 or 5", "整体满意度 4–5 分", f["satisfied"], "count"),
                   ("rate", "Satisfaction (goal 90 %)", "满意度（目标 90%）", f["rate"], "percent"),
                   ("low_scores", "Low scores (overall ≤ 2)", "低分（整体 ≤ 2 分）", f["low_scores"], "count"),
                   ("followups_started", "Follow-ups started", "已发起跟进", f["followups_started"], "count"),
                   ("followups_done", "Follow-ups completed", "已完成跟进", f["followups_done"], "count"))
        tables.append(_table("satisfaction_summary", "satisfaction", "Satisfaction summary", "满意度汇总",
                             [_col("figure", "Figure", "指标", "text"), _col("value", "Value", "数值")],
                             [{"key": k, "cells": {"figure": _c({"en": en, "zh": zh}), "value": _c(val, kind)}}
                              for k, en, zh, val, kind in summary]))
    r = report.get("revisit_coverage")
    if r is not None:
        tables.append(_table("revisit_coverage", "revisit_coverage", "Revisit coverage by tier", "各等级回访覆盖",
                             [_col("tier", "Tier", "客户等级", "text"), _col("cadence", "Cadence", "回访频率", "text"),
                              _col("due", "Due", "应回访"), _col("on_time", "On time", "按时完成"),
                              _col("late", "Late", "逾期完成"), _col("missed", "Missed", "未完成"),
                              _col("pending", "Pending", "进行中"),
                              _col("on_time_rate", "On-time rate", "按时率", "percent"),
                              _col("overdue_now", "Customers overdue now", "当前逾期客户")],
                             [{"key": row["tier"] or "-", "cells": {
                                 "tier": _c(row["label"]), "cadence": _c(row["cadence"]),
                                 **{k: _c(row[k]) for k in ("due", "on_time", "late", "missed", "pending",
                                                            "on_time_rate", "overdue_now")}}}
                              for row in r["tiers"]]))
    b = report.get("backlog")
    if b is not None:
        tables.append(_table("backlog_groups", "backlog", "Backlog now by group", "当前积压（按组）",
                             [_col("group", "Group", "组", "text"), _col("open_tasks", "Open tasks", "待办任务"),
                              _col("unassigned", "Unassigned", "未领取"),
                              _col("overdue_tasks", "Overdue tasks", "超期任务"),
                              _col("overdue_clocks", "Overdue SLA clocks", "超时 SLA")],
                             [{"key": row["group"] or "-", "cells": {
                                 "group": _c(row["label"]),
                                 **{k: _c(row[k]) for k in ("open_tasks", "unassigned", "overdue_tasks",
                                                            "overdue_clocks")}}} for row in b["groups"]]))
        tables.append(_table("backlog_agents", "backlog", "Backlog now by agent", "当前积压（按人员）",
                             [_col("agent", "Agent", "人员", "text"), _col("username", "User", "账号", "text"),
                              _col("open_tasks", "Open tasks", "待办任务"),
                              _col("overdue_tasks", "Overdue tasks", "超期任务"),
                              _col("overdue_clocks", "Overdue SLA clocks", "超时 SLA")],
                             [{"key": row["agent"], "cells": {
                                 "agent": _c(row["label"]), "username": _c(row["agent"]),
                                 **{k: _c(row[k]) for k in ("open_tasks", "overdue_tasks", "overdue_clocks")}}}
                              for row in b["agents"]]))
    return tables


TABLE_GROUPS = {"ticket_volume": "ticket_volume", "problem_types": "ticket_volume",
                "fault_categories": "ticket_volume", "resolution_times": "resolution_times",
                "sla_compliance": "sla_compliance", "complaint_clocks": "complaints", "complaint_causes": "complaints",
                "satisfaction": "satisfaction", "satisfaction_summary": "satisfaction",
                "revisit_coverage": "revisit_coverage", "backlog_groups": "backlog", "backlog_agents": "backlog"}
"""Table id -> the figure group it is made from."""


def _budget_text(budget: str | None) -> dict[str, str] | None:
    if not budget:
        return None
    from engine.sla_clock import Budget, BudgetError

    try:
        text = Budget.parse(budget).describe()
    except BudgetError:
        return {"en": budget, "zh": budget}
    return {"en": text["en"].replace(" wall-clock", ""), "zh": text["zh"].replace("全天候 ", "")}


def format_value(value: Any, kind: str, lang: str = "en") -> str:
    """A cell value as shown on the page, in the CSV and by the CLI (``—`` for no value)."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        return str(value.get(lang) or value.get("en") or "—")
    if kind == "percent":
        return f"{value * 100:.1f}%"
    if kind in ("hours", "score"):
        return f"{value:.2f}"
    return str(value)


def table_matrix(table: dict[str, Any], lang: str = "en") -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a table as text in ``lang`` (``en``/``zh``): exactly what page, CSV and CLI show."""
    headers = [c["label"].get(lang) or c["label"]["en"] for c in table["columns"]]
    rows = []
    for row in table["rows"]:
        rows.append([format_value(row["cells"][c["key"]]["value"], row["cells"][c["key"]].get("kind", c["kind"]), lang)
                     for c in table["columns"]])
    return headers, rows


def find_cell(tables: list[dict], table_id: str, row_key: str, column: str) -> tuple[dict, dict, dict] | None:
    """``(table, row, cell)`` of a drill-down address, or None."""
    for t in tables:
        if t["id"] != table_id:
            continue
        for row in t["rows"]:
            if row["key"] == row_key and column in row["cells"]:
                return t, row, row["cells"][column]
    return None


# ------------------------------------------------------------------------------ drill-down


def ticket_rows(session: Session, numbers: Sequence[str]) -> list[dict[str, Any]]:
    """The tickets behind a figure (narrow columns, in the order given)."""
    found: dict[str, dict] = {}
    for part in _chunks(list(numbers)):
        for r in session.execute(select(Ticket.number, Ticket.instance_id, Ticket.type, Ticket.priority, Ticket.status,
                                        Ticket.customer_name, Ticket.customer_type, Ticket.engineer,
                                        Ticket.created_at, Ticket.resolved_at, Ticket.reopen_count)
                                 .where(Ticket.number.in_(part))):
            found[r.number] = {**r._mapping, "type_label": label_of(TYPE_LABELS, r.type),
                               "priority_label": label_of(PRIORITY_LABELS, r.priority)}
    return [found[n] for n in numbers if n in found]


def complaint_rows(session: Session, numbers: Sequence[str]) -> list[dict[str, Any]]:
    """The complaints behind a figure."""
    found: dict[str, dict] = {}
    for part in _chunks(list(numbers)):
        for r in session.execute(select(Complaint.number, Complaint.instance_id, Complaint.cause, Complaint.status,
                                        Complaint.customer_name, Complaint.related_ticket, Complaint.received_at,
                                        Complaint.resolved_at).where(Complaint.number.in_(part))):
            label = CAUSES.get(r.cause or "", (r.cause or "Unclassified", r.cause or "未分类"))
            found[r.number] = {**r._mapping, "cause_label": {"en": label[0], "zh": label[1]}}
    return [found[n] for n in numbers if n in found]


def customer_rows(session: Session, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The customers behind a revisit figure."""
    found: dict[int, dict] = {}
    for part in _chunks([int(i) for i in ids]):
        for r in session.execute(select(Customer.id, Customer.name, Customer.customer_type, Customer.tier,
                                        Customer.account_manager, Customer.last_revisit_at, Customer.revisit_due_at)
                                 .where(Customer.id.in_(part))):
            found[r.id] = {**r._mapping, "tier_label": label_of(TIER_LABELS, r.tier)}
    return [found[int(i)] for i in ids if int(i) in found]


def task_rows(session: Session, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The open tasks behind a backlog figure."""
    found: dict[str, dict] = {}
    for part in _chunks(list(ids)):
        for r in session.execute(select(HumanTask.id, HumanTask.instance_id, HumanTask.name, HumanTask.title,
                                        HumanTask.group_name, HumanTask.assignee, HumanTask.due_at, HumanTask.status,
                                        Instance.business_key).join(Instance, Instance.id == HumanTask.instance_id)
                                 .where(HumanTask.id.in_(part))):
            found[r.id] = dict(r._mapping)
    return [found[i] for i in ids if i in found]


def survey_rows(session: Session, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The survey answers behind a satisfaction figure."""
    found: dict[int, dict] = {}
    for part in _chunks([int(i) for i in ids]):
        for r in session.execute(select(SurveyResponse.id, SurveyResponse.customer_id, SurveyResponse.ticket_number,
                                        SurveyResponse.channel, SurveyResponse.at, SurveyResponse.followup_instance_id,
                                        *[getattr(SurveyResponse, d) for d in DIMENSIONS])
                                 .where(SurveyResponse.id.in_(part))):
            found[r.id] = dict(r._mapping)
    return [found[int(i)] for i in ids if int(i) in found]


