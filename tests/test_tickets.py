"""The after-sales ticket process end to end through the engine API (paths p1-p11 of the
BPMN author's report), on SQLite and PostgreSQL, with a frozen clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from engine.errors import ScriptError, ValidationFailed
from engine.models import AuditEntry, Instance, Timer
from engine.sla import SlaClockRow
from engine.tickets import Ticket, TicketSerial

from ticket_helpers import (
    CS,
    RISK_ON_TRACK,
    SUP,
    T0,
    TICKET_BPMN,
    TS,
    Flow,
    classification,
    diagnosis,
    intake,
    local,
    onsite,
    remote,
    revisit,
    risk_extend,
    sh,
    supervisor_revisit,
    survey,
    ticket_engine,
    utc,
    visit_plan,
)

MIN = timedelta(minutes=1)


@pytest.fixture
def tcf(settings):
    """``(engine, clock)`` with the after-sales process deployed (see ``ticket_helpers.ticket_engine``)."""
    yield from ticket_engine(settings)


def clocks(cf, subject: str) -> dict[str, SlaClockRow]:
    """The SLA clock rows of a subject key, by name."""
    with cf.Session() as s:
        return {r.name: r for r in s.scalars(select(SlaClockRow).where(SlaClockRow.subject_key == subject))}


def opened(f: Flow, **over) -> Flow:
    """Start at T0 and complete the intake (received at T0) five minutes later."""
    f.start()
    f.do("ut_intake", CS, intake(T0, **over), "zhang.wei", after=5 * MIN)
    return f


def test_p1_urgent_remote_fix(tcf):
    cf, clock = tcf
    f = Flow(cf, clock).start()
    assert [(t["name"], t["lane"]) for t in f.ready()] == [("ut_intake", CS)]
    f.do("ut_intake", CS, intake(T0), "zhang.wei", after=5 * MIN)

    t = f.ticket()
    assert t.number == "SN20261123001"
    assert (t.status, t.priority, t.type, t.channel, t.round, t.reopen_count) == \
        ("diagnosing", "urgent", "product_fault", "phone", 1, 0)
    assert (t.customer_id, t.customer_name, t.customer_type, t.customer_tier, t.phone) == \
        ("C000123", "杭州星河制造有限公司", "enterprise", "core", "0571-88886666")
    assert t.received_at == utc(T0) and t.created_at == utc(T0 + 5 * MIN)
    assert t.first_response_due == utc(sh(2026, 11, 23, 11)) and t.solution_due == utc(sh(2026, 11, 23, 13))
    assert t.solution_warn_at == utc(sh(2026, 11, 23, 12, 12))  # 80 % of 4 h
    diag = f.task("ut_diagnose")
    assert (diag["lane"], utc(diag["due_at"])) == (TS, t.first_response_due)
    [opened_msg] = f.outbox()
    assert (opened_msg.topic, opened_msg.recipient) == ("ticket_opened", "customer")
    assert opened_msg.payload == {"number": t.number, "type": "product_fault", "priority": "urgent",
                                  "first_response_due": t.first_response_due.isoformat(),
                                  "solution_due": t.solution_due.isoformat()}
    with cf.Session() as s:
        assert s.get(Instance, f.instance_id).business_key == t.number

    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 20)), "liu.yang", after=20 * MIN)
    assert utc(f.task("ut_remote")["due_at"]) == t.solution_due
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 10, 30)), "liu.yang", after=65 * MIN)
    assert utc(f.task("ut_revisit")["due_at"]) == utc(sh(2026, 11, 24, 10, 30))  # within 24 h of the fix
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10)), "wang.fang", after=timedelta(hours=23, minutes=30))

    assert f.status() == "completed" and f.ready() == []
    t = f.ticket()
    assert (t.status, t.resolved_by, t.engineer, t.overall_score) == ("closed", "remote", "liu.yang", 5)
    assert t.first_response_at == utc(sh(2026, 11, 23, 9, 20))
    assert t.resolved_at == utc(sh(2026, 11, 23, 10, 30)) and t.closed_at == utc(sh(2026, 11, 24, 10))
    assert t.satisfaction == survey(5) and t.spare_parts == []
    assert f.statuses() == [("open", 1), ("diagnosing", 1), ("remote", 1), ("resolved", 1), ("revisit", 1),
                            ("closed", 1)]
    assert [e.by for e in f.events()] == ["zhang.wei", "zhang.wei", "liu.yang", "liu.yang", "liu.yang",
                                          "wang.fang"]
    assert f.completed == [("ut_intake", CS), ("ut_diagnose", TS), ("ut_remote", TS), ("ut_revisit", CS)]
    assert f.topics() == [("ticket_opened", "customer"), ("ticket_resolved", "customer"),
                          ("ticket_closed", "customer")]
    c = clocks(cf, t.number)
    assert {n: (r.status, r.stopped_at) for n, r in c.items()} == {
        "first_response": ("met", t.first_response_at), "solution": ("met", t.resolved_at)}
    data = f.data()
    assert [(r["round"], r["resolved_by"], r["revisit_ok"]) for r in data["rounds"]] == [(1, "remote", True)]
    assert data["ticket"]["number"] == t.number and "remote" not in data  # round data stays in the round


@pytest.mark.parametrize("priority, received, first_due, solution_due, warn_at", [
    ("urgent", sh(2026, 11, 23, 9), sh(2026, 11, 23, 11), sh(2026, 11, 23, 13), sh(2026, 11, 23, 12, 12)),
    ("important", sh(2026, 11, 23, 9), sh(2026, 11, 23, 13), sh(2026, 11, 24, 9), sh(2026, 11, 24, 4, 12)),
    # general: 24 h wall clock, 3 working days (27 working hours, 09:00-18:00) on the CN calendar:
    # Wed 30 Sep 15:00-18:00 (3 h), National Day 1-7 Oct, Thu 8 (9 h), Fri 9 (9 h), Sat 10 Oct is an
    # adjusted working day (调休): 6 h more -> 15:00; 80 % (21.6 h) falls on Sat 10 Oct 09:36.
    ("general", sh(2026, 9, 30, 15), sh(2026, 10, 1, 15), sh(2026, 10, 10, 15), sh(2026, 10, 10, 9, 36)),
])
def test_deadlines_by_priority(tcf, priority, received, first_due, solution_due, warn_at):
    cf, clock = tcf
    clock.set(received)
    f = Flow(cf, clock).start()
    f.do("ut_intake", CS, intake(received, priority=priority), "zhang.wei", after=5 * MIN)
    t = f.ticket()
    assert (t.first_response_due, t.solution_due, t.solution_warn_at) == (utc(first_due), utc(solution_due),
                                                                         utc(warn_at))
    c = clocks(cf, t.number)
    assert (c["first_response"].due_at, c["solution"].due_at) == (utc(first_due), utc(solution_due))
    assert c["solution"].budget == {"urgent": "PT4H", "important": "PT24H", "general": "3WD"}[priority]
    assert f.data()["ticket"]["solution_due"] == utc(solution_due).isoformat()
    with cf.Session() as s:
        [timer] = s.scalars(select(Timer).where(Timer.instance_id == f.instance_id, Timer.status == "waiting"))
    assert timer.due_at == utc(warn_at)  # the deadline warning waits for 80 % of the solution budget


def test_p2_remote_fails_then_on_site(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), priority="important")
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=25 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11), solved=False), "liu.yang", after=timedelta(hours=1, minutes=30))
    solution_due = utc(sh(2026, 11, 24, 9))
    assert utc(f.task("ut_onsite_schedule")["due_at"]) == solution_due
    f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 23, 14), engineer="zhao.lei"), "liu.yang", after=30 * MIN)
    t = f.ticket()
    assert (t.status, t.engineer, t.visit_at) == ("on_site", "zhao.lei", utc(sh(2026, 11, 23, 14)))
    visit = f.task("ut_onsite")
    assert (visit["lane"], visit["assignee"], utc(visit["due_at"])) == (TS, "zhao.lei", solution_due)
    assert ("onsite_scheduled", "customer") in f.topics()
    f.do("ut_onsite", TS, onsite(sh(2026, 11, 23, 13, 55), sh(2026, 11, 23, 16)), "zhao.lei",
         after=timedelta(hours=4, minutes=30))
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10), overall=4), "wang.fang", after=timedelta(hours=18))

    t = f.ticket()
    assert (t.status, t.resolved_by, t.overall_score) == ("closed", "on_site", 4)
    assert t.resolved_at == utc(sh(2026, 11, 23, 16))
    assert t.spare_parts == [{"name": "主板 X11", "part_no": "MB-X11-02", "quantity": 1},
                             {"name": "导热硅脂", "quantity": 2}]
    assert [s for s, _ in f.statuses()] == ["open", "diagnosing", "remote", "on_site", "resolved", "revisit",
                                            "closed"]
    assert f.completed == [("ut_intake", CS), ("ut_diagnose", TS), ("ut_remote", TS), ("ut_onsite_schedule", TS),
                           ("ut_onsite", TS), ("ut_revisit", CS)]
    assert f.topics() == [("ticket_opened", "customer"), ("onsite_scheduled", "customer"),
                          ("ticket_resolved", "customer"), ("ticket_closed", "customer")]
    assert {n: r.status for n, r in clocks(cf, t.number).items()} == {"first_response": "met", "solution": "met"}
    [r1] = f.data()["rounds"]
    assert r1["resolved_by"] == "on_site" and r1["onsite"]["customer_signoff"] is True
    assert r1["visit_plan"]["engineer"] == "zhao.lei"


def test_audit_trail_of_a_finished_ticket(tcf):
    """Every step of a finished ticket is in the audit trail with its actor and its data change."""
    cf, clock = tcf
    f = opened(Flow(cf, clock), priority="important")
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=25 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11), solved=False), "liu.yang", after=timedelta(hours=1))
    f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 23, 14)), "liu.yang", after=30 * MIN)
    f.do("ut_onsite", TS, onsite(sh(2026, 11, 23, 14), sh(2026, 11, 23, 16)), "liu.yang", after=timedelta(hours=5))
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10)), "wang.fang", after=timedelta(hours=18))
    number = f.ticket().number
    trail = cf.audit(f.instance_id)

    done = [(a["task_name"], a["lane"], a["actor"], a["data_diff"]) for a in trail if a["action"] == "task_completed"]
    assert [(n, lane, who) for n, lane, who, _ in done] == [
        ("ut_intake", CS, "zhang.wei"), ("ut_diagnose", TS, "liu.yang"), ("ut_remote", TS, "liu.yang"),
        ("ut_onsite_schedule", TS, "liu.yang"), ("ut_onsite", TS, "liu.yang"), ("ut_revisit", CS, "wang.fang")]
    form_keys = ["intake", "diagnosis", "remote", "visit_plan", "onsite", "revisit"]
    for (name, _, _, diff), key in zip(done, form_keys, strict=True):
        assert key in diff["added"], (name, diff)
    assert done[0][3]["added"]["intake"]["customer"]["name"] == "杭州星河制造有限公司"

    scripts = {a["task_name"]: a for a in trail if a["action"] == "engine_task" and a["details"]["type"] == "ScriptTask"}
    assert set(scripts) == {"s_register", "s_round_start", "s_remote_start", "s_visit_booked", "s_fix_result",
                            "s_round_evaluate", "s_close"}
    assert scripts["s_register"]["data_diff"]["added"]["ticket"]["number"] == number
    assert scripts["s_fix_result"]["data_diff"]["added"]["resolved_by"] == "on_site"
    assert all(a["data_diff"] for a in scripts.values())
    assert all(a["actor"] for a in trail)

    ticket_rows = [(a["action"], a["actor"], (a["details"].get("status") or {}).get("to")) for a in trail
                   if a["action"].startswith("ticket_")]
    assert ticket_rows == [
        ("ticket_registered", "zhang.wei", None), ("ticket_updated", "zhang.wei", "diagnosing"),
        ("ticket_updated", "liu.yang", "remote"), ("ticket_updated", "liu.yang", "on_site"),
        ("ticket_updated", "liu.yang", "resolved"), ("ticket_updated", "liu.yang", "revisit"),
        ("ticket_updated", "wang.fang", "closed")]
    actions = [a["action"] for a in trail]
    assert actions[0] == "instance_started" and actions[-1] == "instance_completed"
    assert {"sla_clocks_opened", "sla_clock_stopped", "task_ready"} <= set(actions)
    seqs = [a["seq"] for a in trail]
    assert seqs == sorted(seqs)


def test_p3_complex_case_classified_by_technical_support(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), complex=True, type="other", priority="general")
    cls = f.task("ut_classify")
    assert cls["lane"] == TS and utc(cls["due_at"]) == utc(T0 + 65 * MIN)
    with cf.Session() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 0  # numbered once classified
    f.do("ut_classify", TS, classification("product_fault", "important"), "liu.yang", after=20 * MIN)
    t = f.ticket()
    assert (t.type, t.priority, t.fault_category) == ("product_fault", "important", "software")
    assert t.facts["classification"]["assessment"].startswith("数据库锁表")
    # deadlines count from when the customer contacted us, not from the classification
    assert (t.first_response_due, t.solution_due) == (utc(T0 + timedelta(hours=4)), utc(T0 + timedelta(hours=24)))
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 40)), "liu.yang", after=20 * MIN)
    assert f.ticket().fault_category == "hardware"
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11)), "liu.yang", after=timedelta(hours=1))
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10)), "wang.fang", after=timedelta(hours=20))
    assert f.ticket().status == "closed"
    assert f.data()["ticket"]["priority"] == "important"
    assert [n for n, _ in f.completed] == ["ut_intake", "ut_classify", "ut_diagnose", "ut_remote", "ut_revisit"]


def test_p4_complaint_ticket_gets_the_supervisor_revisit(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), type="service_complaint", priority="important")
    t = f.ticket()
    # the SLA policy answers a service complaint with the 1-24-48 rule
    assert t.sla_policy == "default-complaint-1-24-48"
    assert (t.first_response_due, t.solution_due) == (utc(T0 + timedelta(hours=1)), utc(T0 + timedelta(hours=48)))
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 40)), "liu.yang", after=40 * MIN)
    c = clocks(cf, t.number)
    assert {n: r.status for n, r in c.items()} == {"respond": "met", "plan": "met", "resolve": "running"}
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11)), "liu.yang", after=timedelta(hours=1))
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10), overall=4), "wang.fang", after=timedelta(hours=20))
    sup = f.task("ut_supervisor_revisit")
    assert sup["lane"] == SUP and utc(sup["due_at"]) == utc(f.now() + timedelta(hours=24))
    assert f.ticket().status == "revisit"
    f.do("ut_supervisor_revisit", SUP, supervisor_revisit(sh(2026, 11, 24, 15)), "li.na", after=timedelta(hours=5))
    t = f.ticket()
    assert t.status == "closed" and clocks(cf, t.number)["resolve"].status == "met"
    assert [lane for _, lane in f.completed] == [CS, TS, TS, CS, SUP]
    [r1] = f.data()["rounds"]
    assert r1["supervisor_revisit"]["complaint_resolved"] is True and r1["reopen_reason"] is None


def test_p5_failed_revisit_reopens_then_succeeds(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock))
    number = f.ticket().number
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 20)), "liu.yang", after=20 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 10, 30)), "liu.yang", after=65 * MIN)
    round1_resolved = f.ticket().resolved_at
    # confirmed solved, but an overall score of 2 reopens handling
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10), overall=2), "wang.fang", after=timedelta(hours=23, minutes=30))
    reopened_at = f.now()
    assert f.ready_names() == ["ut_diagnose"]
    t = f.ticket()
    assert (t.status, t.round, t.reopen_count, t.sla_subject) == ("diagnosing", 2, 1, f"{number}/R2")
    assert (t.resolved_at, t.first_response_at) == (None, None)
    # the new round is a new service promise: fresh clocks per the SLA policy, from the reopening
    assert (t.first_response_due, t.solution_due) == (reopened_at + timedelta(hours=2),
                                                      reopened_at + timedelta(hours=4))
    assert utc(f.task("ut_diagnose")["due_at"]) == t.first_response_due
    assert {n: r.status for n, r in clocks(cf, number).items()} == {"first_response": "met", "solution": "met"}
    assert clocks(cf, number)["solution"].stopped_at == round1_resolved
    r2 = clocks(cf, f"{number}/R2")
    assert {n: (r.status, r.started_at) for n, r in r2.items()} == {"first_response": ("running", reopened_at),
                                                                   "solution": ("running", reopened_at)}
    reopened = [m for m in f.outbox() if m.topic == "ticket_reopened"]
    assert [(m.recipient, m.payload["round"]) for m in reopened] == [("customer", 2)]

    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 24, 10, 15)), "liu.yang", after=20 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 24, 11), solved=False), "liu.yang", after=40 * MIN)
    f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 24, 13)), "liu.yang", after=10 * MIN)
    f.do("ut_onsite", TS, onsite(sh(2026, 11, 24, 13), sh(2026, 11, 24, 13, 50)), "liu.yang",
         after=timedelta(hours=2, minutes=40))
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 25, 10)), "wang.fang", after=timedelta(hours=20))

    t = f.ticket()
    assert (t.status, t.round, t.reopen_count, t.resolved_by, t.overall_score) == ("closed", 2, 1, "on_site", 5)
    assert t.resolved_at == utc(sh(2026, 11, 24, 13, 50))
    assert f.statuses() == [("open", 1), ("diagnosing", 1), ("remote", 1), ("resolved", 1), ("revisit", 1),
                            ("reopened", 1), ("diagnosing", 2), ("remote", 2), ("on_site", 2), ("resolved", 2),
                            ("revisit", 2), ("closed", 2)]
    assert [e.reason for e in f.events() if e.status == "reopened"] == ["low_rating"]
    assert {n: r.status for n, r in clocks(cf, f"{number}/R2").items()} == {"first_response": "met",
                                                                           "solution": "met"}
    rounds = f.data()["rounds"]
    assert [(r["round"], r["reopen_reason"], r["survey"]["overall"]["score"]) for r in rounds] == [
        (1, "low_rating", 2), (2, None, 5)]
    assert rounds[0]["remote"]["solved"] is True and rounds[0]["onsite"] is None
    assert rounds[1]["remote"]["solved"] is False and rounds[1]["onsite"]["resolved"] is True
    assert ("ticket_reopened_repeatedly", "supervisor") not in f.topics()


def test_p6_unfixed_round_and_a_second_reopen_alert_the_supervisor(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock))
    number = f.ticket().number
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 20)), "liu.yang", after=20 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 10), solved=False), "liu.yang", after=40 * MIN)
    f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 23, 12)), "liu.yang", after=10 * MIN)
    f.do("ut_onsite", TS, onsite(sh(2026, 11, 23, 12), sh(2026, 11, 23, 15), resolved=False), "liu.yang",
         after=timedelta(hours=5))
    # the visit could not fix it: no revisit, straight into round 2
    assert f.ready_names() == ["ut_diagnose"]
    t = f.ticket()
    assert (t.status, t.round, t.reopen_count, t.sla_subject) == ("diagnosing", 2, 1, f"{number}/R2")
    # round 1's promise was never kept: its solution clock keeps running until the ticket is resolved
    assert clocks(cf, number)["solution"].status == "running"
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 15, 30)), "liu.yang", after=30 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 16, 30)), "liu.yang", after=timedelta(hours=1))
    c1 = clocks(cf, number)["solution"]
    assert (c1.status, c1.stopped_at) == ("breached", f.now())  # due at 13:00, resolved in round 2
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10), solved=False, overall=3), "wang.fang",
         after=timedelta(hours=17, minutes=30))
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 24, 10, 30)), "liu.yang", after=30 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 24, 11)), "liu.yang", after=30 * MIN)
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 25, 10)), "wang.fang", after=timedelta(hours=23))

    t = f.ticket()
    assert (t.status, t.round, t.reopen_count) == ("closed", 3, 2)
    rounds = f.data()["rounds"]
    assert [(r["round"], r["fixed"], r["reopen_reason"]) for r in rounds] == [
        (1, False, "not_fixed"), (2, True, "not_solved"), (3, True, None)]
    assert rounds[0]["revisit"] is None and rounds[0]["onsite"]["resolved"] is False
    assert [(e.status, e.round, e.reason) for e in f.events() if e.status == "reopened"] == [
        ("reopened", 1, "not_fixed"), ("reopened", 2, "not_solved")]
    topics = f.topics()
    assert topics.count(("ticket_reopened", "customer")) == 2
    assert topics.count(("ticket_reopened_repeatedly", "supervisor")) == 1
    [alert] = [m for m in f.outbox() if m.topic == "ticket_reopened_repeatedly"]
    assert alert.payload == {"number": number, "round": 2, "reason": "not_solved"}


def test_p7_complaint_ticket_reopened_by_the_supervisor(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), type="service_complaint", priority="general")

    def soon(minutes: int = 25):
        return f.now() + minutes * MIN

    f.do("ut_diagnose", TS, diagnosis(soon()), "liu.yang", after=30 * MIN)
    f.do("ut_remote", TS, remote(soon()), "liu.yang", after=30 * MIN)
    f.do("ut_revisit", CS, revisit(soon(), overall=4), "wang.fang", after=timedelta(hours=20))
    f.do("ut_supervisor_revisit", SUP, supervisor_revisit(soon(), resolved=False), "li.na", after=timedelta(hours=5))
    assert f.ready_names() == ["ut_diagnose"] and f.ticket().reopen_count == 1
    f.do("ut_diagnose", TS, diagnosis(soon()), "liu.yang", after=30 * MIN)
    f.do("ut_remote", TS, remote(soon()), "liu.yang", after=30 * MIN)
    f.do("ut_revisit", CS, revisit(soon()), "wang.fang", after=timedelta(hours=18))
    f.do("ut_supervisor_revisit", SUP, supervisor_revisit(soon()), "li.na", after=timedelta(hours=1))
    assert f.status() == "completed"
    assert [r["reopen_reason"] for r in f.data()["rounds"]] == ["complaint_unresolved", None]
    assert [e.reason for e in f.events() if e.status == "reopened"] == ["complaint_unresolved"]
    assert [lane for _, lane in f.completed].count(SUP) == 2


def test_p8_deadline_renegotiated_with_the_customer(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), priority="important")
    number = f.ticket().number
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=25 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11), solved=False), "liu.yang", after=timedelta(hours=1, minutes=30))
    original_due = utc(sh(2026, 11, 24, 9))
    assert f.fire(sh(2026, 11, 24, 4, 11)) == 0  # the warning waits for 80 % of the budget (04:12)
    assert f.fire(sh(2026, 11, 24, 4, 15)) == 1
    assert f.ready_names() == ["ut_deadline_risk", "ut_onsite_schedule"]
    risk = f.task("ut_deadline_risk")
    assert risk["lane"] == TS and utc(risk["due_at"]) == original_due

    new_due = sh(2026, 11, 25, 18)
    f.do("ut_deadline_risk", TS, risk_extend(sh(2026, 11, 24, 4, 20), new_due), "liu.yang", after=5 * MIN)
    t = f.ticket()
    assert t.solution_due == utc(new_due) and t.first_response_due == utc(T0 + timedelta(hours=4))
    assert utc(f.task("ut_onsite_schedule")["due_at"]) == utc(new_due)  # the open task moved with the deadline
    sol = clocks(cf, number)["solution"]
    assert sol.due_at == utc(new_due) and sol.status == "running"
    [ext] = [h for h in sol.history if h["event"] == "extended"]
    assert (ext["by"], ext["reason"], utc(ext["from"]), utc(ext["to"])) == (
        "liu.yang", "备件需从上海调货 / Spare part ships from Shanghai", original_due, utc(new_due))
    [msg] = [m for m in f.outbox() if m.topic == "deadline_extended"]
    assert msg.recipient == "customer"
    assert msg.payload == {"number": number, "new_due": local(new_due),
                           "reason": "备件需从上海调货 / Spare part ships from Shanghai"}
    [audit] = [a for a in cf.audit(f.instance_id) if a["action"] == "ticket_deadline_extended"]
    assert audit["actor"] == "liu.yang"
    assert (audit["details"]["clock"], utc(audit["details"]["from"]), utc(audit["details"]["to"])) == (
        "solution", original_due, utc(new_due))
    assert audit["details"]["tasks"] == [f.task("ut_onsite_schedule")["id"]]

    f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 25, 10)), "liu.yang", after=timedelta(hours=4))
    assert utc(f.task("ut_onsite")["due_at"]) == utc(new_due)  # tasks created later keep the agreed time
    f.do("ut_onsite", TS, onsite(sh(2026, 11, 25, 10), sh(2026, 11, 25, 12)), "liu.yang", after=timedelta(hours=28))
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 26, 10)), "wang.fang", after=timedelta(hours=22))
    assert f.ticket().status == "closed"
    assert clocks(cf, number)["solution"].status == "met"  # met against the renegotiated deadline
    assert [n for n, _ in f.completed] == ["ut_intake", "ut_diagnose", "ut_remote", "ut_deadline_risk",
                                           "ut_onsite_schedule", "ut_onsite", "ut_revisit"]


def test_p9_deadline_warning_withdrawn_when_handling_finishes(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock))
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=30 * MIN)
    assert f.fire(sh(2026, 11, 23, 12, 15)) == 1
    assert f.ready_names() == ["ut_deadline_risk", "ut_remote"]
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 12, 30)), "liu.yang", after=15 * MIN)
    assert f.ready_names() == ["ut_revisit"]
    [risk] = f.task_rows("ut_deadline_risk")
    assert risk.status == "cancelled"
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10)), "wang.fang", after=timedelta(hours=20))
    assert f.ticket().status == "closed"
    assert "deadline_extended" not in [m for m, _ in f.topics()]
    assert clocks(cf, f.ticket().number)["solution"].history == []


def test_p10_warning_answered_on_track_then_rearmed_after_a_reopen(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock))
    number = f.ticket().number
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=30 * MIN)
    f.fire(sh(2026, 11, 23, 12, 15))
    f.do("ut_deadline_risk", TS, RISK_ON_TRACK, "liu.yang", after=5 * MIN)
    assert f.ready_names() == ["ut_remote"]
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 12, 30)), "liu.yang", after=10 * MIN)
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10), solved=False, overall=4), "wang.fang",
         after=timedelta(hours=21, minutes=40))
    reopened_at = f.now()
    t = f.ticket()
    assert t.solution_warn_at == reopened_at + timedelta(hours=3, minutes=12)
    with cf.Session() as s:
        waiting = s.scalars(select(Timer.due_at).where(Timer.instance_id == f.instance_id,
                                                       Timer.status == "waiting")).all()
    assert waiting == [t.solution_warn_at]
    assert f.fire(t.solution_warn_at - MIN) == 0
    assert f.fire(t.solution_warn_at + MIN) == 1
    assert f.ready_names() == ["ut_deadline_risk", "ut_diagnose"]
    assert utc(f.task("ut_deadline_risk")["due_at"]) == t.solution_due
    f.do("ut_deadline_risk", TS, risk_extend(f.now(), sh(2026, 11, 24, 18)), "liu.yang", after=MIN)
    assert f.ticket().solution_due == utc(sh(2026, 11, 24, 18))
    assert clocks(cf, f"{number}/R2")["solution"].due_at == utc(sh(2026, 11, 24, 18))
    assert clocks(cf, number)["solution"].status == "met"  # round 1's clock is not touched
    f.do("ut_diagnose", TS, diagnosis(f.now()), "liu.yang", after=MIN)
    f.do("ut_remote", TS, remote(f.now() + 30 * MIN), "liu.yang", after=30 * MIN)
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 25, 10)), "wang.fang", after=timedelta(hours=18))
    assert f.ticket().status == "closed"
    assert len(f.task_rows("ut_deadline_risk")) == 2


def test_p11_warning_timer_waits_and_goes_when_handling_finishes(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), priority="general")
    warn_at = f.ticket().solution_warn_at
    with cf.Session() as s:
        [timer] = s.scalars(select(Timer).where(Timer.instance_id == f.instance_id))
    assert (timer.status, timer.due_at) == ("waiting", warn_at)
    assert cf.fire_due_timers() == 0
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=30 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 11)), "liu.yang", after=timedelta(hours=1))
    with cf.Session() as s:
        assert s.get(Timer, timer.id).status == "cancelled"
    assert f.fire(warn_at + timedelta(hours=1)) == 0
    assert f.ready_names() == ["ut_revisit"]
    f.do("ut_revisit", CS, revisit(f.now()), "wang.fang", after=MIN)
    assert f.ticket().status == "closed"


def _counts(cf) -> tuple[int, int, int, int]:
    with cf.Session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Ticket, TicketSerial, AuditEntry,
                                                                              SlaClockRow))


def test_invalid_intake_is_rejected_with_field_errors_and_nothing_saved(tcf):
    cf, clock = tcf
    f = Flow(cf, clock).start()
    before, task = _counts(cf), f.task("ut_intake")
    with cf.Session() as s:
        revision = s.get(Instance, f.instance_id).revision
    bad = intake(T0, priority="super-urgent")
    bad["intake"]["received_at"] = "yesterday"
    del bad["intake"]["customer"]["name"]
    bad["intake"]["contact"]["phone"] = "call me"
    with pytest.raises(ValidationFailed) as err:
        cf.complete(task["id"], bad, user="zhang.wei")
    fields = err.value.field_errors
    assert {"intake/priority", "intake/received_at", "intake/customer/name", "intake/contact/phone"} <= set(fields)
    assert fields["intake/customer/name"] == ["is required"]
    with pytest.raises(ValidationFailed) as err:
        cf.complete(task["id"], {"intake": {**intake(T0)["intake"], "surprise": 1}}, user="zhang.wei")
    assert "intake" in err.value.field_errors
    assert _counts(cf) == before
    with cf.Session() as s:
        assert s.get(Instance, f.instance_id).revision == revision
    assert f.ready_names() == ["ut_intake"]
    # the same intake, corrected, goes through and takes the first number of the day
    f.do("ut_intake", CS, intake(T0), "zhang.wei", after=MIN)
    assert f.ticket().number == "SN20261123001"


def test_intake_received_in_the_future_fails_the_step_and_saves_nothing(tcf):
    cf, clock = tcf
    f = Flow(cf, clock).start()
    before = _counts(cf)
    with pytest.raises(ScriptError, match="received_at .* is in the future"):
        cf.complete(f.task("ut_intake")["id"], intake(T0 + timedelta(hours=2)), user="zhang.wei")
    assert _counts(cf) == before  # no ticket, no serial taken
    assert f.ready_names() == ["ut_intake"]


def test_ticket_links_the_registry_customer_and_records_the_contacts(tcf):
    cf, clock = tcf
    from engine.customers import CustomerContact, add_customer

    with cf.Session() as s, s.begin():
        c = add_customer(s, {"customer_type": "enterprise", "name": "南京金陵建设工程有限公司",
                             "credit_code": "91320106135792463Q", "phone": "025-84561234",
                             "annual_spend": 520000}, pm=cf.pm, actor="test", now=clock.now())
        cid, tier = c.id, c.tier
    f = Flow(cf, clock).start()
    data = intake(T0)
    data["intake"]["customer"] = {"customer_type": "enterprise", "name": "金陵建设", "customer_id": str(cid),
                                  "phone": "025-84561234"}
    f.do("ut_intake", CS, data, "zhang.wei", after=5 * MIN)
    t = f.ticket()
    assert (t.customer_id, t.customer_name, t.customer_tier) == (str(cid), "南京金陵建设工程有限公司", tier)
    assert tier == "core"
    # the registry's tier reaches the SLA clocks (a tier-aware policy plugin sees it)
    assert {r.tier for r in clocks(cf, t.number).values()} == {"core"}
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 20)), "liu.yang", after=20 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 10)), "liu.yang", after=40 * MIN)
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10)), "wang.fang", after=timedelta(hours=23))
    with cf.Session() as s:
        contacts = s.scalars(select(CustomerContact).where(CustomerContact.customer_id == cid)
                             .order_by(CustomerContact.id)).all()
    assert [(x.kind, x.by, x.details["ticket_number"]) for x in contacts] == [
        ("ticket", "zhang.wei", t.number), ("ticket", "liu.yang", t.number), ("ticket", "wang.fang", t.number)]
    assert contacts[-1].summary == f"Ticket {t.number} closed (overall satisfaction 5/5)"
    # closing the ticket asked for a customer revisit, which the scheduler starts as its own instance
    from engine.clock import use_clock
    from engine.revisits import CustomerRevisit, start_due_revisits


    with cf.Session() as s:
        [req] = s.scalars(select(CustomerRevisit).where(CustomerRevisit.customer_id == cid,
                                                        CustomerRevisit.kind == "requested")).all()
    assert req.source_instance_id == f.instance_id and t.number in req.reason
    with use_clock(clock):
        cf.deploy([TICKET_BPMN.parent / "customer_revisit.bpmn"], author="test")
        started = start_due_revisits(cf, clock.now())
    assert len(started) >= 1
    assert any(cf.show(i)["process_id"] == "customer_revisit" for i in started)
    # found by phone when the intake carries no registry id
    f2 = Flow(cf, clock).start()
    data = intake(f2.now())
    data["intake"]["customer"] = {"customer_type": "enterprise", "name": "金陵建设", "phone": "02584561234"}
    f2.do("ut_intake", CS, data, "zhang.wei", after=MIN)
    assert f2.ticket().customer_id == str(cid)


def test_ticket_forms_are_bilingual():
    import json

    from ticket_helpers import ROOT

    def walk(node: dict, path: str) -> list[str]:
        missing = [path] if not (node.get("title") and node.get("x-title-zh")) else []
        for option in node.get("oneOf", []):
            if "const" in option and not (option.get("title") and option.get("x-title-zh")):
                missing.append(f"{path}={option['const']}")
        for key, child in (node.get("properties") or {}).items():
            missing += walk(child, f"{path}/{key}")
        if isinstance(node.get("items"), dict):
            missing += walk(node["items"], f"{path}[]")
        return missing

    forms = sorted((ROOT / "forms").glob("ticket-*.schema.json"))
    assert len(forms) == 9
    for form in forms:
        assert walk(json.loads(form.read_text(encoding="utf-8")), form.name) == []


def test_a_policy_without_a_solution_clock_fails_the_intake_and_gives_the_number_back(tcf):
    cf, clock = tcf
    from plugins.hookspecs import hookimpl

    class ResponseOnly:
        @hookimpl(tryfirst=True)
        def careflow_sla_policy(self, kind, priority, ticket_type, tier):
            return {"policy": "response-only", "clocks": {"first_response": "PT1H"}}

    cf.pm.register(ResponseOnly(), name="response_only")
    f = Flow(cf, clock).start()
    before = _counts(cf)
    with pytest.raises(ScriptError, match="gives no solution clock"):
        cf.complete(f.task("ut_intake")["id"], intake(T0), user="zhang.wei")
    assert _counts(cf) == before
    cf.pm.unregister(name="response_only")
    f.do("ut_intake", CS, intake(T0), "zhang.wei", after=MIN)
    assert f.ticket().number == "SN20261123001"


def test_renegotiating_to_a_time_already_past_is_refused_and_nothing_saved(tcf):
    cf, clock = tcf
    f = opened(Flow(cf, clock), priority="important")
    f.fire(sh(2026, 11, 24, 4, 15))
    task = f.task("ut_deadline_risk")
    before = _counts(cf)
    with pytest.raises(ScriptError, match="must be after"):
        cf.complete(task["id"], risk_extend(f.now(), sh(2026, 11, 24, 3)), user="liu.yang")
    assert _counts(cf) == before
    assert f.ticket().solution_due == utc(sh(2026, 11, 24, 9))
    f.do("ut_deadline_risk", TS, risk_extend(f.now(), sh(2026, 11, 24, 12)), "liu.yang", after=MIN)
    assert f.ticket().solution_due == utc(sh(2026, 11, 24, 12))
