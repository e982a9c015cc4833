"""Escalation rungs of SLA clocks: when each rung is due, and firing it exactly once.

A ladder is data from the ``careflow_escalation_ladder`` hook, stored with each clock
when it opens: rungs ``{"name", "at_fraction", "notify", "repeat_every"}`` (default:
remind the owner at 50 % of the budget, alert the owner's supervisor at 100 %, the
manager — the supervisor's supervisor — at 150 %). Fractions are of counted time
(working time not paused), so a rung moves with pauses, priority changes and
renegotiated deadlines. A repeating rung fires again every ``repeat_every`` of counted
time; a worker that was down fires the latest missed occurrence once, not every one.

Firing one clock is one transaction: the ``sla_escalations`` row (UNIQUE per clock,
rung and occurrence: the exactly-once guard), the notification as an outbox row with
an idempotency key derived from them, the audit row (actor ``timer``, action
``sla_escalated``) and the clock's next ``next_rung_at``.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.audit import AuditEvent, append_events
from engine.clock import utcnow
from engine.models import Instance, OutboxMessage, User
from engine.sla import (
    PAUSED,
    RUNNING,
    SlaClockRow,
    SlaError,
    SlaEscalation,
    clock_info,
    clock_of,
    escalation_dict,
    fired_occurrences,
    recompute,
)
from engine.sla_clock import Budget, BudgetError, SlaClock

log = logging.getLogger("careflow.escalation")

ROLES = ("owner", "supervisor", "manager")
MAX_OCCURRENCES = 1000  # a repeating reminder stops after this many (also the default max_repeats)
FALLBACK_GROUP = "supervisor"  # the supervisors' lane: who hears of an escalation nobody else can take
PARK_AFTER_ERROR = timedelta(minutes=5)
OUTBOX_TOPIC = "sla_escalation"


# ------------------------------------------------------------------------------ ladder


def normalize_ladder(raw: Any) -> list[dict]:
    """Validate and flatten hook results into rungs sorted by fraction (first of a duplicate name wins).

    Accepts a list of rungs or a list of such lists (every plugin's answer). Raises
    :class:`engine.sla.SlaError` naming the bad rung.
    """
    items: list = []
    for part in raw or []:
        if isinstance(part, dict):
            items.append(part)
        elif isinstance(part, list | tuple):
            items.extend(part)
        elif part is not None:
            raise SlaError(f"escalation ladder: expected rungs (dicts), got {part!r}")
    rungs: dict[str, dict] = {}
    for item in items:
        if not isinstance(item, dict):
            raise SlaError(f"escalation ladder: a rung must be a dict, got {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SlaError(f"escalation ladder: rung without a name: {item!r}")
        frac = item.get("at_fraction")
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not math.isfinite(frac) or frac < 0:
            raise SlaError(f"escalation ladder: rung {name!r} needs at_fraction >= 0 (0.5 = half the budget), "
                           f"got {frac!r}")
        notify = item.get("notify")
        if not isinstance(notify, str) or not notify.strip():
            raise SlaError(f"escalation ladder: rung {name!r} needs notify: owner, supervisor, manager or a username")
        repeat = item.get("repeat_every")
        if repeat is not None:
            try:
                repeat = Budget.parse(repeat).spec
            except BudgetError as err:
                raise SlaError(f"escalation ladder: rung {name!r} repeat_every: {err}") from err
        max_repeats = item.get("max_repeats", MAX_OCCURRENCES)
        if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 0:
            raise SlaError(f"escalation ladder: rung {name!r} max_repeats must be an integer >= 0")
        rung = {"name": name.strip(), "at_fraction": float(frac), "notify": notify.strip(), "repeat_every": repeat}
        if repeat:
            rung["max_repeats"] = min(max_repeats, MAX_OCCURRENCES)
        rungs.setdefault(rung["name"], rung)
    return sorted(rungs.values(), key=lambda r: (r["at_fraction"], r["name"]))


def _step_fraction(clock: SlaClock, rung: dict) -> float:
    return Budget.parse(rung["repeat_every"]).duration(clock.calendar) / clock.budget_duration


def occurrence_time(clock: SlaClock, rung: dict, occurrence: int) -> datetime | None:
    """When occurrence ``occurrence`` (0 = first) of a rung is due; None while the clock is paused."""
    fraction = rung["at_fraction"]
    if occurrence:
        fraction += occurrence * _step_fraction(clock, rung)
    return clock.due_at_fraction(fraction)


def _last_occurrence(rung: dict) -> int:
    return rung.get("max_repeats", MAX_OCCURRENCES) if rung.get("repeat_every") else 0


def next_rung(clock: SlaClock, ladder: list[dict], fired: dict[str, int]) -> tuple[datetime, str, int] | None:
    """The earliest rung occurrence not fired yet: ``(due time, rung name, occurrence)``, or None."""
    best: tuple[datetime, str, int] | None = None
    for rung in ladder:
        k = fired.get(rung["name"], -1) + 1
        if k > _last_occurrence(rung):
            continue
        t = occurrence_time(clock, rung, k)
        if t is not None and (best is None or t < best[0]):
            best = (t, rung["name"], k)
    return best


def _latest_due(clock: SlaClock, rung: dict, first: int, now: datetime) -> tuple[int, datetime] | None:
    """The latest occurrence >= ``first`` due at ``now`` (missed repeats collapse into it)."""
    last = _last_occurrence(rung)
    if first > last:
        return None
    t = occurrence_time(clock, rung, first)
    if t is None or t > now:
        return None
    if not rung.get("repeat_every"):
        return first, t
    step = _step_fraction(clock, rung)
    guess = math.floor((clock.fraction_used(now) - rung["at_fraction"]) / step) if step > 0 else first
    k = min(max(guess, first), last)
    tk = occurrence_time(clock, rung, k)
    while k > first and (tk is None or tk > now):  # float rounding in the guess
        k -= 1
        tk = occurrence_time(clock, rung, k)
    while k < last:
        nxt = occurrence_time(clock, rung, k + 1)
        if nxt is None or nxt > now:
            break
        k, tk = k + 1, nxt
    return k, tk


# -------------------------------------------------------------------------- recipients


def supervisor_of(session: Session, username: str | None) -> str | None:
    """The supervisor of ``username`` in the org table (users.supervisor), or None."""
    if not username:
        return None
    return session.scalar(select(User.supervisor).where(User.username == username))


def resolve_recipient(session: Session, notify: str, owner: str | None, group: str | None) -> dict:
    """Who a rung's ``notify`` reaches: ``{"recipient", "kind": user|group, "via"}``.

    ``owner`` -> the owner (else the clock's group); ``supervisor`` -> the owner's supervisor;
    ``manager`` -> the supervisor's supervisor. When the org table has no answer the
    nearest person up the chain is used, and at last the ``supervisor`` group; ``via``
    says which. Anything else is taken as a username.
    """
    if notify == "owner":
        if owner:
            return {"recipient": owner, "kind": "user", "via": "owner"}
        if group:
            return {"recipient": group, "kind": "group", "via": "group (no owner)"}
        return {"recipient": FALLBACK_GROUP, "kind": "group", "via": "supervisor group (no owner, no group)"}
    if notify in ("supervisor", "manager"):
        sup = supervisor_of(session, owner)
        if notify == "supervisor" and sup:
            return {"recipient": sup, "kind": "user", "via": f"supervisor of {owner}"}
        if notify == "manager":
            manager = supervisor_of(session, sup)
            if manager:
                return {"recipient": manager, "kind": "user", "via": f"supervisor of {sup} (supervisor of {owner})"}
            if sup:
                return {"recipient": sup, "kind": "user", "via": f"supervisor of {owner} ({sup} has no supervisor)"}
        who = owner or "nobody (no owner)"
        return {"recipient": FALLBACK_GROUP, "kind": "group", "via": f"supervisor group ({who} has no supervisor)"}
    return {"recipient": notify, "kind": "user", "via": "named in the ladder"}


# ------------------------------------------------------------------------------ firing


def outbox_key(clock_id: int, rung: str, occurrence: int) -> str:
    """Idempotency key of a rung's notification."""
    return f"sla:{clock_id}:{rung}:{occurrence}"


def fire_clock(session: Session, row: SlaClockRow, now: datetime) -> tuple[list[SlaEscalation], list[AuditEvent]]:
    """Fire every rung of a (locked) clock that is due at ``now``, once; refresh its ``next_rung_at``.

    Writes in ``session`` only: escalation rows, outbox rows, audit events (returned,
    not yet appended) and the clock row.
    """
    fired = fired_occurrences(session, row.id)
    new: list[SlaEscalation] = []
    events: list[AuditEvent] = []
    if row.status == RUNNING:
        clock = clock_of(row)
        due = clock.deadline()
        process_id = None
        if row.instance_id is not None:
            process_id = session.scalar(select(Instance.process_id).where(Instance.id == row.instance_id))
        explanation = None
        for rung in row.ladder or []:
            first = fired.get(rung["name"], -1) + 1
            hit = _latest_due(clock, rung, first, now)
            if hit is None:
                continue
            k, rung_due = hit
            who = resolve_recipient(session, rung["notify"], row.owner, row.group_name)
            if explanation is None:
                explanation = clock.explain(now)["sentence"]
            key = outbox_key(row.id, rung["name"], k)
            fraction = rung["at_fraction"] + (k * _step_fraction(clock, rung) if k else 0.0)
            esc = SlaEscalation(clock_id=row.id, rung=rung["name"], occurrence=k, at_fraction=fraction,
                                notify=rung["notify"], recipient=who["recipient"], due_at=rung_due, fired_at=now,
                                outbox_key=key)
            payload = {
                **clock_info(row), "clock": row.name, "due_at": due.isoformat() if due else None,
                "rung": rung["name"], "occurrence": k, "at_fraction": round(fraction, 4),
                "notify": rung["notify"], "recipient": who["recipient"], "recipient_kind": who["kind"],
                "resolved_via": who["via"], "rung_due_at": rung_due.isoformat(),
                "overdue_by_seconds": int((now - due).total_seconds()) if due and now > due else 0,
                # one string for templates that show it as is; each language on its own too
                "explanation": f"{explanation['zh']}\n{explanation['en']}",
                "explanation_zh": explanation["zh"], "explanation_en": explanation["en"],
            }
            try:
                with session.begin_nested():
                    session.add(esc)
                    session.add(OutboxMessage(idempotency_key=key, instance_id=row.instance_id, topic=OUTBOX_TOPIC,
                                              channel=None, recipient=who["recipient"], payload=payload,
                                              status="pending", attempts=0, next_attempt_at=now, created_at=now))
                    session.flush()
            except IntegrityError:
                log.info("rung %s #%s of clock %s already fired", rung["name"], k, row.id)
                fired[rung["name"]] = max(fired.get(rung["name"], -1), k)
                continue
            fired[rung["name"]] = k
            new.append(esc)
            events.append(AuditEvent(
                action="sla_escalated", actor="timer", cause="timer", at=now, instance_id=row.instance_id,
                process_id=process_id,
                details={"subject_type": row.subject_type, "subject_key": row.subject_key, "clock": row.name,
                         "rung": rung["name"], "occurrence": k, "skipped_occurrences": k - first,
                         "notify": rung["notify"], "recipient": who["recipient"], "recipient_kind": who["kind"],
                         "resolved_via": who["via"], "rung_due_at": rung_due.isoformat(),
                         "clock_due_at": due.isoformat() if due else None,
                         "lateness_ms": round((now - rung_due).total_seconds() * 1000, 1), "outbox_key": key}))
    recompute(session, row, now=now, fired=fired)
    if row.next_rung_at is not None and row.next_rung_at <= now:
        log.warning("clock %s: next rung computed in the past (%s); looking again in a second", row.id,
                    row.next_rung_at.isoformat())
        row.next_rung_at = now + timedelta(seconds=1)
    return new, events


def claim_due_clock(session: Session, now: datetime, skip: Iterable[int] = ()) -> SlaClockRow | None:
    """Lock the clock with the earliest due rung (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), or None."""
    q = select(SlaClockRow).where(SlaClockRow.next_rung_at <= now)
    skip = list(skip)
    if skip:
        q = q.where(SlaClockRow.id.notin_(skip))
    q = q.order_by(SlaClockRow.next_rung_at).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return session.scalar(q)


def fire_due_rungs(engine, limit: int = 500, stop: Callable[[], bool] | None = None) -> int:
    """Fire the due rungs of up to ``limit`` clocks, one transaction per clock; returns rungs fired.

    A clock whose evaluation fails is recorded as an incident and looked at again after
    five minutes, so one bad clock never blocks the others.
    """
    from engine.runtime import StepResult

    count = 0
    skip: set[int] = set()
    for _ in range(limit):
        if stop is not None and stop():
            break
        clock_id = instance_id = None
        try:
            with engine.Session() as session, session.begin():
                now = engine.now()
                row = claim_due_clock(session, now, skip)
                if row is None:
                    break
                clock_id, instance_id = row.id, row.instance_id
                new, events = fire_clock(session, row, now)
                audit_rows = append_events(session, events)
        except Exception as err:  # one broken clock must not stop the worker
            if clock_id is None:
                raise
            skip.add(clock_id)
            _park(engine, clock_id, err)
            continue
        count += len(new)
        if audit_rows:
            engine._after_commit(StepResult(instance_id, "running", 0, [], audit_rows))
    return count


def _park(engine, clock_id: int, err: Exception) -> None:
    log.error("escalating SLA clock %s failed: %s", clock_id, err)
    tb = traceback.format_exc()
    with engine.Session() as session, session.begin():
        session.execute(update(SlaClockRow).where(SlaClockRow.id == clock_id)
                        .values(next_rung_at=engine.now() + PARK_AFTER_ERROR))
    engine.record_incident("sla", f"sla_clock:{clock_id}", f"escalating SLA clock {clock_id} failed: {err}", tb=tb)


def next_rung_due_query():
    """SELECT of the earliest ``next_rung_at`` of any clock (index scan)."""
    return (select(SlaClockRow.next_rung_at).where(SlaClockRow.next_rung_at.is_not(None))
            .order_by(SlaClockRow.next_rung_at).limit(1))


def next_rung_due(session: Session) -> datetime | None:
    """Earliest ``next_rung_at`` of any clock."""
    return session.scalar(next_rung_due_query())


# ----------------------------------------------------------------------------- overdue


def overdue(session: Session, now: datetime | None = None, limit: int | None = None) -> list[dict]:
    """Overdue clocks, most overdue first: running past their deadline, or paused with the budget used up.

    Each entry names the clock, its owner, how late it is (``overdue_by_seconds``: wall
    clock since the deadline; ``overdue_counted_seconds``: counted time past the budget)
    and its rung: the last rung fired (``rung``) and the next one due (``next_rung``).
    """
    now = now or utcnow()
    q = (select(SlaClockRow).where(SlaClockRow.status == RUNNING, SlaClockRow.due_at <= now)
         .order_by(SlaClockRow.due_at))
    if limit:
        q = q.limit(limit)
    rows = list(session.scalars(q))
    for row in session.scalars(select(SlaClockRow).where(SlaClockRow.status == PAUSED)):
        if clock_of(row).remaining(now) < timedelta(0):
            rows.append(row)
    escalations: dict[int, list[SlaEscalation]] = {r.id: [] for r in rows}
    if rows:
        for e in session.scalars(select(SlaEscalation).where(SlaEscalation.clock_id.in_([r.id for r in rows]))
                                 .order_by(SlaEscalation.fired_at, SlaEscalation.id)):
            escalations[e.clock_id].append(e)
    out = []
    for row in rows:
        clock = clock_of(row)
        counted_late = -clock.remaining(now)
        late = now - row.due_at if row.status == RUNNING and row.due_at else counted_late
        fired = escalations[row.id]
        last = max(fired, key=lambda e: (e.at_fraction or 0.0, e.fired_at)) if fired else None
        upcoming = None
        if row.status == RUNNING:
            occ: dict[str, int] = {}
            for e in fired:
                occ[e.rung] = max(occ.get(e.rung, -1), e.occurrence)
            upcoming = next_rung(clock, row.ladder or [], occ)
        out.append({
            "subject_type": row.subject_type, "subject_key": row.subject_key, "clock": row.name,
            "instance_id": row.instance_id, "status": row.status, "owner": row.owner, "group": row.group_name,
            "priority": row.priority, "tier": row.tier, "policy": row.policy, "budget": row.budget,
            "due_at": row.due_at.isoformat() if row.due_at else None,
            "overdue_by_seconds": int(late.total_seconds()), "overdue_by": _fmt(late),
            "overdue_counted_seconds": int(counted_late.total_seconds()),
            "rung": last.rung if last else None, "rung_occurrence": last.occurrence if last else None,
            "rung_recipient": last.recipient if last else None,
            "rung_fired_at": last.fired_at.isoformat() if last else None,
            "escalations": [escalation_dict(e) for e in fired],
            "next_rung": upcoming[1] if upcoming else None,
            "next_rung_at": upcoming[0].isoformat() if upcoming else None,
        })
    out.sort(key=lambda d: -d["overdue_by_seconds"])
    return out


def _fmt(td: timedelta) -> str:
    """Lateness as '1 d 2 h 5 min'."""
    total = max(int(td.total_seconds()), 0)
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return (f"{d} d " if d else "") + f"{h} h {m} min"
