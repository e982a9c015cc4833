"""Complaints (投诉处理) and the 1-24-48 rule: respond within 1 hour, a plan within 24 hours,
resolved and reported back within 48 hours — counted from when the complaint was received.

``register_complaint_in`` gives a complaint its number (``CP`` + ``YYYYMMDD`` + daily serial,
China time) and its three deadlines: from ``engine.sla.open_clocks`` when the SLA module is
installed (clocks ``respond``, ``plan``, ``resolve``, escalated by the timer worker), else
computed from the ``careflow_sla_policy`` hook with ``engine.sla_clock``. ``update_complaint_in``
records the process's progress; the statuses of ``workflows/complaint.bpmn`` mark the
milestones (``recorded`` = responded, ``executing`` = plan issued, ``resolved``/``closed`` =
resolved) and stop the matching SLA clocks. ``weekly_review`` lists a week's complaints by
cause for the weekly review meeting.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.clock import parse_moment
from engine.customers import (
    Customer,
    _active_step,
    _now,
    audit,
    normalize_phone,
    record_contact,
    resolve_customer,
)
from engine.errors import NotFound, Problem, ValidationFailed
from engine.models import Base, BigId, UTCDateTime

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
CLOCKS = ("respond", "plan", "resolve")
CAUSES: dict[str, tuple[str, str]] = {
    "service_attitude": ("Service attitude", "服务态度"),
    "response_delay": ("Slow response", "响应不及时"),
    "product_quality": ("Product quality", "产品质量"),
    "repair_quality": ("Repair quality", "维修质量"),
    "billing": ("Billing / fees", "收费问题"),
    "delivery": ("Delivery / installation", "交付安装"),
    "commitment_broken": ("Commitment not kept", "承诺未兑现"),
    "other": ("Other", "其他"),
}
# Status -> the milestones it implies (statuses of workflows/complaint.bpmn; others imply none).
STATUS_MILESTONES: dict[str, tuple[str, ...]] = {
    "received": (),
    "recorded": ("respond",),
    "investigating": ("respond",),
    "reopened": ("respond",),
    "executing": ("respond", "plan"),
    "follow_up": ("respond", "plan"),
    "resolved": ("respond", "plan", "resolve"),
    "closed": ("respond", "plan", "resolve"),
}
MILESTONE_COLUMNS = {"respond": "responded_at", "plan": "planned_at", "resolve": "resolved_at"}
_STATUS_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")


class Complaint(Base):
    """One complaint with its 1-24-48 deadlines and milestones."""

    __tablename__ = "complaints"
    __table_args__ = (Index("ix_complaints_received_at", "received_at"), Index("ix_complaints_cause", "cause"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    customer_name: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str | None] = mapped_column(String(30))
    cause: Mapped[str | None] = mapped_column(String(50))
    severity: Mapped[str | None] = mapped_column(String(20))
    content: Mapped[str | None] = mapped_column(Text)
    customer_demand: Mapped[str | None] = mapped_column(Text)
    related_ticket: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(30))
    round: Mapped[int] = mapped_column(Integer, default=1)
    instance_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    tier: Mapped[str | None] = mapped_column(String(30))
    sla_policy: Mapped[str | None] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    respond_due: Mapped[datetime | None] = mapped_column(UTCDateTime())
    plan_due: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolve_due: Mapped[datetime | None] = mapped_column(UTCDateTime())
    responded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    planned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    substantiated: Mapped[bool | None] = mapped_column(Boolean)
    facts: Mapped[dict] = mapped_column(JSON, default=dict)
    recorded_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# --------------------------------------------------------------------------------- helpers


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _next_number(session: Session, day: date) -> str:
    prefix = f"CP{day:%Y%m%d}"
    last = session.scalar(select(Complaint.number).where(Complaint.number.like(f"{prefix}%"))
                          .order_by(Complaint.number.desc()).limit(1))
    serial = int(last[len(prefix):]) + 1 if last else 1
    return f"{prefix}{serial:03d}"


def _find_customer(session: Session, customer: dict) -> Customer | None:
    """The registry customer a complaint names: by id, else by phone; None when unknown."""
    cid = customer.get("customer_id") or customer.get("id")
    if cid not in (None, ""):
        try:
            return resolve_customer(session, cid)
        except NotFound:
            pass
    phone = customer.get("phone")
    if phone:
        try:
            _, key = normalize_phone(phone)
        except ValueError:
            return None
        return session.scalar(select(Customer).where(Customer.status == "active", Customer.phone_key == key))
    return None


def _deadlines(session: Session, pm, number: str, received_at: datetime, tier: str | None, *,
               instance_id: int | None, owner: str | None) -> tuple[dict[str, datetime | None], str]:
    try:
        from engine import sla
    except ImportError:
        sla = None
    if sla is not None and hasattr(sla, "open_clocks"):
        dues = sla.open_clocks(session, subject_type="complaint", subject_key=number, instance_id=instance_id,
                               priority=None, ticket_type=None, tier=tier, owner=owner, group="customer_service",
                               started_at=received_at, pm=pm, actor=owner)
        policy = pm.hook.careflow_sla_policy(kind="complaint", priority=None, ticket_type=None, tier=tier) or {}
        return dues, str(policy.get("policy") or "sla")
    from engine.calendar import BusinessCalendar
    from engine.sla_clock import SlaClock

    policy = pm.hook.careflow_sla_policy(kind="complaint", priority=None, ticket_type=None, tier=tier) or {}
    dues: dict[str, datetime | None] = {}
    for name, budget in (policy.get("clocks") or {}).items():
        clock = SlaClock(started_at=received_at, budget=budget, calendar=BusinessCalendar.china(),
                         policy=str(policy.get("policy") or "default"), tier=tier)
        dues[name] = clock.deadline()
    return dues, str(policy.get("policy") or "default")


def _stop_clock(session: Session, number: str, name: str, at: datetime, actor: str | None) -> None:
    try:
        from engine import sla
    except ImportError:
        return
    if not hasattr(sla, "stop_clock"):
        return
    try:
        sla.stop_clock(session, number, name, at, actor=actor)
    except NotFound:
        pass  # the policy gave no such clock


def complaint_to_dict(c: Complaint) -> dict[str, Any]:
    """A complaint as JSON-ready data (with ``in_time`` per milestone: True, False or None while open)."""
    out = {k: getattr(c, k) for k in ("id", "number", "customer_id", "customer_name", "channel", "cause",
                                       "severity", "content", "customer_demand", "related_ticket", "status",
                                       "round", "instance_id", "tier", "sla_policy", "satisfaction",
                                       "substantiated", "facts", "recorded_by")}
    for k in ("received_at", "respond_due", "plan_due", "resolve_due", "responded_at", "planned_at", "resolved_at",
              "closed_at", "created_at", "updated_at"):
        out[k] = _iso(getattr(c, k))
    out["cause_label"] = dict(zip(("en", "zh"), CAUSES.get(c.cause or "", (c.cause or "unclassified",) * 2),
                                  strict=True))
    out["in_time"] = {m: _in_time(c, m) for m in CLOCKS}
    return out


def _in_time(c: Complaint, milestone: str, now: datetime | None = None) -> bool | None:
    done = getattr(c, MILESTONE_COLUMNS[milestone])
    due = getattr(c, f"{milestone}_due")
    if due is None:
        return None
    if done is not None:
        return done <= due
    if now is not None and now > due:
        return False
    return None


# -------------------------------------------------------------------------------------- API


def register_complaint_in(session: Session, data: dict, *, pm, actor: str | None = None,
                          now: datetime | None = None, instance_id: int | None = None) -> dict[str, Any]:
    """Register a complaint (the ``complaint-record`` form's ``complaint`` object) and open its clocks.

    Returns ``{"number", "respond_due", "plan_due", "resolve_due", "received_at", "customer_id"}``
    (ISO 8601 strings). ``received_at`` (default: now) starts the clocks and may not be in
    the future.
    """
    now = _now(session, now)
    step = _active_step(session)
    if step is not None:
        actor = actor or step.actor
        instance_id = instance_id if instance_id is not None else step.instance_id
    if not isinstance(data, dict):
        raise ValidationFailed([Problem("complaint data must be an object (the complaint-record form)")])
    if isinstance(data.get("complaint"), dict):  # the whole form data was passed
        data = data["complaint"]
    data = dict(data)
    received_at = parse_moment(data["received_at"], "received_at") if data.get("received_at") else now
    if received_at > now + timedelta(minutes=5):
        raise ValueError(f"received_at {received_at.isoformat()} is in the future")
    customer_info = data.get("customer") if isinstance(data.get("customer"), dict) else {}
    customer = _find_customer(session, customer_info)
    tier = customer.tier if customer is not None else None
    cause = data.get("cause_category") or data.get("cause")
    for _ in range(20):
        number = _next_number(session, received_at.astimezone(LOCAL_TZ).date())
        row = Complaint(number=number, customer_id=customer.id if customer else None,
                        customer_name=(customer.name if customer else customer_info.get("name")),
                        channel=data.get("channel"), cause=cause, severity=data.get("severity"),
                        content=data.get("content"), customer_demand=data.get("customer_demand"),
                        related_ticket=data.get("related_ticket"), status="received", round=1,
                        instance_id=instance_id, tier=tier, received_at=received_at, facts={},
                        recorded_by=actor, created_at=now, updated_at=now)
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
            break
        except IntegrityError:
            continue  # another step took this number meanwhile
    else:
        raise RuntimeError("could not allocate a complaint number")
    dues, policy = _deadlines(session, pm, number, received_at, tier, instance_id=instance_id, owner=actor)
    row.respond_due, row.plan_due, row.resolve_due = (dues.get(n) for n in CLOCKS)
    row.sla_policy = policy
    if customer is not None:
        record_contact(session, customer.id, "complaint",
                       f"Complaint {number} received ({CAUSES.get(cause or '', (cause or 'unclassified',))[0]}): "
                       f"{(data.get('content') or '')[:300]}", by=actor, at=now, instance_id=instance_id,
                       details={"complaint_number": number})
    audit(session, "complaint_registered", actor=actor or "system", at=now,
          details={"number": number, "customer_id": row.customer_id, "cause": cause, "severity": row.severity,
                   "received_at": received_at.isoformat(), "respond_due": _iso(row.respond_due),
                   "plan_due": _iso(row.plan_due), "resolve_due": _iso(row.resolve_due), "policy": policy})
    return {"number": number, "received_at": received_at.isoformat(), "respond_due": _iso(row.respond_due),
            "plan_due": _iso(row.plan_due), "resolve_due": _iso(row.resolve_due), "customer_id": row.customer_id}


_COLUMN_FACTS = {"cause_category": "cause", "cause": "cause", "severity": "severity", "satisfaction": "satisfaction",
                 "substantiated": "substantiated", "round": "round"}


def update_complaint_in(session: Session, number: str, *, status: str | None = None, actor: str | None = None,
                        now: datetime | None = None, **facts: Any) -> dict[str, Any]:
    """Record progress of a complaint: a status and facts (kept in ``facts``; known ones in columns).

    Milestone times come from ``responded_at``/``planned_at``/``resolved_at``/``closed_at``
    facts or, failing that, from the status (see ``STATUS_MILESTONES``: the first time a
    status implies a milestone, it is reached now). Reaching a milestone stops its SLA clock.
    """
    now = _now(session, now)
    step = _active_step(session)
    actor = actor or (step.actor if step else "system")
    q = select(Complaint).where(Complaint.number == str(number))
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    row = session.scalar(q)
    if row is None:
        raise NotFound(f"no complaint {number!r}")
    if status is not None:
        if not isinstance(status, str) or not _STATUS_RE.match(status):
            raise ValueError(f"complaint status {status!r} must be a lower-case word like 'resolved'")
        row.status = status
    explicit: dict[str, datetime] = {}
    for key in ("responded_at", "planned_at", "resolved_at", "closed_at"):
        if facts.get(key):
            explicit[key] = parse_moment(facts.pop(key), key)
    for key, column in _COLUMN_FACTS.items():
        if key in facts and facts[key] is not None:
            setattr(row, column, facts[key] if key != "round" else int(facts[key]))
    rest = {k: v for k, v in facts.items() if k not in _COLUMN_FACTS}
    if rest:
        row.facts = {**(row.facts or {}), **rest}
    reached = []
    implied_at = min(explicit.values(), default=now)  # an implied earlier milestone is no later than these
    for milestone in STATUS_MILESTONES.get(status or "", ()):
        column = MILESTONE_COLUMNS[milestone]
        if getattr(row, column) is None:
            setattr(row, column, explicit.pop(column, implied_at))
            reached.append(milestone)
    for column, moment in explicit.items():
        if column == "closed_at":
            row.closed_at = row.closed_at or moment
        elif getattr(row, column) is None:
            setattr(row, column, moment)
            reached.append(next(m for m, c in MILESTONE_COLUMNS.items() if c == column))
    if status == "closed" and row.closed_at is None:
        row.closed_at = now
    row.updated_at = now
    for milestone in reached:
        _stop_clock(session, row.number, milestone, getattr(row, MILESTONE_COLUMNS[milestone]), actor)
    if row.customer_id is not None and status in ("resolved", "closed"):
        record_contact(session, row.customer_id, "complaint", f"Complaint {row.number} {status}"
                       + (f" (satisfaction {row.satisfaction}/5)" if row.satisfaction else ""),
                       by=actor, at=now, details={"complaint_number": row.number})
    audit(session, "complaint_updated", actor=actor, at=now,
          details={"number": row.number, "status": row.status, "milestones": reached,
                   "facts": sorted(facts)})
    return complaint_to_dict(row)


def get_complaint(session: Session, number: str) -> dict[str, Any]:
    """One complaint by number; ``NotFound`` if there is none."""
    row = session.scalar(select(Complaint).where(Complaint.number == str(number)))
    if row is None:
        raise NotFound(f"no complaint {number!r}")
    return complaint_to_dict(row)


# ------------------------------------------------------------------------------ weekly review


def week_bounds(week: str | None, now: datetime) -> tuple[str, datetime, datetime]:
    """``(YYYY-Www, start, end)`` of an ISO week in China time (default: the week of ``now``)."""
    if week:
        m = re.fullmatch(r"(\d{4})-?W(\d{1,2})", week.strip(), re.IGNORECASE)
        if not m:
            raise ValidationFailed([Problem(f"{week!r} is not an ISO week", field="week", hint="e.g. 2026-W11")])
        try:
            monday = date.fromisocalendar(int(m[1]), int(m[2]), 1)
        except ValueError:
            raise ValidationFailed([Problem(f"{week!r} does not exist", field="week")]) from None
    else:
        today = now.astimezone(LOCAL_TZ).date()
        monday = today - timedelta(days=today.weekday())
    start = datetime.combine(monday, datetime.min.time(), LOCAL_TZ)
    year, num, _ = monday.isocalendar()
    return f"{year}-W{num:02d}", start.astimezone(ZoneInfo("UTC")), (start + timedelta(days=7)).astimezone(
        ZoneInfo("UTC"))


def weekly_review(session: Session, week: str | None = None, *, now: datetime | None = None) -> dict[str, Any]:
    """The complaints received in a week, grouped by cause, with 1-24-48 compliance per cause.

    Each cause has ``count``, ``resolved``, ``open``, ``responded_in_time``,
    ``planned_in_time``, ``resolved_in_time``, ``late`` (any deadline missed or passed),
    ``mean_hours_to_resolve`` and its ``complaints``; causes are ordered by count.
    """
    now = _now(session, now)
    label, start, end = week_bounds(week, now)
    rows = list(session.scalars(select(Complaint).where(Complaint.received_at >= start, Complaint.received_at < end)
                                .order_by(Complaint.received_at)))
    groups: dict[str, dict[str, Any]] = {}
    for c in rows:
        cause = c.cause or "unclassified"
        g = groups.setdefault(cause, {
            "cause": cause, "label": dict(zip(("en", "zh"), CAUSES.get(cause, (cause, cause)), strict=True)),
            "count": 0, "resolved": 0, "open": 0, "responded_in_time": 0, "planned_in_time": 0,
            "resolved_in_time": 0, "late": 0, "_hours": [], "complaints": []})
        g["count"] += 1
        if c.resolved_at is not None:
            g["resolved"] += 1
            g["_hours"].append((c.resolved_at - c.received_at).total_seconds() / 3600)
        else:
            g["open"] += 1
        checks = {m: _in_time(c, m, now) for m in CLOCKS}
        g["responded_in_time"] += checks["respond"] is True
        g["planned_in_time"] += checks["plan"] is True
        g["resolved_in_time"] += checks["resolve"] is True
        g["late"] += any(v is False for v in checks.values())
        g["complaints"].append({"number": c.number, "customer_id": c.customer_id, "customer_name": c.customer_name,
                                "status": c.status, "severity": c.severity, "received_at": _iso(c.received_at),
                                "resolved_at": _iso(c.resolved_at), "in_time": checks,
                                "content": (c.content or "")[:200]})
    causes = []
    for g in sorted(groups.values(), key=lambda g: (-g["count"], g["cause"])):
        hours = g.pop("_hours")
        g["mean_hours_to_resolve"] = round(sum(hours) / len(hours), 1) if hours else None
        causes.append(g)
    total = len(rows)
    resolved = sum(g["resolved"] for g in causes)
    return {"week": label, "from": start.isoformat(), "to": end.isoformat(), "total": total, "resolved": resolved,
            "resolution_rate": (resolved / total) if total else None,
            "resolved_within_48h": sum(g["resolved_in_time"] for g in causes),
            "late": sum(g["late"] for g in causes), "causes": causes}
