"""Escalation ladders: each rung once per clock, recipients from the org table, repeats,
pauses and priority changes; the fixture ticket and complaint processes escalating in
simulated time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from engine.clock import FrozenClock, use_clock
from engine.escalation import fire_due_rungs, normalize_ladder, overdue
from engine.models import AuditEntry, Incident, OutboxMessage
from engine.sla import (
    SlaClockRow,
    SlaError,
    SlaEscalation,
    change_priority,
    explain,
    open_clocks,
    pause_clocks,
    resume_clocks,
    set_owner,
    stop_clock,
)
from engine.worker import Worker
from plugins.hookspecs import hookimpl

from sla_helpers import add_org, count_audit, deploy, iso, register_sla_functions, sh

ORG = {"alice": "bob", "bob": "carol", "carol": None, "dave": "erin", "erin": None}


def _open(cf, key, priority="urgent", owner="alice", subject_type="ticket"):
    with cf.Session() as s, s.begin():
        return open_clocks(s, subject_type=subject_type, subject_key=key, instance_id=None, priority=priority,
                           ticket_type=None, tier=None, owner=owner, group="technical_support",
                           started_at=cf.now(), pm=cf.pm)


def _do(cf, fn, *args, **kwargs):
    with cf.Session() as s, s.begin():
        return fn(s, *args, **kwargs)


def _fired(cf, key=None) -> list[tuple[str, str, int, str | None]]:
    """(clock, rung, occurrence, recipient) of every fired rung, in firing order."""
    with cf.Session() as s:
        q = (select(SlaClockRow.name, SlaEscalation.rung, SlaEscalation.occurrence, SlaEscalation.recipient)
             .join(SlaClockRow, SlaClockRow.id == SlaEscalation.clock_id).order_by(SlaEscalation.id))
        if key:
            q = q.where(SlaClockRow.subject_key == key)
        return [tuple(r) for r in s.execute(q)]


@pytest.fixture
def clock():
    c = FrozenClock(sh(2026, 11, 23, 9))  # a Monday
    with use_clock(c):
        yield c


def test_each_rung_fires_exactly_once_to_owner_supervisor_and_manager(cf, clock):
    add_org(cf, ORG, clock.now())
    _open(cf, "SN1")  # urgent: first response PT2H, solution PT4H
    timeline = [
        ((9, 59), []),
        ((10, 0), [("first_response", "remind_owner", 0, "alice")]),
        ((10, 30), []),
        ((11, 0), [("first_response", "alert_supervisor", 0, "bob"), ("solution", "remind_owner", 0, "alice")]),
        ((12, 0), [("first_response", "alert_manager", 0, "carol")]),
        ((13, 0), [("solution", "alert_supervisor", 0, "bob")]),
        ((15, 0), [("solution", "alert_manager", 0, "carol")]),
    ]
    expected = []
    for (h, m), new in timeline:
        clock.set(sh(2026, 11, 23, h, m))
        for _ in range(3):  # running the worker again fires nothing more
            fire_due_rungs(cf)
        expected += new
        assert sorted(_fired(cf)) == sorted(expected), f"at {h}:{m:02d}"
    clock.advance(timedelta(days=30))
    assert fire_due_rungs(cf) == 0

    with cf.Session() as s:
        messages = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        clocks = {r.id: r.name for r in s.scalars(select(SlaClockRow))}
        rows = s.scalars(select(SlaClockRow)).all()
        assert all(r.next_rung_at is None for r in rows)
    assert len(messages) == 6
    keys = {m.idempotency_key for m in messages}
    assert {f"sla:{cid}:{rung}:0" for cid in clocks for rung in ("remind_owner", "alert_supervisor",
                                                                  "alert_manager")} == keys
    sup = next(m for m in messages if m.payload["rung"] == "alert_supervisor" and m.payload["clock"] == "solution")
    assert (sup.topic, sup.recipient, sup.status) == ("sla_escalation", "bob", "pending")
    assert sup.payload["subject_key"] == "SN1" and sup.payload["resolved_via"] == "supervisor of alice"
    assert "hence due at 2026-11-23 13:00" in sup.payload["explanation_en"]
    assert "因此截止于 2026-11-23 13:00" in sup.payload["explanation_zh"]
    assert count_audit(cf, "sla_escalated") == 6
    with cf.Session() as s:
        audits = s.scalars(select(AuditEntry).where(AuditEntry.action == "sla_escalated")).all()
    assert {(a.actor, a.cause) for a in audits} == {("timer", "timer")}
    assert {a.details["outbox_key"] for a in audits} == keys


def test_three_working_day_ladder_across_a_weekend_in_simulated_time(cf, clock):
    add_org(cf, ORG, clock.now())
    clock.set(sh(2026, 11, 20, 15))  # Friday
    _open(cf, "SN1", priority="general")  # solution 3WD = 27 working hours
    moments = [  # 50 % = 13.5 h: Fri 3 + Mon 9 + Tue 1.5; 100 %: Wed 15:00; 150 %: Fri 27th 10:30
        (sh(2026, 11, 24, 10, 30), ("solution", "remind_owner", 0, "alice")),
        (sh(2026, 11, 25, 15), ("solution", "alert_supervisor", 0, "bob")),
        (sh(2026, 11, 27, 10, 30), ("solution", "alert_manager", 0, "carol")),
    ]
    for at, rung in moments:
        clock.set(at - timedelta(seconds=1))
        fire_due_rungs(cf)
        assert rung not in _fired(cf, "SN1")
        clock.set(at)
        fire_due_rungs(cf)
        assert rung in _fired(cf, "SN1")
    assert [r for r in _fired(cf, "SN1") if r[0] == "solution"] == [r for _, r in moments]


def test_the_unique_constraint_refuses_a_second_firing(cf, clock):
    _open(cf, "SN1")
    clock.set(sh(2026, 11, 23, 10))
    assert fire_due_rungs(cf) == 1
    with cf.Session() as s:
        first = s.scalars(select(SlaEscalation)).one()
        s.add(SlaEscalation(clock_id=first.clock_id, rung=first.rung, occurrence=first.occurrence, notify="owner",
                            recipient="alice", due_at=first.due_at, fired_at=clock.now(), outbox_key="dup"))
        with pytest.raises(IntegrityError):
            s.commit()


def test_recipients_fall_back_up_the_chain_and_to_the_supervisor_group(cf, clock):
    add_org(cf, {"zoe": None, "yan": "xia"}, clock.now())
    _open(cf, "NO-BOSS", owner="zoe")
    _open(cf, "NO-MANAGER", owner="yan")
    _open(cf, "NO-OWNER", owner=None)
    clock.set(sh(2026, 11, 23, 12))
    fire_due_rungs(cf)
    got = {(k, rung): who for k in ("NO-BOSS", "NO-MANAGER", "NO-OWNER")
           for (name, rung, _, who) in _fired(cf, k) if name == "first_response"}
    assert got == {
        ("NO-BOSS", "remind_owner"): "zoe", ("NO-BOSS", "alert_supervisor"): "supervisor",
        ("NO-BOSS", "alert_manager"): "supervisor",
        ("NO-MANAGER", "remind_owner"): "yan", ("NO-MANAGER", "alert_supervisor"): "xia",
        ("NO-MANAGER", "alert_manager"): "xia",
        ("NO-OWNER", "remind_owner"): "technical_support", ("NO-OWNER", "alert_supervisor"): "supervisor",
        ("NO-OWNER", "alert_manager"): "supervisor",
    }
    with cf.Session() as s:
        m = s.scalars(select(OutboxMessage).where(OutboxMessage.payload.is_not(None))).all()
    via = {(x.payload["subject_key"], x.payload["rung"]): x.payload["resolved_via"] for x in m}
    assert via[("NO-BOSS", "alert_supervisor")] == "supervisor group (zoe has no supervisor)"
    assert via[("NO-MANAGER", "alert_manager")] == "supervisor of yan (xia has no supervisor)"


def test_owner_change_redirects_later_rungs(cf, clock):
    add_org(cf, ORG, clock.now())
    _open(cf, "SN1")
    clock.set(sh(2026, 11, 23, 10))
    fire_due_rungs(cf)
    _do(cf, set_owner, "SN1", "dave")
    clock.set(sh(2026, 11, 23, 11))
    fire_due_rungs(cf)
    assert [(r, who) for name, r, _, who in _fired(cf) if name == "first_response"] == \
        [("remind_owner", "alice"), ("alert_supervisor", "erin")]


def test_repeating_reminders_fire_once_per_occurrence_and_collapse_missed_ones(cf, clock):
    class Nag:
        @hookimpl(tryfirst=True)
        def careflow_escalation_ladder(self, clock):
            if clock["name"] != "first_response":
                return []
            return [{"name": "nag_owner", "at_fraction": 1.0, "notify": "owner", "repeat_every": "PT30M",
                     "max_repeats": 3}]

    cf.pm.register(Nag(), name="nag")
    _open(cf, "SN1")  # first response due 11:00: nags at 11:00, 11:30, 12:00, 12:30
    clock.set(sh(2026, 11, 23, 11))
    fire_due_rungs(cf)
    clock.set(sh(2026, 11, 23, 11, 40))
    fire_due_rungs(cf)
    fire_due_rungs(cf)
    clock.set(sh(2026, 11, 23, 12, 45))  # the worker was down: 12:00 and 12:30 collapse into one
    fire_due_rungs(cf)
    clock.set(sh(2026, 11, 23, 18))
    fire_due_rungs(cf)
    nags = [(occ, who) for name, rung, occ, who in _fired(cf) if rung == "nag_owner"]
    assert nags == [(0, "alice"), (1, "alice"), (3, "alice")]
    with cf.Session() as s:
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "sla_escalated")).all()
    last = next(a for a in audit if a.details["rung"] == "nag_owner" and a.details["occurrence"] == 3)
    assert last.details["skipped_occurrences"] == 1
    assert last.details["rung_due_at"] == iso(sh(2026, 11, 23, 12, 30))


def test_a_paused_clock_does_not_escalate_and_resuming_moves_its_rungs(cf, clock):
    _open(cf, "SN1")
    clock.set(sh(2026, 11, 23, 9, 30))
    _do(cf, pause_clocks, "SN1", "waiting_for_parts", clock.now(), names=["solution"])
    clock.set(sh(2026, 11, 23, 12))
    fire_due_rungs(cf)
    assert [c for c, *_ in _fired(cf)] == ["first_response"] * 3
    _do(cf, resume_clocks, "SN1", clock.now())  # 2.5 h paused: solution 50 % moves from 11:00 to 13:30
    clock.set(sh(2026, 11, 23, 13, 29))
    fire_due_rungs(cf)
    assert not [c for c, *_ in _fired(cf) if c == "solution"]
    clock.set(sh(2026, 11, 23, 13, 30))
    fire_due_rungs(cf)
    assert [(c, r) for c, r, *_ in _fired(cf) if c == "solution"] == [("solution", "remind_owner")]


def test_priority_change_brings_rungs_forward_and_stopped_clocks_stay_quiet(cf, clock):
    _open(cf, "SN1", priority="general")  # first response PT24H
    clock.set(sh(2026, 11, 23, 9, 30))
    _do(cf, stop_clock, "SN1", "first_response", clock.now())
    clock.set(sh(2026, 11, 23, 11))
    assert fire_due_rungs(cf) == 0
    _do(cf, change_priority, "SN1", "urgent", clock.now(), cf.pm)  # solution PT4H: 50 % at 11:00 is due now
    assert fire_due_rungs(cf) == 1
    assert _fired(cf) == [("solution", "remind_owner", 0, "alice")]
    clock.set(sh(2026, 11, 24, 9))
    fire_due_rungs(cf)
    assert {c for c, *_ in _fired(cf)} == {"solution"}


def test_a_broken_clock_becomes_an_incident_and_does_not_block_the_others(cf, clock):
    _open(cf, "BROKEN")
    _open(cf, "FINE")
    with cf.Session() as s, s.begin():
        s.execute(update(SlaClockRow).where(SlaClockRow.subject_key == "BROKEN").values(budget="soon"))
    clock.set(sh(2026, 11, 23, 10))
    assert fire_due_rungs(cf) == 1
    assert _fired(cf, "FINE") == [("first_response", "remind_owner", 0, "alice")]
    with cf.Session() as s:
        incident = s.scalars(select(Incident)).one()
        parked = {r.name: r.next_rung_at for r in s.scalars(select(SlaClockRow)
                                                            .where(SlaClockRow.subject_key == "BROKEN"))}
    assert incident.kind == "sla" and "soon" in incident.message
    # the first-response clock broke and is parked for five minutes; the solution clock was not due yet
    assert parked == {"first_response": clock.now() + timedelta(minutes=5), "solution": sh(2026, 11, 23, 11)}


def test_ladder_validation():
    assert [r["name"] for r in normalize_ladder([[{"name": "b", "at_fraction": 1, "notify": "owner"}],
                                                 [{"name": "a", "at_fraction": 0.5, "notify": "owner"}]])] == ["a", "b"]
    with pytest.raises(SlaError, match="at_fraction"):
        normalize_ladder([[{"name": "x", "at_fraction": "half", "notify": "owner"}]])
    with pytest.raises(SlaError, match="notify"):
        normalize_ladder([[{"name": "x", "at_fraction": 0.5}]])
    with pytest.raises(SlaError, match="repeat_every"):
        normalize_ladder([[{"name": "x", "at_fraction": 0.5, "notify": "owner", "repeat_every": "often"}]])


# ----------------------------------------------------- the fixture processes, simulated


def _task(cf, instance_id, name):
    return next(t for t in cf.tasks(instance_id=instance_id) if t["name"] == name)


def _simulate(cf, clock, worker, until, actions):
    """Advance simulated time in 5-minute ticks, running the worker at each and ``actions`` when due."""
    pending = sorted(actions, key=lambda a: a[0])
    while clock.now() < until:
        clock.advance(timedelta(minutes=5))
        while pending and pending[0][0] <= clock.now():
            pending.pop(0)[1]()
        worker.run_pass()


def test_ticket_process_escalates_in_simulated_time(cf, clock):
    add_org(cf, ORG, clock.now())
    deploy(cf, "sla_ticket")
    register_sla_functions(cf, owner="alice")
    inst = cf.start("sla_ticket", {"ticket_no": "SN20261123001", "priority": "urgent"}, actor="agent1").instance_id
    assert cf.show(inst)["data"]["sla_due"]["solution"] == iso(sh(2026, 11, 23, 13))
    worker = Worker(cf, listen=False)
    try:
        _simulate(cf, clock, worker, sh(2026, 11, 23, 16), [
            (sh(2026, 11, 23, 10, 30), lambda: cf.complete(_task(cf, inst, "respond")["id"], {}, user="alice")),
            (sh(2026, 11, 23, 15, 30), lambda: cf.complete(_task(cf, inst, "solve")["id"], {}, user="alice")),
        ])
    finally:
        worker.close()
    assert _fired(cf) == [
        ("first_response", "remind_owner", 0, "alice"),  # 10:00
        ("solution", "remind_owner", 0, "alice"),  # 11:00
        ("solution", "alert_supervisor", 0, "bob"),  # 13:00
        ("solution", "alert_manager", 0, "carol"),  # 15:00
    ]
    # the BPMN boundary timer (PT4H after "solve" became ready at 10:30) fired once, as actor timer
    assert count_audit(cf, "timer_fired", inst) == 1
    assert [t["name"] for t in cf.tasks(instance_id=inst)] == ["check_ticket"]
    assert count_audit(cf, "sla_escalated", inst) == 4
    with cf.Session() as s:
        info = {i["clock"]: i for i in explain(s, "SN20261123001")}
    assert info["first_response"]["status"] == "met" and info["solution"]["status"] == "breached"
    assert [e["rung"] for e in info["solution"]["escalations"]] == ["remind_owner", "alert_supervisor",
                                                                     "alert_manager"]


def test_complaint_process_escalates_in_simulated_time(cf, clock):
    add_org(cf, ORG, clock.now())
    deploy(cf, "sla_complaint")
    register_sla_functions(cf, owner="dave")
    inst = cf.start("sla_complaint", {"complaint_no": "CP20261123001"}, actor="agent1").instance_id
    worker = Worker(cf, listen=False)
    try:
        _simulate(cf, clock, worker, sh(2026, 11, 25, 12), [
            (sh(2026, 11, 23, 10, 10), lambda: cf.complete(_task(cf, inst, "record")["id"], {}, user="dave")),
            (sh(2026, 11, 24, 8), lambda: cf.complete(_task(cf, inst, "plan")["id"], {}, user="erin")),
            (sh(2026, 11, 25, 10), lambda: cf.complete(_task(cf, inst, "resolve")["id"], {}, user="erin")),
        ])
    finally:
        worker.close()
    assert _fired(cf) == [
        ("respond", "remind_owner", 0, "dave"),  # 09:30
        ("respond", "alert_supervisor", 0, "erin"),  # 10:00: one hour without a response
        ("plan", "remind_owner", 0, "dave"),  # 21:00
        ("resolve", "remind_owner", 0, "dave"),  # Tue 09:00
        ("resolve", "alert_supervisor", 0, "erin"),  # Wed 09:00: 48 h
    ]
    assert cf.show(inst)["status"] == "completed"
    with cf.Session() as s:
        rows = {r.name: r.status for r in s.scalars(select(SlaClockRow))}
        assert overdue(s, clock.now()) == []
    assert rows == {"respond": "breached", "plan": "met", "resolve": "breached"}
    assert count_audit(cf, "sla_escalated", inst) == 5
    assert count_audit(cf, "sla_clocks_opened", inst) == 1
    assert count_audit(cf, "sla_clock_stopped", inst) == 3
