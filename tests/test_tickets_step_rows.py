"""A ticket host function reuses the row an earlier call of the same step wrote (``engine.tickets``,
"the step's last row") instead of reading it again: a whole ticket comes out the same as when every
call reads its row, and the reuse stops wherever the row may have changed since (ORM changes, a
renegotiated deadline, a rolled-back savepoint, another transaction)."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from datetime import timedelta

import pytest
import SpiffWorkflow.task
from sqlalchemy import inspect, select

import engine.tickets
from engine.clock import FrozenClock, use_clock
from engine.customers import CustomerContact, add_customer
from engine.models import OutboxMessage
from engine.runtime import Careflow
from engine.sla import SlaClockRow
from engine.step import Step, activate, deactivate
from engine.tickets import (
    Ticket,
    TicketEvent,
    extend_deadline_in,
    register_ticket_in,
    ticket_view,
    update_ticket_in,
)

from ticket_helpers import (
    CS,
    T0,
    TICKET_BPMN,
    TS,
    Flow,
    classification,
    diagnosis,
    intake,
    onsite,
    remote,
    revisit,
    risk_extend,
    sh,
    utc,
    visit_plan,
)

MIN = timedelta(minutes=1)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REVISIT_REQUEST = re.compile(r'"revisit_request": \d+')


# -- a whole ticket, reusing and reading ------------------------------------------------------------

def _registry_customer(cf, clock) -> int:
    with cf.Session() as s, s.begin():
        return add_customer(s, {"customer_type": "enterprise", "name": "南京金陵建设工程有限公司",
                                "credit_code": "91320106135792463Q", "phone": "025-84561234",
                                "annual_spend": 520000}, pm=cf.pm, actor="test", now=clock.now()).id


def _ticket_life(settings, monkeypatch, customer_id: int | None, first_task_id: int) -> tuple[int, str]:
    """A complex case for a registry customer: classified, renegotiated, fixed on site, reopened for a low
    rating, fixed remotely and closed. Returns the instance id and the ticket number."""
    ids = itertools.count(first_task_id)
    monkeypatch.setattr(SpiffWorkflow.task, "uuid4", lambda: uuid.UUID(int=next(ids)))
    clock = FrozenClock(T0)
    cf = Careflow(settings, clock=clock)
    try:
        with use_clock(clock):
            cf.deploy([TICKET_BPMN], author="test")
            if customer_id is None:
                customer_id = _registry_customer(cf, clock)
            f = Flow(cf, clock).start()
            data = intake(T0, complex=True, type="other", priority="general")
            data["intake"]["customer"] = {"customer_type": "enterprise", "name": "金陵建设",
                                          "customer_id": str(customer_id), "phone": "025-84561234"}
            f.do("ut_intake", CS, data, "zhang.wei", after=5 * MIN)
            # registers the ticket and starts the diagnosis in one step
            f.do("ut_classify", TS, classification("product_fault", "important"), "liu.yang", after=20 * MIN)
            f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 40)), "liu.yang", after=20 * MIN)
            f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11), solved=False), "liu.yang", after=timedelta(hours=1))
            assert f.fire(sh(2026, 11, 24, 4, 15)) == 1  # the deadline warning
            f.do("ut_deadline_risk", TS, risk_extend(sh(2026, 11, 24, 4, 20), sh(2026, 11, 25, 18)), "liu.yang",
                 after=5 * MIN)
            f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 25, 10)), "liu.yang", after=timedelta(hours=4))
            # resolved and waiting for the revisit in one step
            f.do("ut_onsite", TS, onsite(sh(2026, 11, 25, 10), sh(2026, 11, 25, 12)), "liu.yang",
                 after=timedelta(hours=28))
            # a low rating reopens: the reopening and the next round's diagnosis in one step
            f.do("ut_revisit", CS, revisit(sh(2026, 11, 26, 10), overall=2), "wang.fang", after=timedelta(hours=22))
            f.do("ut_diagnose", TS, diagnosis(f.now()), "liu.yang", after=20 * MIN)
            f.do("ut_remote", TS, remote(f.now() + 30 * MIN), "liu.yang", after=30 * MIN)
            f.do("ut_revisit", CS, revisit(sh(2026, 11, 27, 10)), "wang.fang", after=timedelta(hours=20))
            t = f.ticket()
            assert (t.status, t.round, t.reopen_count) == ("closed", 2, 1)
            return f.instance_id, t.number
    finally:
        cf.close()


def _everything(cf: Careflow, instance_id: int, number: str, first_task_id: int) -> dict:
    """The rows the ticket left, with what differs between two tickets of the same life made equal."""
    def plain(obj) -> object:
        text = json.dumps(obj, default=str, sort_keys=True, ensure_ascii=False).replace(number, "<number>")
        text = REVISIT_REQUEST.sub('"revisit_request": "<id>"', text)  # the second ticket's request is the second
        return json.loads(UUID.sub(lambda m: str(uuid.UUID(m.group(0)).int - first_task_id), text))

    def columns(row, *leave_out: str) -> dict:
        return {a.key: getattr(row, a.key) for a in inspect(row).mapper.column_attrs
                if a.key not in ("id", *leave_out)}

    with cf.Session() as s:
        return plain({
            "ticket": columns(s.scalar(select(Ticket).where(Ticket.number == number)), "instance_id"),
            "events": [columns(e) for e in s.scalars(select(TicketEvent).where(TicketEvent.number == number)
                                                     .order_by(TicketEvent.id))],
            "clocks": [columns(c, "instance_id") for c in s.scalars(
                select(SlaClockRow).where(SlaClockRow.subject_key.startswith(number)).order_by(SlaClockRow.id))],
            "contacts": [columns(c, "instance_id") for c in s.scalars(
                select(CustomerContact).where(CustomerContact.instance_id == instance_id)
                .order_by(CustomerContact.id))],
            "audit": [{k: v for k, v in a.items() if k not in ("seq", "hash", "prev_hash", "instance_id")}
                      for a in cf.audit(instance_id)],
            "outbox": [(m.topic, m.recipient, m.payload) for m in s.scalars(
                select(OutboxMessage).where(OutboxMessage.instance_id == instance_id).order_by(OutboxMessage.id))],
            "data": cf.show(instance_id)["data"],
        })


def test_a_ticket_comes_out_the_same_when_every_call_reads_its_row(settings, monkeypatch):
    take = engine.tickets._take_step_row
    reused = []

    def counting(step, session, number):
        row = take(step, session, number)
        reused.append(row is not None)
        return row

    monkeypatch.setattr(engine.tickets, "_take_step_row", counting)
    reusing_id, reusing_number = _ticket_life(settings, monkeypatch, None, 1)
    assert sum(reused) >= 3  # after the registration, the resolution and the reopening
    cf = Careflow(settings)
    try:
        with cf.Session() as s:
            customer_id = int(s.scalar(select(Ticket.customer_id).where(Ticket.number == reusing_number)))
        monkeypatch.setattr(engine.tickets, "_take_step_row",
                            lambda step, session, number: take(step, session, number) and None)
        reading_id, reading_number = _ticket_life(settings, monkeypatch, customer_id, 10**9)
        assert reading_number != reusing_number
        reusing = _everything(cf, reusing_id, reusing_number, 1)
        reading = _everything(cf, reading_id, reading_number, 10**9)
    finally:
        cf.close()
    assert len(reusing["events"]) > 10 and len(reusing["contacts"]) >= 3 and len(reusing["audit"]) > 50
    for part in reusing:
        assert reusing[part] == reading[part], part


# -- where the reuse stops -------------------------------------------------------------------------

class _InStep:
    """A session with a step running on it, as a host function sees it."""

    def __init__(self, cf: Careflow, now) -> None:
        self.cf, self.now = cf, now

    def __enter__(self):
        self.session = self.cf.Session()
        self.session.begin()
        self.token = activate(Step(session=self.session, now=self.now, actor="li.lei", cause="user"))
        return self.session

    def __exit__(self, kind, *rest) -> None:
        deactivate(self.token)
        if kind is None:
            self.session.commit()
        self.session.close()


def _register(cf, s) -> str:
    return register_ticket_in(s, intake(T0 - timedelta(minutes=5)), pm=cf.pm, now=T0, actor="zhang.wei")["number"]


def _update(cf, s, number: str, **facts) -> dict:
    return update_ticket_in(s, number, pm=cf.pm, now=T0 + 10 * MIN, actor="li.lei", **facts)


def _stored(cf, number: str) -> Ticket:
    with cf.Session() as s:
        return s.scalar(select(Ticket).where(Ticket.number == number))


def test_orm_changes_in_the_step_are_read_not_overwritten(cf):
    with _InStep(cf, T0) as s:
        number = _register(cf, s)
        ticket = s.scalar(select(Ticket).where(Ticket.number == number))
        ticket.facts = {**ticket.facts, "note": "kept"}  # pending until the update flushes it
        ticket.engineer = "wang.fang"
        view = _update(cf, s, number, status="diagnosing", round=1, channel_note="回电 / called back")
        assert view == ticket_view(ticket)
    row = _stored(cf, number)
    assert row.facts == {"note": "kept", "channel_note": "回电 / called back"}
    assert (row.engineer, row.status) == ("wang.fang", "diagnosing")


def test_a_renegotiated_deadline_is_read_by_the_next_update(cf):
    new_due = T0 + timedelta(days=2)
    with _InStep(cf, T0) as s:
        number = _register(cf, s)
        _update(cf, s, number, status="diagnosing", round=1)
        extend_deadline_in(s, number, "solution", new_due.isoformat(), "备件调货 / parts on the way",
                           now=T0 + 5 * MIN, actor="li.lei")
        view = _update(cf, s, number, status="remote", round=1)
    assert view["solution_due"] == utc(new_due).isoformat() == ticket_view(_stored(cf, number))["solution_due"]


def test_a_rolled_back_savepoint_is_not_taken_for_the_row(cf):
    with _InStep(cf, T0) as s:
        number = _register(cf, s)
        with s.begin_nested() as savepoint:
            _update(cf, s, number, status="diagnosing", round=1, engineer="wang.fang", note="rolled back")
            savepoint.rollback()
        view = _update(cf, s, number, status="remote", round=1, extra="x")
        assert view["status"] == "remote"
    row = _stored(cf, number)
    assert (row.status, row.engineer, row.facts) == ("remote", "li.lei", {"extra": "x"})
    with cf.Session() as s:
        assert [e.status for e in s.scalars(select(TicketEvent).where(TicketEvent.number == number)
                                            .order_by(TicketEvent.id))] == ["open", "remote"]


def test_the_next_step_reads_the_row(cf):
    with _InStep(cf, T0) as s:
        number = _register(cf, s)
        _update(cf, s, number, status="diagnosing", round=1)
    with cf.Session() as s, s.begin():  # another transaction changes the row between the steps
        s.scalar(select(Ticket).where(Ticket.number == number)).facts = {"note": "from elsewhere"}
    with _InStep(cf, T0 + MIN) as s:
        _update(cf, s, number, status="remote", round=1, extra="x")
    assert _stored(cf, number).facts == {"note": "from elsewhere", "extra": "x"}


def test_a_failed_update_leaves_no_row_behind(cf):
    with _InStep(cf, T0) as s:
        number = _register(cf, s)
        with pytest.raises(engine.tickets.TicketError, match="spare_parts must be a list"):
            _update(cf, s, number, status="diagnosing", round=1, spare_parts="not a list")
        assert number not in engine.tickets._step_for(s).extras[engine.tickets._STEP_ROWS]
        view = _update(cf, s, number, status="diagnosing", round=1)
    assert view == ticket_view(_stored(cf, number))


def test_values_as_the_database_reads_them(cf):
    # received when registered (``now``, in Beijing time) and a fact that JSON reads back as a list: the
    # next call of the step sees them as a read would (UTC, list), so its view and its writes are a read's
    with _InStep(cf, T0) as s:
        data = intake(T0 - timedelta(minutes=5))["intake"]
        data.pop("received_at")
        assert T0.utcoffset() == timedelta(hours=8)
        number = register_ticket_in(s, {**data, "classification": {"steps": ("a", "b")}}, pm=cf.pm, now=T0,
                                    actor="zhang.wei")["number"]
        view = _update(cf, s, number, status="diagnosing", round=1, note="x")
    stored = _stored(cf, number)
    assert view == ticket_view(stored)
    assert view["received_at"].endswith("+00:00")
    assert stored.facts == {"classification": {"steps": ["a", "b"]}, "note": "x"}


def test_the_callers_objects_changed_later_do_not_reach_the_row(cf):
    # a script may change the classification it registered the ticket with; the row keeps what was written
    classification = {"type": "product_fault", "assessment": "first look"}
    with _InStep(cf, T0) as s:
        data = intake(T0 - timedelta(minutes=5))["intake"]
        number = register_ticket_in(s, {**data, "classification": classification}, pm=cf.pm, now=T0,
                                    actor="zhang.wei")["number"]
        classification["assessment"] = "changed in the script afterwards"
        _update(cf, s, number, status="diagnosing", round=1, note="x")
    assert _stored(cf, number).facts == {"classification": {"type": "product_fault", "assessment": "first look"},
                                         "note": "x"}
