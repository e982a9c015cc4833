"""SLA clocks of tickets and complaints: persistence and the API processes call.

A clock (first response, solution; complaints: respond, plan, resolve) is one row of
``sla_clocks``: its budget and policy (from the ``careflow_sla_policy`` hook), tier,
calendar, start, pause ledger, renegotiations, owner and group, the escalation ladder
it was opened with (from the ``careflow_escalation_ladder`` hook), and two indexed
moments: ``due_at`` (NULL while paused) and ``next_rung_at`` (when the worker must next
look at it). The arithmetic is ``engine.sla_clock.SlaClock`` on the business calendar
of ``CAREFLOW_CALENDAR_FILE`` (China, Asia/Shanghai by default).

Every function takes the caller's session and never commits: called from a host
function with ``current_step().session`` its writes commit or roll back with the step.
When called inside a step, the audit rows go through the step; otherwise they are
appended in the given session.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.audit import AuditEvent, append_events
from engine.calendar import BusinessCalendar, Calendar, CalendarError, ensure_aware, parse_aware
from engine.clock import utcnow
from engine.errors import CareflowError, Conflict, NotFound
from engine.fastsql import Prepared
from engine.models import Base, BigId, UTCDateTime
from engine.sla_clock import Budget, BudgetError, Pause, SlaClock
from engine.step import current_step

RUNNING, PAUSED, MET, BREACHED = "running", "paused", "met", "breached"
OPEN_STATES = (RUNNING, PAUSED)
CALENDAR_ENV = "CAREFLOW_CALENDAR_FILE"


class SlaError(CareflowError, ValueError):
    """An SLA call that cannot be carried out as asked (bad budget, time out of order...)."""


# ----------------------------------------------------------------------------- tables


class SlaClockRow(Base):
    """One SLA clock of one subject (ticket or complaint)."""

    __tablename__ = "sla_clocks"
    __table_args__ = (
        UniqueConstraint("subject_key", "name", name="uq_sla_clocks_subject_name"),
        Index("ix_sla_clocks_due_at", "due_at"),
        Index("ix_sla_clocks_next_rung_at", "next_rung_at"),
        Index("ix_sla_clocks_status_due", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(30))  # ticket | complaint
    subject_key: Mapped[str] = mapped_column(String(100))
    instance_id: Mapped[int | None] = mapped_column(BigInteger, index=True)  # no FK: kept after instance deletion
    name: Mapped[str] = mapped_column(String(50))  # first_response, solution, respond, plan, resolve...
    status: Mapped[str] = mapped_column(String(20))  # running | paused | met | breached
    priority: Mapped[str | None] = mapped_column(String(30))
    ticket_type: Mapped[str | None] = mapped_column(String(50))
    tier: Mapped[str | None] = mapped_column(String(50))
    policy: Mapped[str] = mapped_column(String(200))
    budget: Mapped[str] = mapped_column(String(40))  # Budget spec: PT2H, 3WD, 8BH
    calendar_name: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    pauses: Mapped[list] = mapped_column(JSON)  # [Pause.to_dict()]
    history: Mapped[list] = mapped_column(JSON)  # priority changes and renegotiated deadlines
    ladder: Mapped[list] = mapped_column(JSON)  # escalation rungs, as the hook gave them at opening
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_rung_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    owner: Mapped[str | None] = mapped_column(String(150))
    group_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SlaEscalation(Base):
    """One fired escalation rung occurrence; the UNIQUE constraint is the exactly-once guard."""

    __tablename__ = "sla_escalations"
    __table_args__ = (UniqueConstraint("clock_id", "rung", "occurrence", name="uq_sla_escalations_once"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    clock_id: Mapped[int] = mapped_column(ForeignKey("sla_clocks.id"), index=True)
    rung: Mapped[str] = mapped_column(String(100))
    occurrence: Mapped[int] = mapped_column(Integer)  # 0, then 1, 2... for repeating reminders
    at_fraction: Mapped[float | None] = mapped_column(Float)
    notify: Mapped[str] = mapped_column(String(150))  # owner | supervisor | manager | a username
    recipient: Mapped[str | None] = mapped_column(String(300))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())  # when the rung was due
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outbox_key: Mapped[str] = mapped_column(String(200))


# ------------------------------------------------------------------ Core statements
# The step path reads and writes clocks with prebuilt Core statements on the session's
# connection (a fraction of the ORM's cost per statement); ORM objects of the same rows
# that the session may hold are flushed before and expired after (``expire_loaded``).

_CLOCKS = SlaClockRow.__table__
_INSERT_CLOCK = Prepared(insert(_CLOCKS))
_UPDATE_CLOCK = Prepared(update(_CLOCKS).where(_CLOCKS.c.id == bindparam("b_id")))
_UPDATE_SUBJECT = Prepared(update(_CLOCKS).where(_CLOCKS.c.subject_key == bindparam("b_subject")))
_SELECT_SUBJECT = Prepared(select(_CLOCKS).where(_CLOCKS.c.subject_key == bindparam("subject"))
                           .order_by(_CLOCKS.c.id))
# what stopping a clock and changing its owner read (``clock_of`` needs the start, budget, ledger, history)
_WORK_COLUMNS = tuple(_CLOCKS.c[n] for n in ("id", "subject_key", "instance_id", "name", "status", "tier", "policy",
                                             "budget", "started_at", "pauses", "history", "owner", "group_name"))
_SELECT_WORK_STATEMENTS = {}  # (several subjects, open only, locked) -> prebuilt select
for _many in (False, True):
    for _open_only in (False, True):
        _stmt = select(*_WORK_COLUMNS).where(_CLOCKS.c.subject_key.in_(bindparam("subjects", expanding=True)) if _many
                                             else _CLOCKS.c.subject_key == bindparam("subject"))
        if _open_only:  # OR, not IN: an IN list is an expanding parameter, which Prepared cannot take
            _stmt = _stmt.where(or_(*(_CLOCKS.c.status == state for state in OPEN_STATES)))
        _stmt = _stmt.order_by(_CLOCKS.c.id)
        # one subject (every step does this): prepared; several: an expanding IN, through SQLAlchemy
        _SELECT_WORK_STATEMENTS[_many, _open_only, False] = _stmt if _many else Prepared(_stmt)
        _SELECT_WORK_STATEMENTS[_many, _open_only, True] = (_stmt.with_for_update() if _many
                                                            else Prepared(_stmt.with_for_update()))
del _many, _open_only, _stmt


class ClockValues:
    """The columns of one ``sla_clocks`` row as plain attributes, read or written without the ORM.

    ``clock_of``, ``recompute`` and ``clock_info`` take it as they take an ``SlaClockRow``.
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def columns(self) -> dict[str, Any]:
        """The column values (without ``id``), as an INSERT takes them."""
        return {k: v for k, v in self.__dict__.items() if k != "id"}


def connection(session: Session) -> Connection:
    """The session's connection for Core statements, once pending ORM changes are flushed.

    The Core statements then read what the ORM objects say, and expiring an object after a
    Core write never drops a change of its own.
    """
    session.flush()
    return session.connection()


def expire_loaded(session: Session, cls: type, ids: list[int]) -> None:
    """Expire the ORM objects of ``cls`` with these ids the session holds (they reload what Core wrote)."""
    identity_map = session.identity_map
    if not len(identity_map):
        return
    mapper = cls.__mapper__
    for ident in ids:
        obj = identity_map.get(mapper.identity_key_from_primary_key((ident,)))
        if obj is not None:
            session.expire(obj)


def load_clocks(conn: Connection, subjects: list[str], *, lock: bool, open_only: bool = False) -> list[ClockValues]:
    """The clocks of these subjects (``open_only``: running or paused ones), oldest first.

    Only the columns stopping a clock and changing its owner need are read. ``lock``:
    ``FOR UPDATE`` on PostgreSQL.
    """
    many = len(subjects) != 1
    stmt = _SELECT_WORK_STATEMENTS[many, open_only, lock and conn.dialect.name == "postgresql"]
    params = {"subjects": list(subjects)} if many else {"subject": subjects[0]}
    rows = stmt.all(conn, params) if isinstance(stmt, Prepared) else conn.execute(stmt, params).all()
    return [ClockValues(r._asdict()) for r in rows]


def _full_rows(conn: Connection, subject_key: str) -> list[ClockValues]:
    """Every column of every clock of a subject, oldest first (no lock)."""
    return [ClockValues(r._asdict()) for r in _SELECT_SUBJECT.all(conn, {"subject": subject_key})]


# --------------------------------------------------------------------------- calendar

_calendars: dict[str | None, Calendar] = {}
_calendars_lock = threading.Lock()


def get_calendar() -> Calendar:
    """The business calendar: ``CAREFLOW_CALENDAR_FILE`` (TOML) over the China defaults (cached per path)."""
    path = os.environ.get(CALENDAR_ENV) or None
    cal = _calendars.get(path)
    if cal is None:
        cal = BusinessCalendar.from_config(path)
        with _calendars_lock:
            _calendars[path] = cal
    return cal


# ----------------------------------------------------------------------- clock maths


@dataclass
class RenegotiatedClock(SlaClock):
    """An ``SlaClock`` whose deadline was renegotiated with the customer.

    ``extra`` is the counted time the renegotiation added to the budget (so later pauses
    still push the deadline), ``agreed_due`` the moment agreed, kept exactly as given
    while no pause started after the agreement (``agreed_at``).
    """

    extra: timedelta = timedelta(0)
    agreed_due: datetime | None = None
    agreed_at: datetime | None = None

    @property
    def budget_duration(self) -> timedelta:
        """Budget as counted time, plus the renegotiated extra."""
        return self.budget.duration(self.calendar) + self.extra

    def due_at_fraction(self, fraction: float, now: datetime | None = None) -> datetime | None:
        """As ``SlaClock.due_at_fraction``; the full budget ends at the agreed moment when it still holds."""
        due = super().due_at_fraction(fraction, now)
        if due is not None and fraction == 1.0 and self.agreed_due is not None and self.agreed_at is not None:
            later = [p for p in self.pauses if p.paused_at >= self.agreed_at and (now is None or p.paused_at <= now)]
            if not later:
                return self.agreed_due
        return due


def _effective_extension(history: list[dict]) -> dict | None:
    """The renegotiation in force: the last one not superseded by a later budget change."""
    current = None
    for entry in history or []:
        if entry.get("event") == "priority_changed":
            current = None
        elif entry.get("event") == "extended":
            current = entry
    return current


class _OpeningClock(RenegotiatedClock):
    """The clock of a row ``prepare_clocks`` is opening: it is read, never paused or changed, so the
    moment of each fraction of its budget is computed once (the row's deadline, ``recompute`` and a
    ladder's 100 % rung all ask for the deadline; the ticket's warning time is its 80 %)."""

    def due_at_fraction(self, fraction: float, now: datetime | None = None) -> datetime | None:
        """As ``RenegotiatedClock.due_at_fraction``, remembered per fraction (``now`` None only)."""
        if now is not None:
            return super().due_at_fraction(fraction, now)
        moments = self.__dict__.setdefault("_moments", {})
        if fraction not in moments:
            moments[fraction] = super().due_at_fraction(fraction)
        return moments[fraction]


def clock_of(row: SlaClockRow, calendar: Calendar | None = None) -> RenegotiatedClock:
    """The arithmetic clock of a row (budget, calendar, ledger and renegotiation in force)."""
    return _clock_of(row, calendar, RenegotiatedClock)


def _clock_of(row: SlaClockRow, calendar: Calendar | None, cls: type[RenegotiatedClock]) -> RenegotiatedClock:
    ext = _effective_extension(row.history)
    return cls(
        started_at=row.started_at,
        budget=Budget.parse(row.budget),
        calendar=calendar or get_calendar(),
        pauses=[Pause.from_dict(p) for p in row.pauses or []],
        policy=row.policy,
        tier=row.tier,
        extra=timedelta(seconds=ext["extra_seconds"]) if ext else timedelta(0),
        agreed_due=parse_aware(ext["to"]) if ext else None,
        agreed_at=parse_aware(ext["at"]) if ext else None,
    )


def fired_occurrences(session: Session, clock_id: int) -> dict[str, int]:
    """Highest fired occurrence per rung name of a clock."""
    out: dict[str, int] = {}
    for rung, occurrence in session.execute(select(SlaEscalation.rung, SlaEscalation.occurrence)
                                            .where(SlaEscalation.clock_id == clock_id)):
        out[rung] = max(out.get(rung, -1), occurrence)
    return out


def recompute(session: Session, row: SlaClockRow, now: datetime | None = None,
              fired: dict[str, int] | None = None, clock: RenegotiatedClock | None = None) -> None:
    """Refresh ``due_at`` and ``next_rung_at`` of a row from its ledger, history and ladder.

    ``clock``: the row's ``clock_of``, when the caller has it already.
    """
    from engine.escalation import next_rung

    if row.status not in OPEN_STATES:
        row.next_rung_at = None
        return
    clock = clock if clock is not None else clock_of(row)
    row.due_at = clock.deadline()
    if row.status == PAUSED:
        row.next_rung_at = None
        return
    if fired is None:
        fired = fired_occurrences(session, row.id) if row.id is not None else {}
    upcoming = next_rung(clock, row.ladder or [], fired)
    row.next_rung_at = upcoming[0] if upcoming else None


# ------------------------------------------------------------------------------ audit


def _audit(session: Session, action: str, at: datetime, instance_id: int | None, actor: str | None,
           details: dict) -> None:
    """An audit row: through the current step when it owns ``session``, else appended directly."""
    try:
        step = current_step()
    except RuntimeError:
        step = None
    if step is not None and step.session is session:
        kwargs: dict[str, Any] = {"details": details}
        if actor:
            kwargs["actor"] = actor
        if instance_id is not None and step.instance_id is None:
            kwargs["instance_id"] = instance_id
        step.audit(action, **kwargs)
        return
    process_id = None
    if instance_id is not None:
        from engine.models import Instance

        process_id = session.scalar(select(Instance.process_id).where(Instance.id == instance_id))
    append_events(session, [AuditEvent(action=action, actor=actor or "system", cause="user" if actor else "system",
                                       at=at, instance_id=instance_id, process_id=process_id, details=details)])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _aware(value: datetime, what: str) -> datetime:
    try:
        return ensure_aware(value, what)
    except ValueError as err:
        raise SlaError(str(err)) from err


# -------------------------------------------------------------------------------- API


def _policy(pm, kind: str, priority: str | None, ticket_type: str | None, tier: str | None) -> dict:
    result = pm.hook.careflow_sla_policy(kind=kind, priority=priority, ticket_type=ticket_type, tier=tier)
    if isinstance(result, list):  # tolerate a non-firstresult spec: first non-empty answer wins
        result = next((r for r in result if r), None)
    if not result:
        return {"policy": "none", "clocks": {}}
    clocks = result.get("clocks") or {}
    if not isinstance(clocks, dict):
        raise SlaError(f"SLA policy {result.get('policy')!r} must give clocks as {{name: budget}}, got {clocks!r}")
    return {"policy": str(result.get("policy") or "default"), "clocks": clocks}


def _ladder(pm, info: dict) -> list[dict]:
    from engine.escalation import normalize_ladder

    raw = pm.hook.careflow_escalation_ladder(clock=info)
    return normalize_ladder(raw)


def _parse_budget(name: str, spec: Any, policy: str) -> Budget:
    try:
        return Budget.parse(spec)
    except BudgetError as err:
        raise SlaError(f"SLA policy {policy!r}, clock {name!r}: {err}") from err


def _rows(session: Session, subject_key: str, names: list[str] | None = None, lock: bool = True) -> list[SlaClockRow]:
    q = select(SlaClockRow).where(SlaClockRow.subject_key == subject_key).order_by(SlaClockRow.id)
    if lock and session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    return _pick(list(session.scalars(q)), subject_key, names)


def _pick(rows: list, subject_key: str, names: list[str] | None) -> list:
    """The clocks named (all when ``names`` is None) of a subject's rows; ``NotFound`` if any is missing."""
    if not rows:
        raise NotFound(f"no SLA clocks for '{subject_key}'")
    if names is not None:
        by_name = {r.name: r for r in rows}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise NotFound(f"'{subject_key}' has no SLA clock {', '.join(map(repr, missing))} "
                           f"(it has {', '.join(sorted(by_name))})")
        rows = [by_name[n] for n in names]
    return rows


def clock_info(row: SlaClockRow) -> dict:
    """What the escalation-ladder hook and notifications see of a clock."""
    return {"id": row.id, "subject_type": row.subject_type, "subject_key": row.subject_key, "name": row.name,
            "instance_id": row.instance_id, "priority": row.priority, "ticket_type": row.ticket_type,
            "tier": row.tier, "policy": row.policy, "budget": row.budget, "owner": row.owner,
            "group": row.group_name, "started_at": _iso(row.started_at), "due_at": _iso(row.due_at),
            "status": row.status}


def open_clocks(session: Session, *, subject_type: str, subject_key: str, instance_id: int | None,
                priority: str | None, ticket_type: str | None, tier: str | None, owner: str | None,
                group: str | None, started_at: datetime, pm, actor: str | None = None) -> dict[str, datetime | None]:
    """Open the clocks the SLA policy hook gives for a subject; returns clock name -> due time.

    Budgets come from ``pm.hook.careflow_sla_policy(kind=subject_type, ...)``, the ladder of
    each clock from ``pm.hook.careflow_escalation_ladder(clock=...)``. A clock the subject
    already has is left as it is (calling again is harmless) and its due time returned.
    """
    opening = prepare_clocks(session, subject_type=subject_type, subject_key=subject_key, instance_id=instance_id,
                             priority=priority, ticket_type=ticket_type, tier=tier, owner=owner, group=group,
                             started_at=started_at, pm=pm, actor=actor)
    opening.write(session)
    return opening.dues


@dataclass
class ClockOpening:
    """The clocks ``open_clocks`` opens for a subject, computed by ``prepare_clocks`` and not written yet."""

    subject_type: str
    subject_key: str
    instance_id: int | None
    policy: str
    priority: str | None
    tier: str | None
    owner: str | None
    group: str | None
    started_at: datetime
    actor: str | None
    existing: list[ClockValues]  # the subject's clocks before (every column), oldest first
    new: list[ClockValues]  # the clocks to open, in policy order (no ``id``: not read back)
    dues: dict[str, datetime | None]  # what ``open_clocks`` returns
    clocks: dict[str, RenegotiatedClock] = dataclasses.field(default_factory=dict)  # ``clock_of`` the new rows

    def clock(self, row: ClockValues) -> RenegotiatedClock:
        """``clock_of(row)`` for one of ``rows`` (the new ones' as computed when they were prepared)."""
        clock = self.clocks.get(row.name)
        return clock if clock is not None and any(r is row for r in self.new) else clock_of(row)

    @property
    def rows(self) -> list[ClockValues]:
        """Every clock the subject has once written, oldest first."""
        return self.existing + self.new

    def write(self, session: Session, conn: Connection | None = None) -> None:
        """Insert the new clocks (in the session's transaction) and audit ``sla_clocks_opened``.

        ``conn``: the session's connection, when the caller has it already.
        """
        if not self.new:
            return
        _INSERT_CLOCK.run_many(conn if conn is not None else session.connection(), [r.columns() for r in self.new])
        _audit(session, "sla_clocks_opened", self.started_at, self.instance_id, self.actor,
               {"subject_type": self.subject_type, "subject_key": self.subject_key, "policy": self.policy,
                "priority": self.priority, "tier": self.tier, "owner": self.owner, "group": self.group,
                "clocks": {r.name: {"budget": r.budget, "due_at": _iso(r.due_at)} for r in self.new}})


def prepare_clocks(session: Session, *, subject_type: str, subject_key: str, instance_id: int | None,
                   priority: str | None, ticket_type: str | None, tier: str | None, owner: str | None,
                   group: str | None, started_at: datetime, pm, actor: str | None = None,
                   conn: Connection | None = None) -> ClockOpening:
    """What ``open_clocks`` would open (policy and ladder hooks asked, deadlines computed); ``write`` opens them.

    ``conn``: the session's connection (``connection``), when the caller has it already.
    """
    if not subject_key or not isinstance(subject_key, str):
        raise SlaError(f"subject_key must be a non-empty string, got {subject_key!r}")
    started_at = _aware(started_at, "started_at")
    policy = _policy(pm, subject_type, priority, ticket_type, tier)
    cal = get_calendar()
    existing = _full_rows(conn if conn is not None else connection(session), subject_key)
    by_name = {r.name: r for r in existing}
    dues: dict[str, datetime | None] = {}
    new: list[ClockValues] = []
    clocks: dict[str, RenegotiatedClock] = {}
    now = utcnow()
    for name, spec in policy["clocks"].items():
        if name in by_name:
            dues[name] = by_name[name].due_at
            continue
        if spec is None:
            dues[name] = None
            continue
        budget = _parse_budget(name, spec, policy["policy"])
        row = ClockValues({
            "id": None, "subject_type": subject_type, "subject_key": subject_key, "instance_id": instance_id,
            "name": name, "status": RUNNING, "priority": priority, "ticket_type": ticket_type, "tier": tier,
            "policy": policy["policy"], "budget": budget.spec, "calendar_name": cal.name, "started_at": started_at,
            "pauses": [], "history": [], "ladder": [], "due_at": None, "stopped_at": None, "next_rung_at": None,
            "owner": owner, "group_name": group, "created_at": now, "updated_at": now})
        clock = clocks[name] = _clock_of(row, cal, _OpeningClock)
        row.due_at = clock.deadline()
        row.ladder = _ladder(pm, clock_info(row))
        recompute(session, row, fired={}, clock=clock)
        new.append(row)
        dues[name] = row.due_at
    return ClockOpening(subject_type=subject_type, subject_key=subject_key, instance_id=instance_id,
                        policy=policy["policy"], priority=priority, tier=tier, owner=owner, group=group,
                        started_at=started_at, actor=actor, existing=existing, new=new, dues=dues, clocks=clocks)


def stop_clock(session: Session, subject_key: str, name: str, at: datetime, actor: str | None = None) -> None:
    """Stop a clock at ``at``: ``met`` if within its deadline, else ``breached`` (an open pause ends at ``at``).

    Stopping a stopped clock changes nothing.
    """
    at = _aware(at, "at")
    conn = connection(session)
    (row,) = _pick(load_clocks(conn, [subject_key], lock=True), subject_key, [name])
    stop_clocks(session, [row], at, actor=actor)


def stop_clocks(session: Session, rows: list[ClockValues], at: datetime, actor: str | None = None,
                conn: Connection | None = None) -> None:
    """Stop the given clocks (loaded with ``load_clocks``, locked) at ``at``, one after the other, as ``stop_clock``.

    Clocks already stopped are left alone; the rows are updated in place. ``conn``: the session's
    connection, when the caller has it already.
    """
    at = _aware(at, "at")
    cal = None
    for row in rows:
        if row.status not in OPEN_STATES:
            continue
        if cal is None:  # once, for the first clock still open
            cal = get_calendar()
            conn = conn if conn is not None else session.connection()
        clock = clock_of(row, cal)
        values: dict[str, Any] = {}
        if clock.is_paused:
            _guard(clock.resume, at)
            row.pauses = values["pauses"] = [p.to_dict() for p in clock.pauses]
        due = clock.deadline()
        row.due_at = due
        row.status = MET if due is None or at <= due else BREACHED
        row.stopped_at = at
        row.next_rung_at = None
        row.updated_at = utcnow()
        _UPDATE_CLOCK.run(conn, {**values, "b_id": row.id, "due_at": due, "status": row.status, "stopped_at": at,
                                 "next_rung_at": None, "updated_at": row.updated_at})
        expire_loaded(session, SlaClockRow, [row.id])
        _audit(session, "sla_clock_stopped", at, row.instance_id, actor,
               {"subject_key": row.subject_key, "clock": row.name, "outcome": row.status, "due_at": _iso(due),
                "stopped_at": at.isoformat()})


def _guard(fn, *args):
    try:
        return fn(*args)
    except ValueError as err:
        raise SlaError(str(err)) from err


def _open_rows(session: Session, subject_key: str, names: list[str] | None) -> list[SlaClockRow]:
    rows = _rows(session, subject_key, names)
    return [r for r in rows if r.status in OPEN_STATES]


def pause_clocks(session: Session, subject_key: str, reason: str, at: datetime, names: list[str] | None = None,
                 actor: str | None = None) -> None:
    """Pause the running clocks of a subject (all, or ``names``) at ``at`` for ``reason``.

    Reasons such as ``waiting_for_customer`` or ``waiting_for_parts`` are shown translated.
    Paused or stopped clocks are left alone.
    """
    at = _aware(at, "at")
    changed = []
    for row in _open_rows(session, subject_key, names):
        if row.status != RUNNING:
            continue
        clock = clock_of(row)
        _guard(clock.pause, at, reason or "")
        row.pauses = [p.to_dict() for p in clock.pauses]
        row.status = PAUSED
        row.due_at = None
        row.next_rung_at = None
        row.updated_at = utcnow()
        changed.append(row.name)
    if changed:
        _audit(session, "sla_clocks_paused", at, _instance_of(session, subject_key), actor,
               {"subject_key": subject_key, "clocks": changed, "reason": reason})


def resume_clocks(session: Session, subject_key: str, at: datetime, names: list[str] | None = None,
                  actor: str | None = None) -> None:
    """Resume the paused clocks of a subject (all, or ``names``) at ``at``; deadlines move by the pause."""
    at = _aware(at, "at")
    changed = {}
    for row in _open_rows(session, subject_key, names):
        if row.status != PAUSED:
            continue
        clock = clock_of(row)
        _guard(clock.resume, at)
        row.pauses = [p.to_dict() for p in clock.pauses]
        row.status = RUNNING
        row.updated_at = utcnow()
        recompute(session, row)
        changed[row.name] = _iso(row.due_at)
    if changed:
        _audit(session, "sla_clocks_resumed", at, _instance_of(session, subject_key), actor,
               {"subject_key": subject_key, "due_at": changed})


def _instance_of(session: Session, subject_key: str) -> int | None:
    return session.scalar(select(SlaClockRow.instance_id).where(SlaClockRow.subject_key == subject_key).limit(1))


def change_priority(session: Session, subject_key: str, priority: str, at: datetime, pm, ticket_type=None,
                    tier=None, actor: str | None = None) -> dict[str, datetime | None]:
    """Re-budget the open clocks of a subject for a new priority (and ticket type / tier).

    The start and the pause ledger are kept: deadlines are recomputed from them with the
    new budgets. A renegotiated deadline is superseded (kept in the history). Stopped
    clocks keep their outcome. Returns clock name -> due time for every clock.
    """
    at = _aware(at, "at")
    rows = _rows(session, subject_key)
    first = rows[0]
    ticket_type = ticket_type if ticket_type is not None else first.ticket_type
    tier = tier if tier is not None else first.tier
    policy = _policy(pm, first.subject_type, priority, ticket_type, tier)
    out: dict[str, datetime | None] = {}
    changes = {}
    for row in rows:
        if row.status in OPEN_STATES:
            spec = policy["clocks"].get(row.name)
            budget = _parse_budget(row.name, spec, policy["policy"]) if spec else Budget.parse(row.budget)
            entry = {"event": "priority_changed", "at": at.isoformat(), "from": row.priority, "to": priority,
                     "budget_from": row.budget, "budget_to": budget.spec, "policy_from": row.policy,
                     "policy_to": policy["policy"] if spec else row.policy, "previous_due": _iso(row.due_at)}
            row.history = [*(row.history or []), entry]
            row.budget = budget.spec
            if spec:
                row.policy = policy["policy"]
            row.updated_at = utcnow()
            row.priority, row.ticket_type, row.tier = priority, ticket_type, tier
            recompute(session, row)
            changes[row.name] = {"budget": row.budget, "due_at": _iso(row.due_at)}
        else:
            row.priority, row.ticket_type, row.tier = priority, ticket_type, tier
        out[row.name] = row.due_at
    _audit(session, "sla_priority_changed", at, first.instance_id, actor,
           {"subject_key": subject_key, "priority": priority, "policy": policy["policy"], "clocks": changes})
    return out


def extend_deadline(session: Session, subject_key: str, name: str, new_due: datetime, reason: str, by: str,
                    at: datetime) -> None:
    """Renegotiate a running clock's deadline to ``new_due`` (agreed with the customer), recorded and explained.

    The renegotiation adds counted time to the budget, so a later pause still moves the
    deadline; a later priority change supersedes it.
    """
    at, new_due = _aware(at, "at"), _aware(new_due, "new_due")
    (row,) = _rows(session, subject_key, [name])
    if row.status == PAUSED:
        raise Conflict(f"the {name} clock of '{subject_key}' is paused; resume it before renegotiating its deadline")
    if row.status not in OPEN_STATES:
        raise Conflict(f"the {name} clock of '{subject_key}' is already stopped ({row.status})")
    if new_due <= at:
        raise SlaError(f"the new deadline {new_due.isoformat()} must be after {at.isoformat()}")
    if not reason or not str(reason).strip():
        raise SlaError("a renegotiated deadline needs a reason (it is shown to whoever reads the clock)")
    clock = clock_of(row)
    previous_due = clock.deadline()
    base = dataclasses.replace(clock, extra=timedelta(0), agreed_due=None, agreed_at=None)
    counted = base.elapsed(new_due)
    if counted <= timedelta(0):
        raise SlaError(f"no working time on calendar {base.counting_calendar.name} before {new_due.isoformat()}")
    entry = {"event": "extended", "at": at.isoformat(), "by": by, "reason": str(reason), "from": _iso(previous_due),
             "to": new_due.isoformat(), "extra_seconds": (counted - base.budget_duration).total_seconds()}
    row.history = [*(row.history or []), entry]
    row.updated_at = utcnow()
    recompute(session, row)
    _audit(session, "sla_deadline_extended", at, row.instance_id, by,
           {"subject_key": subject_key, "clock": name, "from": _iso(previous_due), "to": new_due.isoformat(),
            "reason": str(reason)})


def set_owner(session: Session, subject_key: str, owner: str | None, group: str | None = None) -> None:
    """Set who owns a subject's clocks (escalations go to the owner and the owner's supervisors).

    ``group`` None keeps the current group.
    """
    set_owner_of(session, load_clocks(connection(session), [subject_key], lock=True), subject_key, owner, group)


def set_owner_of(session: Session, rows: list[ClockValues], subject_key: str, owner: str | None,
                 group: str | None = None, conn: Connection | None = None) -> None:
    """``set_owner`` on a subject's clocks already loaded (every clock of it, locked); updates them in place.

    ``conn``: the session's connection, when the caller has it already.
    """
    rows = _pick(rows, subject_key, None)
    before = rows[0].owner
    if any(r.owner != owner or (group is not None and r.group_name != group) for r in rows):
        params: dict[str, Any] = {"b_subject": subject_key, "owner": owner}
        if group is not None:
            params["group_name"] = group
        _UPDATE_SUBJECT.run(conn if conn is not None else session.connection(), params)
        for row in rows:
            row.owner = owner
            if group is not None:
                row.group_name = group
        expire_loaded(session, SlaClockRow, [r.id for r in rows])
    if before != owner:
        _audit(session, "sla_owner_changed", utcnow(), rows[0].instance_id, None,
               {"subject_key": subject_key, "from": before, "to": owner, "group": group})


def _escalations(session: Session, clock_ids: list[int]) -> dict[int, list[SlaEscalation]]:
    out: dict[int, list[SlaEscalation]] = {i: [] for i in clock_ids}
    if clock_ids:
        for e in session.scalars(select(SlaEscalation).where(SlaEscalation.clock_id.in_(clock_ids))
                                 .order_by(SlaEscalation.fired_at, SlaEscalation.id)):
            out[e.clock_id].append(e)
    return out


def escalation_dict(e: SlaEscalation) -> dict:
    """JSON-ready view of a fired rung."""
    return {"rung": e.rung, "occurrence": e.occurrence, "notify": e.notify, "recipient": e.recipient,
            "due_at": _iso(e.due_at), "fired_at": _iso(e.fired_at), "outbox_key": e.outbox_key}


def row_dict(row: SlaClockRow, escalations: list[SlaEscalation] | None = None) -> dict:
    """JSON-ready view of a clock row."""
    return {
        "id": row.id, "subject_type": row.subject_type, "subject_key": row.subject_key,
        "instance_id": row.instance_id, "name": row.name, "status": row.status, "priority": row.priority,
        "ticket_type": row.ticket_type, "tier": row.tier, "policy": row.policy, "budget": row.budget,
        "calendar": row.calendar_name, "started_at": _iso(row.started_at), "due_at": _iso(row.due_at),
        "stopped_at": _iso(row.stopped_at), "next_rung_at": _iso(row.next_rung_at), "owner": row.owner,
        "group": row.group_name, "pauses": list(row.pauses or []), "history": list(row.history or []),
        "ladder": list(row.ladder or []),
        "escalations": [escalation_dict(e) for e in escalations or []],
    }


def clocks_for(session: Session, subject_key: str) -> list[dict]:
    """Every clock of a subject, with its fired escalations (empty list if it has none)."""
    rows = list(session.scalars(select(SlaClockRow).where(SlaClockRow.subject_key == subject_key)
                                .order_by(SlaClockRow.id)))
    esc = _escalations(session, [r.id for r in rows])
    return [row_dict(r, esc[r.id]) for r in rows]


def explain(session: Session, subject_key: str, name: str | None = None, now: datetime | None = None) -> list[dict]:
    """Why each clock of a subject is due when it is (budget, policy, tier, calendar, pauses, renegotiations).

    Each entry is ``SlaClock.explain()`` (``sentence`` in English and Chinese, ``due_at``...)
    plus the clock's name, status, owner, escalations and next rung. A stopped clock is
    explained as it stood when it stopped.
    """
    from engine.escalation import next_rung

    now = _aware(now, "now") if now is not None else utcnow()
    rows = _rows(session, subject_key, [name] if name else None, lock=False)
    esc = _escalations(session, [r.id for r in rows])
    cal = get_calendar()
    out = []
    for row in rows:
        clock = clock_of(row, cal)
        as_of = min(now, row.stopped_at) if row.stopped_at else now
        try:
            info = clock.explain(as_of)
        except (ValueError, CalendarError) as err:
            raise SlaError(f"cannot explain the {row.name} clock of '{subject_key}': {err}") from err
        en, zh = info["sentence"]["en"], info["sentence"]["zh"]
        renegotiations = [h for h in row.history or [] if h.get("event") == "extended"]
        in_force = _effective_extension(row.history)
        changes = [h for h in row.history or [] if h.get("event") == "priority_changed"]
        for h in changes:
            en += (f" Priority changed from {h['from'] or '-'} to {h['to']} at {_local(h['at'], cal)}: "
                   f"budget {h['budget_from']} -> {h['budget_to']}, recomputed from the start and the pauses.")
            zh += (f" 优先级于 {_local(h['at'], cal)} 由 {h['from'] or '-'} 改为 {h['to']}："
                   f"时限 {h['budget_from']} -> {h['budget_to']}，按开始时间和暂停记录重新计算。")
        for h in renegotiations:
            state_en = "" if h is in_force else " (superseded by a later priority change)"
            state_zh = "" if h is in_force else "（已被之后的优先级变更取代）"
            en += (f" Deadline renegotiated by {h['by']} at {_local(h['at'], cal)} from "
                   f"{_local(h['from'], cal) if h.get('from') else '-'} to {_local(h['to'], cal)}: {h['reason']}{state_en}.")
            zh += (f" {h['by']} 于 {_local(h['at'], cal)} 将截止时间由 "
                   f"{_local(h['from'], cal) if h.get('from') else '-'} 改为 {_local(h['to'], cal)}：{h['reason']}{state_zh}。")
        if row.stopped_at:
            outcome_en = "met" if row.status == MET else "breached"
            outcome_zh = "达标" if row.status == MET else "超时"
            en += f" Stopped at {_local(row.stopped_at, cal)}: {outcome_en}."
            zh += f" 于 {_local(row.stopped_at, cal)} 停止：{outcome_zh}。"
        fired: dict[str, int] = {}
        for e in esc[row.id]:
            fired[e.rung] = max(fired.get(e.rung, -1), e.occurrence)
        upcoming = next_rung(clock, row.ladder or [], fired) if row.status == RUNNING else None
        info.update({
            "clock": row.name, "subject_type": row.subject_type, "subject_key": row.subject_key,
            "instance_id": row.instance_id, "status": row.status, "priority": row.priority,
            "ticket_type": row.ticket_type, "owner": row.owner, "group": row.group_name,
            "stopped_at": _iso(row.stopped_at), "renegotiations": renegotiations, "priority_changes": changes,
            "escalations": [escalation_dict(e) for e in esc[row.id]],
            "next_rung": ({"at": upcoming[0].isoformat(), "rung": upcoming[1], "occurrence": upcoming[2]}
                          if upcoming else None),
            "overdue": bool(row.status == RUNNING and info["due_at"] and parse_aware(info["due_at"]) <= now)
            or row.status == BREACHED,
            "sentence": {"en": en, "zh": zh},
        })
        out.append(info)
    return out


def _local(value: str | datetime, cal: Calendar) -> str:
    dt = parse_aware(value) if isinstance(value, str) else value
    return dt.astimezone(cal.tz).strftime("%Y-%m-%d %H:%M")
