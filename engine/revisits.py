"""Revisits (回访): the cadence per tier, each customer's next due date, and starting one
``customer_revisit`` instance per revisit.

A revisit is a row of ``customer_revisits``; ``UNIQUE (customer_id, due_key)`` is the
exactly-once guard: a scheduled revisit's key is its due date (``due:2026-04-02``), so two
schedulers racing for the same customer insert the same key and only one commits (the
other gets an integrity error and moves on). A customer with an open revisit (requested
or started) is not due again until it is completed: overdue revisits never pile up.

The next due date is ``last revisit (or first contact) + the tier's interval``, moved to
09:00 (Asia/Shanghai) of the next working day. Re-tiering recomputes it, so the schedule
follows the tier. Revisits requested by other processes (``start_revisit`` in the
after-sales process) are rows with status ``requested``, started by the same scheduler
call, so a ticket step never starts another process inside its own transaction.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.customers import (
    Customer,
    _active_step,
    _now,
    record_contact,
    resolve_customer,
)
from engine.errors import CareflowError, NotFound
from engine.models import Base, BigId, User, UTCDateTime

if TYPE_CHECKING:
    from engine.runtime import Careflow, StepResult

PROCESS_ID = "customer_revisit"
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
DUE_TIME = time(9, 0)
OPEN_STATES = ("requested", "started")
MODES = {
    "visit": ("On-site or video visit", "上门或视频拜访"),
    "phone": ("Phone or online contact", "电话或线上沟通"),
    "message": ("Automated SMS / e-mail", "自动短信/邮件"),
    "sales": ("Sales follow-up", "销售跟进"),
}


@dataclass(frozen=True)
class Cadence:
    """How often and how a tier's customers are revisited."""

    tier: str
    every: str  # "P1M", "P14D", "P3M", "P6M"
    mode: str  # visit | phone | message | sales
    automated: bool
    en: str
    zh: str
    survey_every: str | None = None


CADENCES: dict[str, Cadence] = {
    # scheme 1: by annual spend
    "core": Cadence("core", "P1M", "visit", False, "Account manager visit (on-site or video), at least monthly",
                    "客户经理至少每月一次拜访（上门或视频）"),
    "important": Cadence("important", "P14D", "phone", False,
                         "Phone or online contact every 2 weeks; satisfaction survey quarterly",
                         "每两周电话或线上沟通；每季度满意度调查", survey_every="P3M"),
    "basic": Cadence("basic", "P1M", "message", True, "Automated SMS / e-mail monthly", "每月自动短信/邮件"),
    "potential": Cadence("potential", "P1M", "sales", False, "Sales follow-up monthly", "销售每月跟进"),
    # scheme 2: by strategic value
    "A": Cadence("A", "P1M", "visit", False, "Strategic customer: monthly", "战略客户：每月"),
    "B": Cadence("B", "P3M", "phone", False, "Growth customer: quarterly", "成长客户：每季度"),
    "C": Cadence("C", "P6M", "phone", False, "Regular customer: every 6 months", "普通客户：每半年"),
}
DEFAULT_CADENCE = Cadence("*", "P1M", "phone", False, "Monthly contact", "每月联系")


class CustomerRevisit(Base):
    """One revisit of one customer: scheduled by cadence, or requested by another process."""

    __tablename__ = "customer_revisits"
    __table_args__ = (
        UniqueConstraint("customer_id", "due_key", name="uq_customer_revisits_customer_due"),
        Index("ix_customer_revisits_status", "status", "customer_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    due_key: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(20))  # scheduled | requested
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    tier: Mapped[str | None] = mapped_column(String(30))
    mode: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # requested | started | completed | failed
    instance_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    source_instance_id: Mapped[int | None] = mapped_column(BigInteger)
    requested_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    summary: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


# ---------------------------------------------------------------------------------- cadence

_INTERVAL_RE = re.compile(r"^P(\d+)([DWM])$")


def cadence_for(tier: str | None) -> Cadence:
    """The cadence of a tier (scheme 1 or 2); unknown tiers get a monthly phone contact."""
    return CADENCES.get(tier or "", DEFAULT_CADENCE)


def add_interval(moment: datetime, every: str) -> datetime:
    """``moment`` plus ``P<n>D``, ``P<n>W`` or ``P<n>M`` (calendar months in China time, day clamped)."""
    m = _INTERVAL_RE.match(every)
    if not m:
        raise ValueError(f"revisit interval {every!r} must be P<n>D, P<n>W or P<n>M")
    n, unit = int(m[1]), m[2]
    if unit == "D":
        return moment + timedelta(days=n)
    if unit == "W":
        return moment + timedelta(weeks=n)
    local = moment.astimezone(LOCAL_TZ)
    month0 = local.month - 1 + n
    year, month = local.year + month0 // 12, month0 % 12 + 1
    day = min(local.day, _days_in_month(year, month))
    return local.replace(year=year, month=month, day=day).astimezone(moment.tzinfo)


def _days_in_month(year: int, month: int) -> int:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def _calendar():
    try:
        from engine.sla import get_calendar

        return get_calendar()
    except Exception:  # the SLA module is optional here; China's calendar is the default
        from engine.calendar import BusinessCalendar

        return BusinessCalendar.china()


def due_moment(day: date) -> datetime:
    """09:00 China time on ``day``, or on the next working day if ``day`` is not one (UTC)."""
    cal = _calendar()
    for _ in range(30):
        if cal.is_working_day(day):
            break
        day += timedelta(days=1)
    return datetime.combine(day, DUE_TIME, LOCAL_TZ).astimezone(ZoneInfo("UTC"))


def anchor_of(c: Customer, now: datetime) -> datetime:
    """What the next revisit is counted from: the last revisit, else the first contact, else registration."""
    if c.last_revisit_at:
        return c.last_revisit_at
    if c.first_contact_date:
        return datetime.combine(c.first_contact_date, DUE_TIME, LOCAL_TZ)
    return c.created_at or now


def next_due(c: Customer, now: datetime, after: datetime | None = None) -> datetime:
    """When customer ``c`` is next due for a revisit (``after`` overrides the anchor)."""
    base = add_interval(after or anchor_of(c, now), cadence_for(c.tier).every)
    return due_moment(base.astimezone(LOCAL_TZ).date())


def reschedule(c: Customer, now: datetime) -> None:
    """Recompute ``c.revisit_due_at`` from its tier's cadence (None for a merged customer)."""
    c.revisit_due_at = next_due(c, now) if c.status in (None, "active") else None


def local_day(moment: datetime) -> date:
    """The China-time calendar date of a moment."""
    return moment.astimezone(LOCAL_TZ).date()


# ------------------------------------------------------------------------------- starting


def _open_revisit_exists():
    return exists().where(CustomerRevisit.customer_id == Customer.id, CustomerRevisit.status.in_(OPEN_STATES))


def due_customers(session: Session, now: datetime, limit: int = 500) -> list[Customer]:
    """Active customers whose revisit is due at ``now`` and who have no open revisit."""
    return list(session.scalars(select(Customer).where(Customer.status == "active", Customer.revisit_due_at <= now,
                                                       ~_open_revisit_exists())
                                .order_by(Customer.revisit_due_at, Customer.id).limit(limit)))


def start_due_revisits(engine: Careflow, now: datetime | None = None, *, limit: int = 500) -> list[int]:
    """Start one ``customer_revisit`` instance per due customer and per requested revisit.

    Safe to call from several schedulers at once and to call again: a customer gets one
    instance per due date. Returns the ids of the instances started. Raises ``NotFound``
    when the process is not deployed. A revisit that cannot start (script error) is
    marked ``failed`` with an incident, and the customer's schedule moves on.
    """
    now = now or engine.now()
    with engine.Session() as session:
        engine.latest_version(session, PROCESS_ID)
        requested = list(session.scalars(select(CustomerRevisit.id).where(CustomerRevisit.status == "requested")
                                         .order_by(CustomerRevisit.id).limit(limit)))
        due = [c.id for c in due_customers(session, now, limit)]
    started: list[int] = []
    for revisit_id in requested:
        instance_id = _start_requested(engine, revisit_id, now)
        if instance_id is not None:
            started.append(instance_id)
    for customer_id in due:
        instance_id = _start_scheduled(engine, customer_id, now)
        if instance_id is not None:
            started.append(instance_id)
    return started


class _StartFailed(Exception):
    """A revisit instance could not start; carries the revisit's values (its session is rolled back)."""

    def __init__(self, rv: CustomerRevisit, error: CareflowError):
        super().__init__(str(error))
        self.rv = {k: getattr(rv, k) for k in ("id", "customer_id", "due_key", "kind", "due_at", "tier", "mode",
                                               "reason", "requested_by")}
        self.error = error


def _has_open_revisit(session: Session, customer_id: int) -> bool:
    return session.scalar(select(CustomerRevisit.id).where(CustomerRevisit.customer_id == customer_id,
                                                           CustomerRevisit.status.in_(OPEN_STATES))
                          .limit(1)) is not None


def _start_scheduled(engine: Careflow, customer_id: int, now: datetime) -> int | None:
    result: StepResult | None = None
    try:
        with engine.Session() as session, session.begin():
            q = select(Customer).where(Customer.id == customer_id)
            if session.get_bind().dialect.name == "postgresql":
                q = q.with_for_update()
            c = session.scalar(q)
            if (c is None or c.status != "active" or c.revisit_due_at is None or c.revisit_due_at > now
                    or _has_open_revisit(session, c.id)):
                return None  # another scheduler started it meanwhile
            cad = cadence_for(c.tier)
            due_at = c.revisit_due_at
            rv = CustomerRevisit(customer_id=c.id, due_key=f"due:{local_day(due_at).isoformat()}", kind="scheduled",
                                 due_at=due_at, tier=c.tier, mode=cad.mode, reason=cad.en, status="started",
                                 requested_by="timer", created_at=now, started_at=now)
            session.add(rv)
            session.flush()
            try:
                result = engine.start(PROCESS_ID, revisit_data(session, c, rv, now), actor="timer", session=session)
            except CareflowError as err:
                raise _StartFailed(rv, err) from err
            rv.instance_id = result.instance_id
            c.revisit_due_at = next_due(c, now, after=max(due_at, now))
    except IntegrityError:
        return None  # the same revisit was started by another scheduler
    except _StartFailed as failed:
        _record_failure(engine, customer_id, failed.rv, now, failed.error)
        return None
    engine._after_commit(result)
    return result.instance_id


def _start_requested(engine: Careflow, revisit_id: int, now: datetime) -> int | None:
    result: StepResult | None = None
    try:
        with engine.Session() as session, session.begin():
            q = select(CustomerRevisit).where(CustomerRevisit.id == revisit_id, CustomerRevisit.status == "requested")
            if session.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rv = session.scalar(q)
            if rv is None:
                return None
            c = resolve_customer(session, rv.customer_id)
            try:
                result = engine.start(PROCESS_ID, revisit_data(session, c, rv, now),
                                      actor=rv.requested_by or "system", session=session)
            except CareflowError as err:
                raise _StartFailed(rv, err) from err
            rv.status, rv.started_at, rv.instance_id = "started", now, result.instance_id
    except _StartFailed as failed:
        _record_failure(engine, None, failed.rv, now, failed.error)
        return None
    engine._after_commit(result)
    return result.instance_id


def _record_failure(engine: Careflow, customer_id: int | None, rv: dict, now: datetime, err: Exception) -> None:
    """Keep a revisit that could not start as ``failed`` (and move the schedule on) and raise an incident."""
    with engine.Session() as session, session.begin():
        if rv["kind"] == "requested":
            row = session.get(CustomerRevisit, rv["id"])
            if row is not None:
                row.status, row.error = "failed", str(err)
        else:
            fields = {k: v for k, v in rv.items() if k != "id"}
            session.add(CustomerRevisit(**fields, status="failed", created_at=now, error=str(err)))
            c = session.get(Customer, customer_id)
            if c is not None:
                c.revisit_due_at = next_due(c, now, after=max(rv["due_at"], now))
    engine.record_incident("revisit", PROCESS_ID, f"revisit of customer #{rv['customer_id']} could not start: {err}")


def revisit_data(session: Session, c: Customer, rv: CustomerRevisit, now: datetime) -> dict[str, Any]:
    """The data a ``customer_revisit`` instance starts with (no phone numbers or e-mails in it)."""
    cad = cadence_for(c.tier)
    mode, automated = cad.mode, cad.automated
    if rv.kind == "requested" and automated:
        mode, automated = "phone", False  # a revisit after a ticket is a conversation, not a mass message
    due_by = max(rv.due_at, now) + timedelta(days=7)
    return {
        "revisit_id": rv.id, "revisit_kind": rv.kind, "customer_id": c.id, "customer_name": c.name,
        "customer_type": c.customer_type, "tier": c.tier, "mode": mode, "automated": automated,
        "account_manager": c.account_manager, "reason": rv.reason or cad.en,
        "cadence": {"every": cad.every, "en": cad.en, "zh": cad.zh},
        "mode_label": dict(zip(("en", "zh"), MODES.get(mode, (mode, mode)), strict=True)),
        "due_at": rv.due_at.isoformat(), "due_by": due_by.isoformat(),
        "survey_due": _survey_due(session, c, cad, now),
        "message_channel": "sms" if c.phone_key and len(c.phone_key) == 11 and c.phone_key.startswith("1")
        else "email",
    }


def _survey_due(session: Session, c: Customer, cad: Cadence, now: datetime) -> bool:
    if not cad.survey_every:
        return False
    from engine.surveys import last_survey_at

    last = last_survey_at(session, c.id)
    return last is None or add_interval(last, cad.survey_every) <= now


# ------------------------------------------------------------------- requests and results


def request_revisit(session: Session, customer_id: Any, reason: str, *, key: str | None = None,
                    actor: str | None = None, now: datetime | None = None) -> int:
    """Ask for a revisit of a customer (e.g. after a fixed ticket); returns the revisit id.

    The instance is started by the next ``start_due_revisits`` call (the scheduler), after
    the caller's transaction committed. The same ``key`` asks only once; inside a step
    the key defaults to the step's instance and task, so re-running a step does not ask twice.
    """
    now = _now(session, now)
    step = _active_step(session)
    c = resolve_customer(session, customer_id)
    if key is None:
        key = f"{step.instance_id}:{step.current_task_id}" if step is not None else uuid.uuid4().hex
    due_key = f"req:{key}"[:120]
    existing = session.scalar(select(CustomerRevisit).where(CustomerRevisit.customer_id == c.id,
                                                            CustomerRevisit.due_key == due_key))
    if existing is not None:
        return existing.id
    rv = CustomerRevisit(customer_id=c.id, due_key=due_key, kind="requested", due_at=now, tier=c.tier,
                         mode=cadence_for(c.tier).mode, reason=str(reason or "")[:2000] or None,
                         status="requested", requested_by=actor or (step.actor if step else "system"),
                         source_instance_id=step.instance_id if step else None, created_at=now)
    with session.begin_nested():
        session.add(rv)
        session.flush()
    return rv.id


def _record_day(record: dict, now: datetime) -> datetime:
    value = record.get("date")
    if value:
        try:
            day = date.fromisoformat(str(value)[:10])
        except ValueError:
            return now
        moment = datetime.combine(day, DUE_TIME, LOCAL_TZ)
        if moment <= now:
            return moment
    return now


def revisit_summary(record: dict, rv: CustomerRevisit) -> str:
    """One line for the customer's contact history from a revisit record."""
    if record.get("automated"):
        return f"Automated revisit message sent ({record.get('mode') or 'message'}): {record.get('topic') or ''}".strip()
    mode = MODES.get(str(record.get("mode") or ""), (record.get("mode") or rv.mode or "revisit",))[0]
    parts = [f"{mode}: {record.get('topic') or rv.reason or 'revisit'}"]
    points = record.get("feedback_points") or []
    if points:
        parts.append("feedback: " + "; ".join(str(p) for p in points))
    actions = record.get("follow_up_actions") or []
    if actions:
        parts.append(f"{len(actions)} follow-up action(s)")
    return " — ".join(parts)


def complete_revisit(session: Session, revisit_id: Any, record: dict | None = None, *, actor: str | None = None,
                     now: datetime | None = None, instance_id: int | None = None) -> int:
    """Close a revisit with its record: contact history, last revisit, next due date. Returns the contact id.

    Follow-up action owners must be Careflow users (``ValueError`` otherwise, so the
    revisit form is refused with a clear message instead of creating tasks nobody sees).
    Completing a completed revisit changes nothing.
    """
    now = _now(session, now)
    record = dict(record or {})
    try:
        rv = session.get(CustomerRevisit, int(revisit_id))
    except (TypeError, ValueError):
        rv = None
    if rv is None:
        raise NotFound(f"no revisit {revisit_id!r}")
    for i, action in enumerate(record.get("follow_up_actions") or [], start=1):
        owner = (action or {}).get("owner")
        if owner and session.scalar(select(User.id).where(User.username == owner)) is None:
            raise ValueError(f"follow-up action {i}: owner {owner!r} is not a Careflow user")
    if rv.status == "completed":
        return 0
    c = resolve_customer(session, rv.customer_id)
    summary = revisit_summary(record, rv)
    when = _record_day(record, now)
    rv.status, rv.completed_at, rv.summary = "completed", now, summary
    if rv.instance_id is None:
        rv.instance_id = instance_id
    if c.last_revisit_at is None or c.last_revisit_at < when:
        c.last_revisit_at = when
    reschedule(c, now)
    row = record_contact(session, c.id, "revisit", summary, by=actor, at=now, instance_id=instance_id,
                         details={"revisit_id": rv.id, "record": record})
    return row.id
