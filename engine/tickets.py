"""After-sales tickets (售后工单): numbers, facts in queryable columns, status history, deadlines.

The ``after_sales_ticket`` process calls three host functions (exposed to scripts by
``plugins.ticket_functions``); each runs inside the current step and writes with the
step's session, so its rows commit or roll back with the step:

- ``register_ticket(intake)`` gives the ticket its number — ``SN`` + the Asia/Shanghai date
  of registration (``YYYYMMDD``) + a daily serial of at least three digits
  (``SN20240315001``; the 1000th ticket of a day is ``SN202403151000``: the serial widens
  rather than fail) — from the ``ticket_serials`` row of that day, incremented by one atomic
  ``INSERT … ON CONFLICT (day) DO UPDATE … RETURNING`` (the row stays locked until the step
  commits, so concurrent intakes get distinct, gap-free numbers). It opens the SLA clocks
  (``engine.sla.open_clocks``: budgets from the ``careflow_sla_policy`` hook, started when
  the customer contacted us, ``received_at``) and returns the deadlines as ISO strings,
  with ``solution_warn_at`` at 80 % of the solution budget.
- ``update_ticket(number, **facts)`` records progress: each status change is a
  ``TicketEvent`` row; the first response (``first_response_at``, or leaving
  ``diagnosing``) stops the first-response clock, resolution stops every clock still
  running. Returns the ticket as the process should see it (``ticket_view``).
- ``extend_deadline(number, clock, new_due, reason)`` renegotiates a deadline: the SLA
  clock, the ticket row and the open human tasks driven by that clock (BPMN property
  ``slaClock``) move to the new time, and the step is audited.

Reopening (status ``reopened``) starts a new round with a new service promise: fresh
first-response and solution clocks per the SLA policy, started at the reopening, under the
subject key ``NUMBER/R<round>`` (round 1 uses ``NUMBER``). Clocks of earlier rounds keep
their outcome; one still running (a round that ended without a fix) keeps running until the
ticket is resolved, so its outcome stays honest. The row's deadlines and ``first_response_at``
/ ``resolved_at`` describe the current round; ``ticket_events`` and the clocks keep the rest.

Clock roles: the ticket's ``first_response`` and ``solution`` deadlines are the policy's
clocks of those names, or — when the policy answers with the complaint rule for a
``service_complaint`` ticket — ``respond`` and ``resolve``; that rule's ``plan`` clock
stops with the first response (the diagnosis is the plan).
"""

from __future__ import annotations

import functools
import json
import threading
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    inspect,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine import sla
from engine.clock import parse_moment
from engine.errors import Conflict, NotFound
from engine.fastsql import Prepared
from engine.models import Base, BigId, HumanTask, ProcessVersion, UTCDateTime
from engine.serialization import to_jsonable
from engine.step import Step, current_step

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
PREFIX = "SN"
PRIORITIES = ("urgent", "important", "general")
TYPES = ("product_fault", "usage_question", "service_complaint", "other")
CHANNELS = ("phone", "online_chat", "email", "walk_in")
STATUSES = ("open", "diagnosing", "remote", "on_site", "resolved", "revisit", "reopened", "closed")
STATUS_LABELS: dict[str, tuple[str, str]] = {
    "open": ("Open", "已受理"), "diagnosing": ("Diagnosing", "诊断中"), "remote": ("Remote handling", "远程处理中"),
    "on_site": ("On-site service", "上门处理中"), "resolved": ("Resolved", "已解决"),
    "revisit": ("Waiting for revisit", "待回访"), "reopened": ("Reopened", "已重开"), "closed": ("Closed", "已结案"),
}
LEFT_DIAGNOSIS = ("remote", "on_site", "resolved", "revisit")  # statuses that imply the first response happened
CLOCK_ROLES: dict[str, tuple[str, ...]] = {"first_response": ("first_response", "respond"),
                                           "solution": ("solution", "resolve")}
STOP_WITH_FIRST_RESPONSE = ("plan",)
WARN_FRACTION = 0.8
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between an agent's PC and the server
SLA_GROUP = "technical_support"
SYSTEM_ACTORS = ("system", "timer")


class TicketError(ValueError):
    """Ticket data a host function cannot use (unknown status, bad time...)."""


# ----------------------------------------------------------------------------- tables


class Ticket(Base):
    """One after-sales ticket: the facts lists and reports need, kept out of the instance state."""

    __tablename__ = "tickets"
    __table_args__ = (
        UniqueConstraint("number", name="uq_tickets_number"),
        Index("ix_tickets_status", "status"),
        Index("ix_tickets_created_at", "created_at"),
        Index("ix_tickets_customer_id", "customer_id"),
        Index("ix_tickets_priority_status", "priority", "status"),
        Index("ix_tickets_instance_id", "instance_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(20))
    instance_id: Mapped[int | None] = mapped_column(BigInteger)  # no FK: the ticket outlives the instance
    customer_id: Mapped[str | None] = mapped_column(String(64))  # registry id, else the id given at intake
    customer_name: Mapped[str | None] = mapped_column(String(200))
    customer_type: Mapped[str | None] = mapped_column(String(20))
    customer_tier: Mapped[str | None] = mapped_column(String(30))
    phone: Mapped[str | None] = mapped_column(String(40))  # raw; masked when shown
    contact_name: Mapped[str | None] = mapped_column(String(100))
    channel: Mapped[str | None] = mapped_column(String(20))
    type: Mapped[str] = mapped_column(String(30))
    priority: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    round: Mapped[int] = mapped_column(Integer, default=1)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    symptom: Mapped[str | None] = mapped_column(Text)
    fault_category: Mapped[str | None] = mapped_column(String(30))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(200))
    sla_policy: Mapped[str | None] = mapped_column(String(200))
    sla_subject: Mapped[str] = mapped_column(String(100))  # subject key of the current round's SLA clocks
    first_response_due: Mapped[datetime | None] = mapped_column(UTCDateTime())
    solution_due: Mapped[datetime | None] = mapped_column(UTCDateTime())
    solution_warn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(String(20))  # remote | on_site
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    visit_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    engineer: Mapped[str | None] = mapped_column(String(150))
    spare_parts: Mapped[list] = mapped_column(JSON, default=list)
    satisfaction: Mapped[dict | None] = mapped_column(JSON)  # the four survey dimensions
    overall_score: Mapped[int | None] = mapped_column(Integer)
    facts: Mapped[dict] = mapped_column(JSON, default=dict)  # any other fact the process recorded
    last_update_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TicketEvent(Base):
    """One status change of a ticket (its status history)."""

    __tablename__ = "ticket_events"
    __table_args__ = (Index("ix_ticket_events_number", "number", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20))
    round: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(400))
    by: Mapped[str | None] = mapped_column("by_user", String(200))


class TicketSerial(Base):
    """The last ticket serial handed out on one Asia/Shanghai day."""

    __tablename__ = "ticket_serials"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)  # YYYYMMDD
    last: Mapped[int] = mapped_column(Integer)


# ------------------------------------------------------------------ Core statements
# The host functions run in every after-sales step: they read and write with prebuilt Core
# statements on the step's connection rather than ORM objects (see ``engine.sla``: pending ORM
# changes are flushed before, ORM objects of the rows written are expired after).

_TICKETS = Ticket.__table__
_INSERT_TICKET = Prepared(insert(_TICKETS).returning(_TICKETS.c.id))
_INSERT_EVENT = Prepared(insert(TicketEvent.__table__))
_UPDATE_TICKET = Prepared(update(_TICKETS).where(_TICKETS.c.id == bindparam("b_id")))
_UPDATE_COLUMNS = ("id", "number", "instance_id", "customer_id", "customer_name", "customer_tier", "type",
                   "priority", "status", "round", "reopen_count", "received_at", "sla_policy", "sla_subject",
                   "first_response_due", "solution_due", "solution_warn_at", "first_response_at", "resolved_at",
                   "resolved_by", "engineer", "overall_score", "facts")  # what update_ticket reads
_select_ticket = select(*(_TICKETS.c[n] for n in _UPDATE_COLUMNS)).where(_TICKETS.c.number == bindparam("number"))
_SELECT_FOR_UPDATE = Prepared(_select_ticket)
_SELECT_FOR_UPDATE_PG = Prepared(_select_ticket.with_for_update())
_SELECT_CUSTOMER_ID = Prepared(select(_TICKETS.c.customer_id).where(_TICKETS.c.number == bindparam("number")))


class TicketValues:
    """Columns of one ``tickets`` row as plain attributes (``ticket_view`` takes it like a ``Ticket``)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


# ------------------------------------------------------------------ the step's last row
# ``register_ticket`` and ``update_ticket`` (or two updates) often run in the same step: the
# intake step registers and starts the diagnosis, the fix step records ``resolved`` then
# ``revisit``. Each call leaves the columns ``update_ticket`` reads in the step (``Step.extras``)
# as the database would return them (UTC datetimes, JSON read back from its text), and the next
# call of the same step takes them instead of reading the row again. That is the row: the step
# holds it locked (SQLite: the write lock; PostgreSQL: the row lock of the SELECT ... FOR UPDATE,
# INSERT or UPDATE that wrote it) and only this module writes ``tickets`` rows. They are used only
# in the same (innermost) transaction they were left in and while the session holds no ``Ticket``
# ORM object (whose flushed changes a read would see); a call takes them out before it writes
# (one that fails leaves none behind) and ``extend_deadline_in`` drops them.

_STEP_ROWS = "engine.tickets.rows"  # Step.extras key: {number: (transaction, row, facts as read back or None)}
_DATETIME_COLUMNS = tuple(n for n in _UPDATE_COLUMNS if isinstance(_TICKETS.c[n].type, UTCDateTime))


def _transaction(session: Session):
    return session.get_nested_transaction() or session.get_transaction()


def _take_step_row(step: Step | None, session: Session, number: str) -> dict[str, Any] | None:
    """The columns the step's last call left for ticket ``number``, taken out; None when unknown or unsafe."""
    rows = step.extras.get(_STEP_ROWS) if step is not None else None
    entry = rows.pop(number, None) if rows else None
    if entry is None:
        return None
    txn, row, facts = entry
    if txn is not _transaction(session) or any(key[0] is Ticket for key in session.identity_map.keys()):
        return None
    values = {n: row.__dict__[n] for n in _UPDATE_COLUMNS}
    for n in _DATETIME_COLUMNS:  # as UTCDateTime reads them
        if values[n] is not None:
            values[n] = values[n].astimezone(UTC)
    if facts is not None:
        values["facts"] = facts
    return values


def _leave_step_row(step: Step | None, session: Session, row: TicketValues, facts_written: bool) -> None:
    """Leave ``row`` (as just written; the caller drops it) for the step's next call on the same ticket.

    ``facts_written``: the row's ``facts`` went to the database in this call; they are kept as the
    JSON column reads its text back (and so apart from the objects the caller may change later).
    """
    if step is not None:
        facts = json.loads(json.dumps(row.facts)) if facts_written else None
        step.extras.setdefault(_STEP_ROWS, {})[row.number] = (_transaction(session), row, facts)


def _drop_step_row(step: Step | None, number: str) -> None:
    rows = step.extras.get(_STEP_ROWS) if step is not None else None
    if rows:
        rows.pop(str(number), None)


# ---------------------------------------------------------------------------- helpers


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _cut(value: Any, size: int) -> str | None:
    """A text value for a column of ``size`` characters (None stays None)."""
    if value is None or value == "":
        return None
    return str(value).strip()[:size] or None


def _moment(value: Any, what: str) -> datetime:
    """An aware UTC datetime from an ISO 8601 string (with offset) or an aware datetime."""
    return parse_moment(value, what, TicketError)


def _past_moment(value: Any, what: str, now: datetime) -> datetime:
    """A moment that has happened: refused when clearly in the future, else at most ``now``."""
    moment = _moment(value, what)
    if moment > now + FUTURE_TOLERANCE:
        raise TicketError(f"{what} {moment.astimezone(LOCAL_TZ):%Y-%m-%d %H:%M} (Beijing time) is in the future")
    return min(moment, now)


def subject_key(number: str, round_no: int) -> str:
    """The SLA subject key of a ticket's round: ``NUMBER`` for round 1, ``NUMBER/R<n>`` after."""
    return number if round_no <= 1 else f"{number}/R{round_no}"


def _subject_round(row: Ticket) -> int:
    head, sep, tail = row.sla_subject.rpartition("/R")
    return int(tail) if sep and head == row.number and tail.isdigit() else 1


def _subjects(row: Ticket) -> list[str]:
    return [subject_key(row.number, r) for r in range(1, _subject_round(row) + 1)]


def _clock_rows(session: Session, subjects: list[str], open_only: bool = False) -> list[sla.SlaClockRow]:
    q = select(sla.SlaClockRow).where(sla.SlaClockRow.subject_key.in_(subjects))
    if open_only:
        q = q.where(sla.SlaClockRow.status.in_(sla.OPEN_STATES))
    return list(session.scalars(q.order_by(sla.SlaClockRow.id)))


def _role_clock(rows: list[sla.SlaClockRow], role: str) -> sla.SlaClockRow | None:
    by_name = {r.name: r for r in rows}
    return next((by_name[n] for n in CLOCK_ROLES[role] if n in by_name), None)


def _is_person(actor: str | None) -> bool:
    return bool(actor) and actor not in SYSTEM_ACTORS


def _step_for(session: Session) -> Step | None:
    """The current step when it runs on ``session`` (host functions), else None."""
    try:
        step = current_step()
    except RuntimeError:
        return None
    return step if step.session is session else None


def _audit(step: Step | None, session: Session, action: str, actor: str, details: dict, now: datetime,
           instance_id: int | None) -> None:
    """An audit row: through ``step`` (the current step on ``session``) if any, else appended in ``session``."""
    if step is not None:
        step.audit(action, actor=actor, details=details)
        return
    from engine.audit import AuditEvent, append_events

    append_events(session, [AuditEvent(action=action, actor=actor, cause="user" if _is_person(actor) else "system",
                                       at=now, instance_id=instance_id, details=details)])


def _lock(session: Session, number: str) -> Ticket:
    q = select(Ticket).where(Ticket.number == str(number))
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    row = session.scalar(q)
    if row is None:
        raise NotFound(f"no ticket {number!r}")
    return row


# ------------------------------------------------------------------------- numbering

_SERIAL_UPSERT = Prepared(text(
    "INSERT INTO ticket_serials (day, last) VALUES (:day, 1) "
    "ON CONFLICT (day) DO UPDATE SET last = ticket_serials.last + 1 RETURNING last"
).columns(last=Integer))  # one row back, read like a SELECT's (Prepared.all)


def local_day(at: datetime) -> str:
    """The Asia/Shanghai date of ``at`` as ``YYYYMMDD`` (the date part of a ticket number)."""
    return at.astimezone(LOCAL_TZ).strftime("%Y%m%d")


def format_number(day: str, serial: int) -> str:
    """``SN`` + day + serial, zero-padded to three digits (wider from the 1000th ticket of a day)."""
    return f"{PREFIX}{day}{serial:03d}"


def next_number(session: Session, at: datetime, conn: Connection | None = None) -> str:
    """Take the next ticket number of ``at``'s Asia/Shanghai day (atomic; locks that day's serial row).

    ``conn``: the session's connection, when the caller has it already.
    """
    day = local_day(at)
    (serial,) = _SERIAL_UPSERT.all(conn if conn is not None else session.connection(), {"day": day})
    return format_number(day, int(serial.last))


# --------------------------------------------------------------------- customer registry

_registry_ready: set[str] = set()
_registry_engines: weakref.WeakSet = weakref.WeakSet()  # engines whose database has the registry
_registry_lock = threading.Lock()


def _registry(session: Session, conn: Connection | None = None):
    """``engine.customers`` when the customer registry is installed and migrated, else None."""
    try:
        from engine import customers
    except ImportError:
        return None
    conn = conn if conn is not None else session.connection()
    bind = conn.engine
    if bind in _registry_engines:
        return customers
    key = bind.url.render_as_string(hide_password=True)
    if key not in _registry_ready:
        if not inspect(conn).has_table("customers"):
            return None
        with _registry_lock:
            _registry_ready.add(key)
    with _registry_lock:
        _registry_engines.add(bind)
    return customers


@functools.lru_cache(maxsize=1024)
def _phone_key(reg, phone: str) -> str | None:
    """The registry's duplicate key of a phone number (None when it is no phone number)."""
    try:
        return reg.normalize_phone(phone)[1]
    except ValueError:
        return None


_by_phone: dict[Any, Any] = {}  # registry module -> prebuilt select of an active customer by phone key


def _registry_customer(session: Session, customer: dict, conn: Connection | None = None):
    """The registry customer an intake names: by registry id, else by phone; None if unknown.

    The phone lookup reads only the columns a ticket copies (``id``, ``name``,
    ``customer_type``, ``tier``).
    """
    reg = _registry(session, conn)
    if reg is None:
        return None
    cid = customer.get("customer_id")
    if cid not in (None, "") and str(cid).strip().isdigit():
        try:
            return reg.resolve_customer(session, str(cid).strip())
        except NotFound:
            pass
    phone = customer.get("phone")
    if phone:
        key = _phone_key(reg, str(phone))
        if key is None:
            return None
        stmt = _by_phone.get(reg)
        if stmt is None:
            c = reg.Customer.__table__.c
            # 'active' written out, not bound: the phone key index is partial (WHERE status = 'active'), and
            # SQLite re-plans a statement on every run when a bound value decides whether it may use one
            stmt = _by_phone[reg] = Prepared(select(c.id, c.name, c.customer_type, c.tier)
                                              .where(c.status == literal_column("'active'"),
                                                     c.phone_key == bindparam("key")))
        return stmt.first(conn if conn is not None else session.connection(), {"key": key})
    return None


def request_ticket_revisit_in(session: Session, number: str, *, now: datetime, actor: str) -> int | None:
    """Ask the revisit scheduler for a customer revisit after a closed ticket.

    Only tickets linked to a registry customer can be revisited; returns the revisit
    request id, or None for a ticket without a registry customer. Asking twice for the
    same ticket returns the same request.
    """
    conn = sla.connection(session)
    found = _SELECT_CUSTOMER_ID.first(conn, {"number": number})
    if found is None:
        raise NotFound(f"no ticket {number}")
    customer_id = found.customer_id
    if _registry(session, conn) is None or not customer_id or not customer_id.isdigit():
        return None
    from engine.revisits import request_revisit

    return request_revisit(session, customer_id, f"工单 {number} 结案回访 / revisit after ticket {number}",
                           key=f"ticket:{number}", actor=actor, now=now)


def _record_contact(session: Session, row: Ticket | TicketValues, summary: str, actor: str,
                    now: datetime) -> None:
    if not row.customer_id or not row.customer_id.isdigit():
        return  # the intake's own id, not a registry customer
    reg = _registry(session)
    if reg is None:
        return
    try:
        reg.record_contact(session, row.customer_id, "ticket", summary, by=actor, at=now,
                           instance_id=row.instance_id, details={"ticket_number": row.number})
    except NotFound:
        pass  # the intake's own id, not a registry customer


# ------------------------------------------------------------------------------- clocks


def _round_clocks(session: Session, conn: Connection, row: TicketValues, round_no: int, started_at: datetime, *,
                  pm, actor: str) -> sla.ClockOpening:
    """The SLA clocks of a round, not written yet; their deadlines are copied onto the row.

    ``conn``: the session's connection, pending ORM changes flushed (``sla.connection``).
    """
    key = subject_key(row.number, round_no)
    opening = sla.prepare_clocks(session, subject_type="ticket", subject_key=key, instance_id=row.instance_id,
                                 priority=row.priority, ticket_type=row.type, tier=row.customer_tier,
                                 owner=row.engineer, group=SLA_GROUP, started_at=started_at, pm=pm, actor=actor,
                                 conn=conn)
    rows = opening.rows
    first, solution = _role_clock(rows, "first_response"), _role_clock(rows, "solution")
    if solution is not None:
        row.sla_subject = key
        row.sla_policy = solution.policy
        row.first_response_due = first.due_at if first is not None else None
        row.solution_due = solution.due_at
        row.solution_warn_at = opening.clock(solution).due_at_fraction(WARN_FRACTION)
    return opening


def _require_solution_clock(row: TicketValues, opening: sla.ClockOpening) -> None:
    rows = opening.rows
    if _role_clock(rows, "solution") is None:
        raise TicketError(f"the SLA policy for {row.priority} {row.type} tickets gives no solution clock "
                          f"(it gives {', '.join(r.name for r in rows) or 'none'}); the after-sales process "
                          "needs a 'solution' (or 'resolve') clock")


def _open_round_clocks(session: Session, conn: Connection, row: TicketValues, round_no: int, started_at: datetime,
                       *, pm, actor: str) -> None:
    """Open the SLA clocks of a round and copy its deadlines onto the row."""
    opening = _round_clocks(session, conn, row, round_no, started_at, pm=pm, actor=actor)
    opening.write(session, conn)
    _require_solution_clock(row, opening)


class _Clocks:
    """The SLA clocks one ticket update reads: loaded (PostgreSQL: locked) once per subject, kept current."""

    def __init__(self, session: Session, conn: Connection) -> None:
        self.session, self.conn = session, conn
        self.by_subject: dict[str, list[sla.ClockValues]] = {}

    def of(self, subject: str) -> list[sla.ClockValues]:
        """Every clock of ``subject``, oldest first."""
        if subject not in self.by_subject:
            self.by_subject[subject] = sla.load_clocks(self.conn, [subject], lock=True)
        return list(self.by_subject[subject])

    def running(self, subjects: list[str]) -> list[sla.ClockValues]:
        """The running or paused clocks of ``subjects``, oldest first (those not loaded yet: read now)."""
        out = [r for s in subjects if s in self.by_subject for r in self.by_subject[s] if r.status in sla.OPEN_STATES]
        missing = [s for s in subjects if s not in self.by_subject]
        if missing:
            out += sla.load_clocks(self.conn, missing, lock=True, open_only=True)
        return sorted(out, key=lambda r: r.id) if len(subjects) > 1 else out

    def set_owner(self, subject: str, owner: str | None) -> None:
        """``sla.set_owner`` on the loaded clocks of ``subject``."""
        sla.set_owner_of(self.session, self.of(subject), subject, owner, conn=self.conn)

    def stop(self, rows: list[sla.ClockValues], at: datetime, actor: str) -> None:
        """Stop those of ``rows`` still running or paused."""
        sla.stop_clocks(self.session, [r for r in rows if r.status in sla.OPEN_STATES], at, actor=actor,
                        conn=self.conn)


# -------------------------------------------------------------------------------- views


def ticket_view(row: Ticket | TicketValues) -> dict[str, Any]:
    """The ticket as the process keeps it in its data (``ticket``): number, status, deadlines (ISO)."""
    return {
        "number": row.number, "status": row.status, "round": row.round, "type": row.type,
        "priority": row.priority, "customer_id": row.customer_id, "customer_name": row.customer_name,
        "tier": row.customer_tier, "received_at": _iso(row.received_at),
        "first_response_due": _iso(row.first_response_due), "solution_due": _iso(row.solution_due),
        "solution_warn_at": _iso(row.solution_warn_at), "sla_policy": row.sla_policy,
        "reopen_count": row.reopen_count,
    }


def is_overdue(row: Ticket, now: datetime) -> bool:
    """True when a deadline of the current round has passed without the milestone being reached."""
    if row.status == "closed":
        return False
    if row.first_response_at is None and row.first_response_due is not None and row.first_response_due < now:
        return True
    return row.resolved_at is None and row.solution_due is not None and row.solution_due < now


def ticket_to_dict(row: Ticket, now: datetime | None = None) -> dict[str, Any]:
    """The ticket's facts as JSON-ready data (phone masked)."""
    from engine.pii import mask_phone

    now = now or _utcnow()
    en, zh = STATUS_LABELS.get(row.status, (row.status, row.status))
    return {
        "number": row.number, "instance_id": row.instance_id, "status": row.status,
        "status_label": {"en": en, "zh": zh}, "round": row.round, "reopen_count": row.reopen_count,
        "type": row.type, "priority": row.priority, "channel": row.channel,
        "customer": {"id": row.customer_id, "name": row.customer_name, "type": row.customer_type,
                     "tier": row.customer_tier, "phone": mask_phone(row.phone) if row.phone else None,
                     "contact": row.contact_name},
        "symptom": row.symptom, "fault_category": row.fault_category,
        "received_at": _iso(row.received_at), "occurred_at": _iso(row.occurred_at),
        "created_at": _iso(row.created_at), "created_by": row.created_by,
        "sla_policy": row.sla_policy, "first_response_due": _iso(row.first_response_due),
        "solution_due": _iso(row.solution_due), "solution_warn_at": _iso(row.solution_warn_at),
        "first_response_at": _iso(row.first_response_at), "resolved_at": _iso(row.resolved_at),
        "resolved_by": row.resolved_by, "closed_at": _iso(row.closed_at), "visit_at": _iso(row.visit_at),
        "engineer": row.engineer, "spare_parts": list(row.spare_parts or []), "satisfaction": row.satisfaction,
        "overall_score": row.overall_score, "facts": dict(row.facts or {}),
        "last_update_at": _iso(row.last_update_at), "overdue": is_overdue(row, now),
    }


def event_to_dict(e: TicketEvent) -> dict[str, Any]:
    """A status-history row as JSON-ready data."""
    return {"at": _iso(e.at), "status": e.status, "round": e.round, "reason": e.reason, "by": e.by}


def _utcnow() -> datetime:
    from engine.clock import utcnow

    return utcnow()


# ------------------------------------------------------------------------------- writing


def register_ticket_in(session: Session, intake: dict, *, pm, now: datetime, actor: str,
                       instance_id: int | None = None) -> dict[str, Any]:
    """Open a ticket for an intake (the ``ticket-intake`` form's ``intake`` object).

    ``type`` and ``priority`` in ``intake`` are the final ones (technical support's for
    complex cases). Links the customer registry's customer (by registry id or phone) when the
    registry is installed, else keeps the embedded customer record. Returns ``ticket_view``.
    """
    if not isinstance(intake, dict):
        raise TicketError(f"register_ticket needs the intake as an object, got {type(intake).__name__}")
    if isinstance(intake.get("intake"), dict):  # the whole form data was passed
        intake = intake["intake"]
    priority, ticket_type = intake.get("priority"), intake.get("type")
    if priority not in PRIORITIES:
        raise TicketError(f"ticket priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    if ticket_type not in TYPES:
        raise TicketError(f"ticket type {ticket_type!r} is not one of {', '.join(TYPES)}")
    received_at = _past_moment(intake["received_at"], "received_at", now) if intake.get("received_at") else now
    occurred_at = _moment(intake["occurred_at"], "occurred_at") if intake.get("occurred_at") else None
    customer = intake.get("customer") if isinstance(intake.get("customer"), dict) else {}
    contact = intake.get("contact") if isinstance(intake.get("contact"), dict) else {}
    problem = intake.get("problem") if isinstance(intake.get("problem"), dict) else {}
    conn = sla.connection(session)
    known = _registry_customer(session, customer, conn)
    if known is not None:
        cust_id, name, ctype = str(known.id), known.name, known.customer_type
        tier = known.tier or customer.get("tier")
    else:
        cust_id = str(customer["customer_id"]).strip() if customer.get("customer_id") not in (None, "") else None
        name, ctype, tier = customer.get("name"), customer.get("customer_type"), customer.get("tier")
    classification = intake.get("classification") if isinstance(intake.get("classification"), dict) else None
    number = next_number(session, now, conn)
    row = TicketValues({
        "number": number, "instance_id": instance_id, "customer_id": _cut(cust_id, 64),
        "customer_name": _cut(name, 200), "customer_type": _cut(ctype, 20), "customer_tier": _cut(tier, 30),
        "phone": _cut(customer.get("phone") or contact.get("phone"), 40),
        "contact_name": _cut(contact.get("name"), 100), "channel": _cut(intake.get("channel"), 20),
        "type": ticket_type, "priority": priority, "status": "open", "round": 1, "reopen_count": 0,
        "symptom": problem.get("symptom"),
        "fault_category": _cut((classification or {}).get("fault_category"), 30), "received_at": received_at,
        "occurred_at": occurred_at, "created_at": now, "created_by": actor, "sla_policy": None,
        "sla_subject": number, "first_response_due": None, "solution_due": None, "solution_warn_at": None,
        "first_response_at": None, "resolved_at": None, "resolved_by": None, "closed_at": None, "visit_at": None,
        "engineer": None, "spare_parts": [], "overall_score": None,  # satisfaction: SQL NULL, not JSON null
        "facts": {"classification": classification} if classification else {}, "last_update_at": now})
    opening = _round_clocks(session, conn, row, 1, received_at, pm=pm, actor=actor)
    # the ticket row first, its clocks after, as ever; None columns are left out (NULL all the same:
    # none of them has a default) so they cost no parameter conversion
    (inserted,) = _INSERT_TICKET.all(conn, {k: v for k, v in row.__dict__.items() if v is not None})
    row.id = inserted.id
    opening.write(session, conn)
    _require_solution_clock(row, opening)
    _INSERT_EVENT.run(conn, {"number": number, "at": now, "status": "open", "round": 1, "reason": None,
                             "by_user": actor})
    step = _step_for(session)
    if step is not None and step.instance_id == instance_id:
        step.business_key = number
    _record_contact(session, row, f"Ticket {number} opened ({ticket_type}, {priority}): "
                    f"{(problem.get('symptom') or '')[:300]}", actor, now)
    _audit(step, session, "ticket_registered", actor, {
        "number": number, "type": ticket_type, "priority": priority, "customer_id": cust_id,
        "received_at": _iso(received_at), "first_response_due": _iso(row.first_response_due),
        "solution_due": _iso(row.solution_due), "policy": row.sla_policy}, now, instance_id)
    session.flush()
    _leave_step_row(step, session, row, facts_written=bool(row.facts))
    return ticket_view(row)


_COLUMN_FACTS = {"fault_category": 30, "engineer": 150, "resolved_by": 20}  # name -> column size
_TIME_FACTS = ("first_response_at", "resolved_at", "closed_at")


def _record_facts(row: TicketValues, facts: dict[str, Any], changed: list[str]) -> None:
    """Put ``update_ticket``'s facts (``status``, ``round``, ``reason`` and the times taken out) on the row."""
    for key, size in _COLUMN_FACTS.items():
        if facts.get(key) is not None:
            setattr(row, key, _cut(str(facts.pop(key)), size))
            changed.append(key)
        facts.pop(key, None)
    if facts.get("visit_at"):
        row.visit_at = _moment(facts.pop("visit_at"), "visit_at")
        changed.append("visit_at")
    if facts.get("spare_parts") is not None:
        parts = facts.pop("spare_parts")
        if not isinstance(parts, list):
            raise TicketError(f"spare_parts must be a list, got {type(parts).__name__}")
        row.spare_parts = to_jsonable(parts)
        changed.append("spare_parts")
    if facts.get("satisfaction") is not None:
        survey = facts.pop("satisfaction")
        if not isinstance(survey, dict):
            raise TicketError(f"satisfaction must be the survey object, got {type(survey).__name__}")
        row.satisfaction = to_jsonable(survey)
        overall = survey.get("overall")
        score = overall.get("score") if isinstance(overall, dict) else overall
        row.overall_score = int(score) if isinstance(score, int) and not isinstance(score, bool) else None
        changed += ["satisfaction", "overall_score"]
    rest = {k: v for k, v in facts.items() if v is not None}
    if rest:
        row.facts = {**(row.facts or {}), **to_jsonable(rest)}
        changed += sorted(rest)


def update_ticket_in(session: Session, number: str, *, pm, now: datetime, actor: str,
                     **facts: Any) -> dict[str, Any]:
    """Record a ticket's progress: ``status`` (with ``round``, ``reason``) and facts; returns ``ticket_view``.

    Known facts go to columns (``first_response_at``, ``resolved_at``, ``closed_at``,
    ``visit_at``, ``engineer``, ``resolved_by``, ``fault_category``, ``spare_parts``,
    ``satisfaction``); any other fact is kept in ``facts``. A closed ticket cannot change.
    """
    conn = sla.connection(session)
    step = _step_for(session)
    loaded = _take_step_row(step, session, str(number))
    if loaded is None:
        found = (_SELECT_FOR_UPDATE_PG if conn.dialect.name == "postgresql" else _SELECT_FOR_UPDATE).first(
            conn, {"number": str(number)})
        if found is None:
            raise NotFound(f"no ticket {number!r}")
        loaded = found._asdict()
    row = TicketValues(loaded)
    if row.status == "closed":
        raise Conflict(f"ticket {row.number} is closed; it cannot change any more")
    status = facts.pop("status", None)
    round_no = facts.pop("round", None)
    reason = facts.pop("reason", None)
    if status is not None and status not in STATUSES:
        raise TicketError(f"ticket status {status!r} is not one of {', '.join(STATUSES)}")
    if round_no is not None:
        if isinstance(round_no, bool) or not isinstance(round_no, int) or round_no < 1:
            raise TicketError(f"round must be a positive whole number, got {round_no!r}")
    times: dict[str, datetime] = {}
    if facts:
        times = {k: _past_moment(facts.pop(k), k, now) for k in _TIME_FACTS if facts.get(k)}
        for k in _TIME_FACTS:
            facts.pop(k, None)
    before = {"status": row.status, "round": row.round}
    changed: list[str] = []
    clocks = _Clocks(session, conn)

    if status == "reopened":
        failed_round = round_no or row.round
        row.reopen_count += 1
        row.first_response_at = row.resolved_at = row.resolved_by = None
        _open_round_clocks(session, conn, row, failed_round + 1, now, pm=pm, actor=actor)
        changed += ["reopen_count", "first_response_due", "solution_due"]
    elif round_no is not None and round_no > _subject_round(row):  # a new round without a reopening
        row.reopen_count += 1
        row.first_response_at = row.resolved_at = row.resolved_by = None
        _open_round_clocks(session, conn, row, round_no, now, pm=pm, actor=actor)
        changed += ["reopen_count", "first_response_due", "solution_due"]

    if facts:  # a status change alone (most calls) has none
        _record_facts(row, facts, changed)

    if row.engineer and "engineer" in changed:
        clocks.set_owner(row.sla_subject, row.engineer)
    responded = times.get("first_response_at") or (now if status in LEFT_DIAGNOSIS else None)
    if responded is not None and row.first_response_at is None:
        current = clocks.of(row.sla_subject)
        round_start = min((r.started_at for r in current), default=row.received_at)
        responded = max(responded, round_start)  # a contact before this round began answers nothing in it
        row.first_response_at = responded
        changed.append("first_response_at")
        if _is_person(actor) and "engineer" not in changed:  # whoever responds owns the round
            row.engineer = _cut(actor, 150)
            clocks.set_owner(row.sla_subject, row.engineer)
        clocks.stop([r for r in current if r.name in CLOCK_ROLES["first_response"] + STOP_WITH_FIRST_RESPONSE],
                    responded, actor)
    if status == "resolved" or times.get("resolved_at"):
        row.resolved_at = times.get("resolved_at") or now
        changed.append("resolved_at")
        clocks.stop(clocks.running(_subjects(row)), row.resolved_at, actor)
    if status == "closed":
        row.closed_at = times.get("closed_at") or now
        changed.append("closed_at")
        clocks.stop(clocks.running(_subjects(row)), row.closed_at, actor)

    if round_no is not None and status != "reopened":
        row.round = round_no
    event = None
    if status is not None and (status != before["status"] or row.round != before["round"]):
        row.status = status
        event = {"number": row.number, "at": now, "status": status, "round": round_no or row.round,
                 "reason": str(reason)[:400] if reason else None, "by_user": actor}
    row.last_update_at = now
    values = {k: v for k, v in row.__dict__.items() if k not in loaded or loaded[k] != v}
    if values:
        _UPDATE_TICKET.run(conn, {"b_id": row.id, **values})
        sla.expire_loaded(session, Ticket, [row.id])
    if event is not None:
        _INSERT_EVENT.run(conn, event)
    if status in ("resolved", "closed"):
        summary = f"Ticket {row.number} {status}"
        if status == "closed" and row.overall_score is not None:
            summary += f" (overall satisfaction {row.overall_score}/5)"
        _record_contact(session, row, summary, actor, now)
    _audit(step, session, "ticket_updated", actor, {
        "number": row.number, "status": {"from": before["status"], "to": row.status},
        "round": {"from": before["round"], "to": row.round}, "reason": reason, "changed": sorted(set(changed))},
        now, row.instance_id)
    _leave_step_row(step, session, row, facts_written="facts" in values)
    return ticket_view(row)


def extend_deadline_in(session: Session, number: str, clock: str, new_due: Any, reason: str, *, now: datetime,
                       actor: str) -> dict[str, Any]:
    """Renegotiate a deadline (``first_response`` or ``solution``) of the current round.

    Moves the SLA clock (``engine.sla.extend_deadline``: recorded with the reason), the
    ticket's deadline, and the due time of the instance's open human tasks whose BPMN
    property ``slaClock`` names that clock; audits ``ticket_deadline_extended``. Returns
    ``ticket_view``.
    """
    if clock not in CLOCK_ROLES:
        raise TicketError(f"clock {clock!r} is not one of {', '.join(CLOCK_ROLES)}")
    if not reason or not str(reason).strip():
        raise TicketError("a renegotiated deadline needs a reason (the customer is told it)")
    step = _step_for(session)
    _drop_step_row(step, number)  # the ORM writes this row: the next update reads it
    row = _lock(session, number)
    if row.status == "closed":
        raise Conflict(f"ticket {row.number} is closed; its deadlines cannot change")
    due = _moment(new_due, "new_due")
    target = _role_clock(_clock_rows(session, [row.sla_subject]), clock)
    if target is None:
        raise NotFound(f"ticket {row.number} has no {clock} clock in round {_subject_round(row)}")
    column = f"{clock}_due"
    previous = getattr(row, column)
    sla.extend_deadline(session, row.sla_subject, target.name, due, str(reason), by=actor, at=now)
    new_value = target.due_at or due
    setattr(row, column, new_value)
    row.last_update_at = now
    redated = redate_tasks(session, row.instance_id, clock, new_value)
    _audit(step, session, "ticket_deadline_extended", actor, {
        "number": row.number, "clock": clock, "sla_clock": target.name, "from": _iso(previous),
        "to": _iso(new_value), "reason": str(reason), "tasks": redated}, now, row.instance_id)
    return ticket_view(row)


# ------------------------------------------------------------------------ task re-dating

_sla_props: dict[int, dict[str, str]] = {}
_sla_props_lock = threading.Lock()
_SPIFF = "http://spiffworkflow.org/bpmn/schema/1.0/core"
_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def sla_clock_tasks(session: Session, process_version_id: int) -> dict[str, str]:
    """``{BPMN element id: clock}`` of the user tasks with an ``slaClock`` property in a process version."""
    found = _sla_props.get(process_version_id)
    if found is not None:
        return found
    pv = session.get(ProcessVersion, process_version_id)
    found = {}
    for xml in (pv.bpmn_files or {}).values() if pv is not None else ():
        root = etree.fromstring(xml.encode("utf-8"), _XML_PARSER)
        for prop in root.iter(f"{{{_SPIFF}}}property"):
            if prop.get("name") != "slaClock":
                continue
            element = prop.getparent().getparent().getparent()  # property < properties < extensionElements < task
            if element is not None and element.get("id"):
                found[element.get("id")] = prop.get("value")
    with _sla_props_lock:
        _sla_props[process_version_id] = found
    return found


def redate_tasks(session: Session, instance_id: int | None, clock: str, due: datetime | None) -> list[str]:
    """Set the due time of an instance's open human tasks driven by ``clock``; returns their ids.

    Tasks completed in the current step keep their due time.
    """
    if instance_id is None or due is None:
        return []
    step = _step_for(session)
    done = {e.task_id for e in step.events if e.action == "task_completed"} if step is not None else set()
    out = []
    for task in session.scalars(select(HumanTask).where(HumanTask.instance_id == instance_id,
                                                        HumanTask.status == "ready")):
        if task.id in done:
            continue  # completed in this very step (e.g. the deadline-risk task itself)
        if sla_clock_tasks(session, task.process_version_id).get(task.name) == clock:
            task.due_at = due
            out.append(task.id)
    return out


# ------------------------------------------------------------------------------- reading


def list_tickets(session: Session, *, status: str | None = None, limit: int = 200, offset: int = 0,
                 now: datetime | None = None) -> list[dict[str, Any]]:
    """Tickets newest first (optionally of one status), from the table only."""
    q = select(Ticket)
    if status:
        q = q.where(Ticket.status == status)
    q = q.order_by(Ticket.created_at.desc(), Ticket.id.desc()).limit(limit).offset(offset)
    now = now or _utcnow()
    return [ticket_to_dict(r, now) for r in session.scalars(q)]


def get_ticket(session: Session, number: str, now: datetime | None = None) -> dict[str, Any]:
    """One ticket: facts, SLA clocks of every round (with renegotiations), status history, instance id."""
    row = session.scalar(select(Ticket).where(Ticket.number == str(number).strip().upper()))
    if row is None:
        raise NotFound(f"no ticket {number!r}")
    now = now or _utcnow()
    out = ticket_to_dict(row, now)
    clocks = []
    for subject in _subjects(row):
        for c in sla.clocks_for(session, subject):
            c["round"] = int(subject.rpartition("/R")[2]) if "/R" in subject else 1
            c["overdue"] = bool(c["status"] == sla.BREACHED or (
                c["status"] == sla.RUNNING and c["due_at"] and datetime.fromisoformat(c["due_at"]) <= now))
            clocks.append(c)
    out["deadlines"] = clocks
    out["history"] = [event_to_dict(e) for e in session.scalars(
        select(TicketEvent).where(TicketEvent.number == row.number).order_by(TicketEvent.id))]
    return out
