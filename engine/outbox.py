"""Delivering the outbox: notifications leave only after the step that wrote them committed.

A step writes ``outbox`` rows in its own transaction (``notify()`` in a script). This
module sends them, at least once, through the channel plugins:

1. **Claim** (one short transaction): due rows (``pending``, or ``sending`` whose lease
   ran out because a worker died) get ``status='sending'``, ``attempts + 1`` and a lease
   (``next_attempt_at = now + lease``). On PostgreSQL the rows are selected ``FOR UPDATE
   SKIP LOCKED``, so several workers share the work and never wait for each other; on
   SQLite the ``BEGIN IMMEDIATE`` transaction makes the claim exclusive. No transaction is
   open while anything is sent, so steps never wait on a slow mail server.
2. **Send** (no transaction): each claimed row in its own worker thread with a deadline
   (the channel's ``timeout``, else ``CAREFLOW_CHANNEL_TIMEOUT``): recipients resolved
   (hook ``careflow_resolve_recipient``), text rendered (``careflow_message_templates``),
   ``channel.send(message)`` with the row's ``idempotency_key``. A thread past its
   deadline is abandoned (a hanging channel costs one thread, never the other rows).
   A row that names no channel is *fanned out* instead: one child row per enabled
   channel that ``accepts`` it, each then delivered and retried on its own.
3. **Record** (one short transaction): ``sent``; or back to ``pending`` with exponential
   backoff and jitter; or, after ``CAREFLOW_OUTBOX_MAX_ATTEMPTS`` attempts or a permanent
   failure, ``incident`` plus an ``incidents`` row with the error and traceback. A row
   whose lease was taken over meanwhile (``attempts`` changed) is left alone.

An operator lists incidents (``careflow incidents``) and retries one
(``retry_incident``): the row gets a fresh set of attempts and the retry is audited.
Receivers de-duplicate by the idempotency key (webhook ``Idempotency-Key`` header,
e-mail ``Message-ID``): a worker that dies after sending but before recording sends again.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from engine.audit import append_events, entry_to_dict
from engine.errors import CareflowError, Conflict, NotFound
from engine.models import Incident, OutboxMessage
from engine.step import Step

log = logging.getLogger("careflow.outbox")

PENDING, SENDING, SENT, INCIDENT, FANNED_OUT = "pending", "sending", "sent", "incident", "fanned_out"
KEY_MAX = 200
BATCH_WAVES = 8  # rows claimed per transaction: this many rounds of `concurrency` sends


@dataclass(frozen=True)
class OutboxPolicy:
    """Retry and timeout policy of the delivery worker (environment variables in brackets)."""

    max_attempts: int = 5  # CAREFLOW_OUTBOX_MAX_ATTEMPTS
    backoff_s: float = 30.0  # CAREFLOW_OUTBOX_BACKOFF: delay after the first failure
    backoff_max_s: float = 3600.0  # CAREFLOW_OUTBOX_BACKOFF_MAX
    channel_timeout_s: float = 10.0  # CAREFLOW_CHANNEL_TIMEOUT (a channel's own ``timeout`` wins)
    concurrency: int = 8  # CAREFLOW_OUTBOX_CONCURRENCY: rows sent at the same time

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OutboxPolicy:
        """The policy from environment variables; a bad value is a ``CareflowError`` naming it."""
        env = os.environ if environ is None else environ

        def num(name: str, default: float, minimum: float, integer: bool = False) -> Any:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                raise CareflowError(f"{name}={raw!r} is not {'a whole number' if integer else 'a number'}") from None
            if value < minimum:
                raise CareflowError(f"{name}={raw!r} must be at least {minimum:g}")
            return value

        return cls(max_attempts=num("CAREFLOW_OUTBOX_MAX_ATTEMPTS", 5, 1, integer=True),
                   backoff_s=num("CAREFLOW_OUTBOX_BACKOFF", 30.0, 0),
                   backoff_max_s=num("CAREFLOW_OUTBOX_BACKOFF_MAX", 3600.0, 0),
                   channel_timeout_s=num("CAREFLOW_CHANNEL_TIMEOUT", 10.0, 0.01),
                   concurrency=num("CAREFLOW_OUTBOX_CONCURRENCY", 8, 1, integer=True))

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """Backoff after ``attempts`` failed attempts: base × 2^(attempts−1), capped, with
        "equal jitter" (between half and all of it) so retries of many rows spread out."""
        full = min(self.backoff_max_s, self.backoff_s * 2 ** max(attempts - 1, 0))
        return timedelta(seconds=full / 2 + (rng or random).uniform(0, full / 2))


class DeliveryReport(int):
    """How many rows ``deliver_due`` handled (it is that number), with the outcome counts."""

    sent: int
    retrying: int
    incidents: int
    fanned_out: int

    def __new__(cls, sent: int = 0, retrying: int = 0, incidents: int = 0, fanned_out: int = 0) -> DeliveryReport:
        report = super().__new__(cls, sent + retrying + incidents + fanned_out)
        report.sent, report.retrying, report.incidents, report.fanned_out = sent, retrying, incidents, fanned_out
        return report

    def summary(self) -> str:
        """One line for people."""
        return (f"{int(self)} handled: {self.sent} sent, {self.fanned_out} fanned out to channels, "
                f"{self.retrying} to retry, {self.incidents} incidents")


@dataclass
class _Job:
    id: int
    attempts: int
    key: str
    topic: str
    channel: str | None
    recipient: str | None
    payload: Any
    instance_id: int | None
    created_at: datetime


@dataclass
class _Outcome:
    ok: bool = False
    fanout: list[str] | None = None
    error: str | None = None
    tb: str | None = None
    permanent: bool = False
    done: bool = False
    extra: dict = field(default_factory=dict)


def _is_pg(engine: Any) -> bool:
    return engine.db.dialect.name == "postgresql"


def channels_of(pm: Any) -> dict[str, Any]:
    """Enabled channels by name; on a name clash the first one called (a plugin before the
    shipped ones) wins."""
    out: dict[str, Any] = {}
    for contributed in pm.hook.careflow_notification_channels():
        for channel in contributed or []:
            name = getattr(channel, "name", None)
            if isinstance(name, str) and name and callable(getattr(channel, "send", None)):
                out.setdefault(name, channel)
            else:
                log.warning("ignoring channel %r: it needs a name and a send(message) method", channel)
    return out


def deliver_due(engine: Any, now: datetime | None = None, limit: int = 100,
                policy: OutboxPolicy | None = None) -> DeliveryReport:
    """Deliver (or retry) up to ``limit`` due outbox rows; returns how many were handled.

    ``now`` fixes the time for tests and simulations (default: the engine's clock).
    """
    from plugins.isolation import incidents_to
    from plugins.messages import collect_templates

    policy = policy or OutboxPolicy.from_env()
    counts = {"sent": 0, "retrying": 0, "incidents": 0, "fanned_out": 0}
    handled = 0
    with incidents_to(engine):
        channels = channels_of(engine.pm)
        templates = collect_templates(engine.pm)
        longest = max([_timeout(c, policy) for c in channels.values()] + [policy.channel_timeout_s])
        while handled < limit:
            size = min(limit - handled, policy.concurrency * BATCH_WAVES)
            waves = -(-size // policy.concurrency)
            # the lease outlasts every wave of the batch, so no other worker takes a row we still send
            lease = timedelta(seconds=waves * longest + 60)
            jobs = _claim(engine, now or engine.now(), size, lease)
            if not jobs:
                break
            outcomes: list[_Outcome] = []
            for i in range(0, len(jobs), policy.concurrency):  # at most `concurrency` sends at a time
                outcomes += _send_all(engine, jobs[i:i + policy.concurrency], channels, templates, policy)
            _record(engine, jobs, outcomes, now or engine.now(), policy, counts)
            handled += len(jobs)
    return DeliveryReport(**counts)


def next_delivery_due(engine: Any) -> datetime | None:
    """When the next outbox row is due (or its lease runs out); None when nothing waits."""
    with engine.Session() as session:
        return session.scalar(select(func.min(OutboxMessage.next_attempt_at))
                              .where(OutboxMessage.status.in_((PENDING, SENDING))))


def _claim(engine: Any, now: datetime, n: int, lease: timedelta) -> list[_Job]:
    with engine.Session() as session, session.begin():
        q = (select(OutboxMessage)
             .where(OutboxMessage.status.in_((PENDING, SENDING)), OutboxMessage.next_attempt_at <= now)
             .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(n))
        if _is_pg(engine):
            q = q.with_for_update(skip_locked=True)
        jobs = []
        for row in session.scalars(q):
            row.attempts = (row.attempts or 0) + 1
            row.status = SENDING
            row.next_attempt_at = now + lease
            jobs.append(_Job(row.id, row.attempts, row.idempotency_key, row.topic, row.channel, row.recipient,
                             row.payload, row.instance_id, row.created_at))
        return jobs


def _timeout(channel: Any, policy: OutboxPolicy) -> float:
    value = getattr(channel, "timeout", None)
    return float(value) if isinstance(value, int | float) and value > 0 else policy.channel_timeout_s


def _send_all(engine: Any, jobs: list[_Job], channels: dict[str, Any], templates: dict,
              policy: OutboxPolicy) -> list[_Outcome]:
    outcomes = [_Outcome() for _ in jobs]
    threads: list[tuple[threading.Thread, float, float] | None] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if job.channel is not None and job.channel not in channels:
            outcome.error = (f"no channel named {job.channel!r} is enabled (enabled: "
                             f"{', '.join(sorted(channels)) or 'none'}); configure it, then retry this incident")
            outcome.permanent = outcome.done = True
            threads.append(None)
            continue
        timeout = _timeout(channels[job.channel], policy) if job.channel else policy.channel_timeout_s
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(_deliver_one, engine, job, channels, templates, outcome),
                                  name=f"careflow-deliver-{job.id}", daemon=True)
        thread.start()
        threads.append((thread, time.monotonic() + timeout, timeout))
    for entry, outcome in zip(threads, outcomes, strict=True):
        if entry is None:
            continue
        thread, deadline, timeout = entry
        thread.join(max(0.0, deadline - time.monotonic()))
        if not outcome.done:  # abandoned: a late success is a duplicate the idempotency key absorbs
            outcome.ok, outcome.done = False, True
            outcome.error = f"no answer within {timeout:g} s (channel timeout); the attempt was abandoned"
            frame = _thread_frame(thread)
            outcome.tb = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else None
    return outcomes


def _thread_frame(thread: threading.Thread) -> Any:
    """The current frame of a running thread (to show where a hung channel is stuck)."""
    return sys._current_frames().get(thread.ident) if thread.ident else None


def _deliver_one(engine: Any, job: _Job, channels: dict[str, Any], templates: dict, outcome: _Outcome) -> None:
    from plugins.channels.base import PermanentDeliveryError
    from plugins.isolation import about_instance
    from plugins.messages import render

    result = _Outcome()
    try:
        with about_instance(job.instance_id):
            message = build_message(engine, job, templates, render)
        if job.channel is None:
            accepting = [name for name, ch in channels.items() if _accepts(ch, message)]
            if not accepting:
                raise PermanentDeliveryError(
                    f"no enabled channel accepts this message (recipient {job.recipient!r} resolved to "
                    f"{len(message['to'])} address(es); channels: {', '.join(sorted(channels)) or 'none'})")
            result.fanout = accepting
        else:
            channels[job.channel].send(message)
        result.ok = True
    except PermanentDeliveryError as err:
        result.error, result.tb, result.permanent = str(err) or type(err).__name__, traceback.format_exc(), True
    except Exception as err:
        result.error, result.tb = f"{type(err).__name__}: {err}", traceback.format_exc()
    if not outcome.done:  # the waiting side may have given up on us already
        outcome.ok, outcome.fanout, outcome.error, outcome.tb, outcome.permanent = (
            result.ok, result.fanout, result.error, result.tb, result.permanent)
        outcome.done = True


def _accepts(channel: Any, message: dict) -> bool:
    accepts = getattr(channel, "accepts", None)
    if accepts is None:
        return True
    try:
        return bool(accepts(message))
    except Exception:
        log.exception("channel %s: accepts() failed; not using it for this message", getattr(channel, "name", "?"))
        return False


def build_message(engine: Any, job: _Job, templates: dict, render: Any) -> dict:
    """The message a channel gets: the row, its resolved addresses and its rendered text."""
    payload = job.payload if isinstance(job.payload, dict) else {"value": job.payload}
    message: dict[str, Any] = {
        "id": job.id, "idempotency_key": job.key, "topic": job.topic, "channel": job.channel,
        "recipient": job.recipient, "payload": payload, "instance_id": job.instance_id,
        "created_at": job.created_at.isoformat() if job.created_at else None, "attempt": job.attempts,
    }
    to = engine.pm.hook.careflow_resolve_recipient(careflow=engine, recipient=job.recipient, message=dict(message))
    message["to"] = [a for a in (to or []) if isinstance(a, dict)]
    message.update(render(templates, job.topic, payload))
    return message


def _child_key(key: str, channel: str) -> str:
    candidate = f"{key}#{channel}"
    if len(candidate) <= KEY_MAX:
        return candidate
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"{key[:KEY_MAX - 26 - len(channel[:60])]}~{digest}#{channel[:60]}"


def _record(engine: Any, jobs: list[_Job], outcomes: list[_Outcome], now: datetime, policy: OutboxPolicy,
            counts: dict[str, int]) -> None:
    with engine.Session() as session, session.begin():
        q = select(OutboxMessage).where(OutboxMessage.id.in_([j.id for j in jobs]))
        if _is_pg(engine):
            q = q.with_for_update()
        rows = {r.id: r for r in session.scalars(q)}
        wanted = {_child_key(rows[j.id].idempotency_key, name): None
                  for j, o in zip(jobs, outcomes, strict=True) if o.ok and o.fanout and j.id in rows
                  for name in o.fanout}
        existing = set(session.scalars(select(OutboxMessage.idempotency_key)
                                       .where(OutboxMessage.idempotency_key.in_(list(wanted))))) if wanted else set()
        for job, outcome in zip(jobs, outcomes, strict=True):
            row = rows.get(job.id)
            if row is None or row.status != SENDING or row.attempts != job.attempts:
                continue  # another worker took the row over after our lease ran out
            if outcome.ok and outcome.fanout is not None:
                for name in outcome.fanout:
                    key = _child_key(row.idempotency_key, name)
                    if key not in existing:
                        session.add(OutboxMessage(idempotency_key=key, instance_id=row.instance_id, topic=row.topic,
                                                  channel=name, recipient=row.recipient, payload=row.payload,
                                                  status=PENDING, attempts=0, next_attempt_at=now,
                                                  created_at=row.created_at))
                row.status, row.delivered_at, row.last_error = FANNED_OUT, now, None
                counts["fanned_out"] += 1
            elif outcome.ok:
                row.status, row.delivered_at, row.last_error = SENT, now, None
                counts["sent"] += 1
            elif outcome.permanent or row.attempts >= policy.max_attempts:
                row.status, row.last_error = INCIDENT, outcome.error
                why = "permanent failure" if outcome.permanent else f"{row.attempts} attempts"
                session.add(Incident(
                    kind="delivery", source=row.channel or "outbox", outbox_id=row.id, instance_id=row.instance_id,
                    message=(f"could not deliver '{row.topic}' to {row.recipient or '-'} via "
                             f"{row.channel or 'any channel'} ({why}): {outcome.error}"),
                    traceback=outcome.tb, created_at=now))
                counts["incidents"] += 1
                log.warning("outbox %s: incident after %s: %s", row.id, why, outcome.error)
            else:
                row.status, row.last_error = PENDING, outcome.error
                row.next_attempt_at = now + policy.delay(row.attempts)
                counts["retrying"] += 1
                log.info("outbox %s: attempt %s failed (%s); next at %s", row.id, row.attempts, outcome.error,
                         row.next_attempt_at.isoformat())


# ------------------------------------------------------------------------------ incidents


def incident_dict(incident: Incident, row: OutboxMessage | None = None) -> dict:
    """JSON-ready view of an incident (with its outbox row's essentials when it has one)."""
    out = {
        "id": incident.id, "kind": incident.kind, "source": incident.source, "message": incident.message,
        "instance_id": incident.instance_id, "outbox_id": incident.outbox_id,
        "created_at": incident.created_at.isoformat() if incident.created_at else None,
        "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        "resolved_by": incident.resolved_by,
        "retryable": incident.resolved_at is None and incident.kind == "delivery" and incident.outbox_id is not None,
        "traceback": incident.traceback,
    }
    if row is not None:
        out["outbox"] = {"topic": row.topic, "channel": row.channel, "recipient": row.recipient,
                         "status": row.status, "attempts": row.attempts, "last_error": row.last_error,
                         "idempotency_key": row.idempotency_key}
    return out


def list_incidents(engine: Any, include_resolved: bool = False, limit: int | None = None) -> list[dict]:
    """Incidents, oldest first; open ones only unless ``include_resolved``."""
    with engine.Session() as session:
        q = select(Incident).order_by(Incident.id)
        if not include_resolved:
            q = q.where(Incident.resolved_at.is_(None))
        if limit:
            q = q.limit(limit)
        incidents = list(session.scalars(q))
        ids = [i.outbox_id for i in incidents if i.outbox_id is not None]
        rows = {r.id: r for r in session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(ids)))} if ids else {}
        return [incident_dict(i, rows.get(i.outbox_id)) for i in incidents]


def get_incident(engine: Any, incident_id: int) -> dict:
    """One incident by id (``NotFound`` if there is none)."""
    with engine.Session() as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id} (careflow incidents --all lists them)")
        row = session.get(OutboxMessage, incident.outbox_id) if incident.outbox_id is not None else None
        return incident_dict(incident, row)


def retry_incident(engine: Any, incident_id: int, user: str) -> dict:
    """Send a delivery incident's message again: the row is due now with a fresh set of
    attempts, the incident is resolved by ``user``, and the retry is audited.

    ``NotFound`` for an unknown id; ``Conflict`` for a resolved incident or one that is not
    about a delivery (a plugin or instance failure has nothing to send again).
    """
    return _close_incident(engine, incident_id, user, retry=True)


def resolve_incident(engine: Any, incident_id: int, user: str) -> dict:
    """Mark an incident as dealt with by ``user`` (audited); a delivery is not retried."""
    return _close_incident(engine, incident_id, user, retry=False)


def _close_incident(engine: Any, incident_id: int, user: str, retry: bool) -> dict:
    if not user or not str(user).strip():
        raise CareflowError("say who you are (--user): incident actions are audited")
    now = engine.now()
    with engine.Session() as session, session.begin():
        incident = session.get(Incident, incident_id, with_for_update=_is_pg(engine) or None)
        if incident is None:
            raise NotFound(f"no incident {incident_id} (careflow incidents --all lists them)")
        if incident.resolved_at is not None:
            raise Conflict(f"incident {incident_id} was already resolved by {incident.resolved_by or '?'} "
                           f"at {incident.resolved_at:%Y-%m-%d %H:%M} UTC")
        row = None
        if retry:
            if incident.kind != "delivery" or incident.outbox_id is None:
                raise Conflict(f"incident {incident_id} is a {incident.kind} incident, not a failed delivery: "
                               f"there is nothing to send again; fix the cause, then "
                               f"`careflow incidents resolve {incident_id}`")
            row = session.get(OutboxMessage, incident.outbox_id, with_for_update=_is_pg(engine) or None)
            if row is None:
                raise NotFound(f"the outbox message {incident.outbox_id} of incident {incident_id} no longer exists")
            if row.status in (PENDING, SENDING):
                raise Conflict(f"outbox message {row.id} is already {row.status} again; it will be delivered")
            if row.status != SENT:
                row.status, row.attempts, row.next_attempt_at = PENDING, 0, now
        incident.resolved_at, incident.resolved_by = now, user
        step = Step(session, now, actor=user, cause="user", instance_id=incident.instance_id)
        step.audit("delivery_retried" if retry else "incident_resolved",
                   details={"incident_id": incident.id, "kind": incident.kind, "source": incident.source,
                            "outbox_id": incident.outbox_id,
                            "topic": row.topic if row is not None else None,
                            "channel": row.channel if row is not None else None})
        audit_rows = append_events(session, step.events)
        session.flush()
        result = incident_dict(incident, row)
        events = [entry_to_dict(r) for r in audit_rows]
    from plugins.isolation import dispatch_audit_events

    dispatch_audit_events(engine, events)
    return result
