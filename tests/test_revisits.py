"""Revisits (回访): cadence and schedule, exactly one instance per due revisit, follow-up tasks."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.clock import FrozenClock
from engine.customers import CustomerContact, get_customer, list_contacts, update_customer
from engine.errors import NotFound, ScriptError
from engine.models import Instance, OutboxMessage
from engine.revisits import CustomerRevisit, add_interval, due_moment, start_due_revisits
from engine.runtime import Careflow

from crm_helpers import FIXTURES, add, add_user, deploy, enterprise, race, sh, utc


@pytest.fixture
def clock():
    return FrozenClock(sh(2026, 3, 2, 10))  # a Monday


@pytest.fixture
def crm(settings, clock):
    eng = Careflow(settings, clock=clock)
    add_user(eng, "li.na", role="supervisor", groups=("supervisor",))
    add_user(eng, "zhao.min", groups=("account_manager", "sales"), supervisor="li.na")
    add_user(eng, "liu.yang", groups=("technical_support",), supervisor="li.na")
    yield eng
    eng.close()


def _revisits(cf) -> list[CustomerRevisit]:
    with cf.Session() as s:
        return list(s.scalars(select(CustomerRevisit).order_by(CustomerRevisit.id)))


def _instances(cf, process_id="customer_revisit") -> list[Instance]:
    with cf.Session() as s:
        return list(s.scalars(select(Instance).where(Instance.process_id == process_id).order_by(Instance.id)))


# ---------------------------------------------------------------------------------- cadence


def test_intervals_and_due_moments():
    assert add_interval(sh(2026, 1, 31, 10), "P1M") == sh(2026, 2, 28, 10)
    assert add_interval(sh(2026, 11, 30, 10), "P3M") == sh(2027, 2, 28, 10)
    assert add_interval(sh(2026, 3, 2, 10), "P14D") == sh(2026, 3, 16, 10)
    assert due_moment(date(2026, 3, 16)) == utc(sh(2026, 3, 16, 9))
    assert due_moment(date(2026, 3, 14)) == utc(sh(2026, 3, 16, 9))  # Saturday -> Monday
    assert due_moment(date(2026, 10, 1)) == utc(sh(2026, 10, 8, 9))  # National Day holidays -> first working day
    with pytest.raises(ValueError):
        add_interval(sh(2026, 1, 1), "P1Y")


def test_retiering_moves_the_schedule(crm):
    cid = add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2026-03-02", strategic_value="C"))
    with crm.Session() as s, s.begin():
        c = get_customer(s, cid)
        assert c["tier"] == "important" and c["revisit_due_at"] == utc(sh(2026, 3, 16, 9)).isoformat()
        update_customer(s, cid, {"annual_spend": 150_000}, pm=crm.pm, actor="li.na")
    with crm.Session() as s, s.begin():
        c = get_customer(s, cid)
        assert c["tier"] == "core" and c["revisit_due_at"] == utc(sh(2026, 4, 2, 9)).isoformat()
        update_customer(s, cid, {"annual_spend": 5_000}, pm=crm.pm, actor="li.na")
        assert get_customer(s, cid)["revisit_due_at"] == utc(sh(2026, 4, 2, 9)).isoformat()  # potential: monthly


def test_retiering_to_the_abc_scheme_moves_the_schedule(crm, settings):
    from engine.customers import retier_all
    from plugins.manager import get_plugin_manager

    cid = add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2026-03-02", strategic_value="C"))
    abc = Careflow(settings, plugin_manager=get_plugin_manager(environ={"CAREFLOW_TIER_SCHEME": "abc"}),
                   clock=FrozenClock(crm.now()))
    try:
        with abc.Session() as s, s.begin():
            retier_all(s, pm=abc.pm)
            c = get_customer(s, cid)
    finally:
        abc.close()
    assert c["tier"] == "C" and c["revisit_due_at"] == utc(sh(2026, 9, 2, 9)).isoformat()  # every 6 months


# ----------------------------------------------------------------------------- scheduling


def test_a_due_customer_gets_exactly_one_revisit_instance(crm):
    deploy(crm, "customer_revisit.bpmn")
    due = add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2025-12-01"))
    add(crm, enterprise(2, annual_spend=50_000, first_contact_date="2026-03-01"))  # not due yet
    started = start_due_revisits(crm)
    assert len(started) == 1
    assert start_due_revisits(crm) == []
    assert start_due_revisits(crm, crm.now() + timedelta(days=1)) == []  # still open: no second one
    (rv,) = _revisits(crm)
    assert (rv.customer_id, rv.status, rv.instance_id, rv.kind) == (due, "started", started[0], "scheduled")
    assert rv.due_key == "due:2025-12-15"
    (task,) = crm.tasks(instance_id=started[0])
    assert (task["name"], task["lane"], task["assignee"]) == ("ut_record_revisit", "account_manager", "zhao.min")
    assert task["due_at"] == utc(sh(2026, 3, 9, 10)).isoformat()
    assert "测试科技有限公司1号" in task["instructions"] and "every 2 weeks" in task["instructions"]
    assert crm.show(started[0])["business_key"] == f"RV{rv.id}"
    with crm.Session() as s:
        assert get_customer(s, due)["revisit_due_at"] == utc(sh(2026, 3, 16, 9)).isoformat()
    assert crm.tasks(user="zhao.min")[0]["id"] == task["id"]


def test_two_schedulers_at_once_start_each_revisit_once(crm, settings):
    deploy(crm, "customer_revisit.bpmn")
    for n in range(1, 7):
        add(crm, enterprise(n, annual_spend=50_000, first_contact_date="2025-12-01"))
    engines = [Careflow(settings, clock=FrozenClock(crm.now())) for _ in range(3)]
    results = race(engines, start_due_revisits)
    assert sorted(i for r in results for i in r) == [i.id for i in _instances(crm)]
    assert len(_instances(crm)) == 6
    assert sorted(r.customer_id for r in _revisits(crm)) == [1, 2, 3, 4, 5, 6]


def test_follow_up_actions_become_tasks_with_their_owner_and_due_date(crm):
    deploy(crm, "customer_revisit.bpmn")
    cid = add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2025-12-01"))
    (iid,) = start_due_revisits(crm)
    (task,) = crm.tasks(instance_id=iid)
    record = {"revisit": {
        "date": "2026-02-27", "mode": "visit", "participants": ["赵敏", "王建国"], "topic": "2026 年备件采购计划",
        "feedback_points": ["希望缩短备件交期", "对上次维修满意"],
        "follow_up_actions": [{"due": "2026-03-10", "content": "发送备件报价", "owner": "zhao.min"},
                              {"due": "2026-03-12", "content": "安排工程师巡检", "owner": "liu.yang"}]}}
    result = crm.complete(task["id"], record, user="zhao.min")
    actions = sorted(result.ready_tasks, key=lambda t: t["due_at"])
    assert [(t["name"], t["assignee"], t["due_at"]) for t in actions] == [
        ("ut_follow_up_action", "zhao.min", utc(sh(2026, 3, 10, 18)).isoformat()),
        ("ut_follow_up_action", "liu.yang", utc(sh(2026, 3, 12, 18)).isoformat())]
    assert "安排工程师巡检" in crm.task(actions[1]["id"])["instructions"]
    assert crm.tasks(user="liu.yang")[0]["id"] == actions[1]["id"]
    with crm.Session() as s:
        c = get_customer(s, cid)
        assert c["last_revisit_at"] == utc(sh(2026, 2, 27, 9)).isoformat()
        assert c["revisit_due_at"] == utc(sh(2026, 3, 13, 9)).isoformat()  # counted from the revisit itself
        (contact,) = list_contacts(s, cid)
        assert contact["kind"] == "revisit" and contact["by"] == "zhao.min" and contact["instance_id"] == iid
        assert "2026 年备件采购计划" in contact["summary"] and "2 follow-up action(s)" in contact["summary"]
    (rv,) = _revisits(crm)
    assert rv.status == "completed"
    crm.complete(actions[0]["id"], {"follow_up": {"status": "done", "result": "报价已发送"}}, user="zhao.min")
    done = crm.complete(actions[1]["id"], {"follow_up": {"status": "handed_over", "result": "已建巡检工单"}},
                        user="liu.yang")
    assert done.status == "completed"
    results = crm.show(iid)["data"]["follow_up_outcomes"]
    assert [(r["owner"], r["status"]) for r in results] == [("zhao.min", "done"), ("liu.yang", "handed_over")]
    with crm.Session() as s:
        notes = [c["summary"] for c in list_contacts(s, cid) if c["kind"] == "note"]
    assert notes == ["Revisit follow-up actions closed: 1 of 2 done; 发送备件报价 — 报价已发送; 安排工程师巡检 — 已建巡检工单"]


def test_a_follow_up_owner_must_be_a_user_and_a_revisit_needs_substance(crm):
    deploy(crm, "customer_revisit.bpmn")
    add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2025-12-01"))
    (iid,) = start_due_revisits(crm)
    (task,) = crm.tasks(instance_id=iid)
    base = {"date": "2026-03-02", "mode": "phone", "participants": ["赵敏"], "topic": "设备运行情况",
            "feedback_points": ["运行正常"]}
    with pytest.raises(ScriptError, match="owner 'nobody' is not a Careflow user"):
        crm.complete(task["id"], {"revisit": {**base, "follow_up_actions": [
            {"due": "2026-03-10", "content": "回电", "owner": "nobody"}]}}, user="zhao.min")
    from engine.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as err:
        crm.complete(task["id"], {"revisit": {**base, "topic": "例行回访", "feedback_points": []}}, user="zhao.min")
    assert set(err.value.field_errors) == {"revisit/topic", "revisit/feedback_points"}
    assert crm.tasks(instance_id=iid)[0]["status"] == "ready"
    assert crm.complete(task["id"], {"revisit": base}, user="zhao.min").status == "completed"


def test_basic_customers_get_an_automated_message_only(crm):
    deploy(crm, "customer_revisit.bpmn")
    cid = add(crm, enterprise(1, annual_spend=15_000, first_contact_date="2025-12-01", email="ops@example.com"))
    (iid,) = start_due_revisits(crm)
    assert crm.show(iid)["status"] == "completed" and crm.tasks(instance_id=iid) == []
    with crm.Session() as s:
        (msg,) = s.scalars(select(OutboxMessage).where(OutboxMessage.instance_id == iid))
        assert (msg.topic, msg.recipient) == ("revisit_message", "customer")
        assert msg.payload["phone"] == "13900000001" and msg.payload["email"] == "ops@example.com"
        (contact,) = list_contacts(s, cid)
        assert contact["kind"] == "revisit" and contact["summary"].startswith("Automated revisit message sent (sms)")
        assert get_customer(s, cid)["revisit_due_at"] == utc(sh(2026, 4, 2, 9)).isoformat()
    assert _revisits(crm)[0].status == "completed"


def test_potential_customers_are_followed_up_by_sales(crm):
    deploy(crm, "customer_revisit.bpmn")
    add(crm, enterprise(1, has_inquiries=True, first_contact_date="2025-12-01"))
    (iid,) = start_due_revisits(crm)
    (task,) = crm.tasks(instance_id=iid)
    assert (task["name"], task["lane"], task["assignee"]) == ("ut_sales_follow_up", "sales", "zhao.min")


def test_another_process_asks_for_a_revisit_after_a_fix(crm):
    deploy(crm, "customer_revisit.bpmn")
    crm.deploy([FIXTURES / "crm_request_revisit.bpmn"])
    cid = add(crm, enterprise(1, annual_spend=15_000, first_contact_date="2026-03-01"))  # basic, not due
    asked = crm.start("crm_request_revisit", {"customer_id": cid, "ticket": "SN20260302001"}, actor="wang.fang")
    data = crm.show(asked.instance_id)["data"]
    assert data["info"]["tier"] == "basic"
    (rv,) = _revisits(crm)
    assert (rv.status, rv.kind, rv.source_instance_id, rv.requested_by) == (
        "requested", "requested", asked.instance_id, "wang.fang")
    (iid,) = start_due_revisits(crm)
    assert start_due_revisits(crm) == []
    (task,) = crm.tasks(instance_id=iid)  # a conversation, even for a basic customer
    assert task["assignee"] == "zhao.min" and "SN20260302001 fixed" in task["instructions"]
    with crm.Session() as s:
        kinds = [c["kind"] for c in list_contacts(s, cid)]
    assert kinds == ["ticket"]


def test_cli_revisits_due(runner, crm):
    deploy(crm, "customer_revisit.bpmn")
    add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2026-03-02"))  # due 2026-03-16 09:00
    early = runner.invoke(cli, ["revisits", "due", "--now", "2026-03-16T08:59:00+08:00", "--json"])
    assert early.exit_code == 0, early.output
    assert json.loads(early.output)["started"] == []
    listed = runner.invoke(cli, ["revisits", "due", "--dry-run", "--now", "2026-03-16T09:00:00+08:00"])
    assert "1 customer(s) due" in listed.output
    started = runner.invoke(cli, ["revisits", "due", "--now", "2026-03-16T09:00:00+08:00", "--json"])
    assert len(json.loads(started.output)["started"]) == 1
    again = runner.invoke(cli, ["revisits", "due", "--now", "2026-03-16T09:00:00+08:00"])
    assert again.output.strip() == "Started 0 revisit(s)."
    bad = runner.invoke(cli, ["revisits", "due", "--now", "2026-03-16 09:00"])
    assert bad.exit_code == 2 and "time zone" in bad.output


def test_nothing_starts_when_the_process_is_not_deployed(runner, crm):
    add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2025-12-01"))
    with pytest.raises(NotFound, match="customer_revisit"):
        start_due_revisits(crm)
    result = runner.invoke(cli, ["revisits", "due"])
    assert result.exit_code == 4 and "careflow deploy" in result.output
    with crm.Session() as s:
        assert s.scalar(select(func.count()).select_from(CustomerContact)) == 0


def test_the_worker_starts_due_revisits_once(crm, clock):
    """The timer worker runs the revisit schedule: one instance per due customer, never twice."""
    from engine.worker import SCHEDULE_EVERY, Worker

    deploy(crm, "customer_revisit.bpmn")
    add(crm, enterprise(1, annual_spend=50_000, first_contact_date="2025-12-01"))
    worker = Worker(crm, max_sleep=0.1, listen=False)
    try:
        assert worker.run_pass().revisits == 1
        assert worker.run_pass().revisits == 0  # the schedule runs at most once per SCHEDULE_EVERY
        clock.advance(SCHEDULE_EVERY)
        assert worker.run_pass().revisits == 0  # already started: idempotent
    finally:
        worker.close()
    assert len(_instances(crm)) == 1 and worker.totals.revisits == 1
