"""Complaints: the 1-24-48 rule through workflows/complaint.bpmn, milestones, the weekly review by cause."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from careflow.cli import cli
from engine import sla
from engine.clock import FrozenClock
from engine.complaints import get_complaint, register_complaint_in, update_complaint_in, weekly_review
from engine.customers import list_contacts
from engine.errors import NotFound, ScriptError, ValidationFailed
from engine.runtime import Careflow

from crm_helpers import add, add_user, deploy, enterprise, sh, utc


@pytest.fixture
def clock():
    return FrozenClock(sh(2026, 3, 2, 10))  # Monday 10:00 China time


@pytest.fixture
def crm(settings, clock):
    eng = Careflow(settings, clock=clock)
    add_user(eng, "li.na", role="supervisor", groups=("customer_service", "supervisor"))
    add_user(eng, "zhang.wei", groups=("customer_service",), supervisor="li.na")
    yield eng
    eng.close()


def _record_form(cid: int, received_at: str) -> dict:
    return {"complaint": {
        "channel": "phone", "received_at": received_at,
        "customer": {"customer_type": "enterprise", "name": "测试科技有限公司1号", "customer_id": str(cid),
                     "phone": "13900000001"},
        "complainant": {"name": "王建国"}, "content": "报修两天无人回电，设备一直停机",
        "customer_demand": "今天安排工程师上门", "cause_category": "response_delay", "severity": "high"}}


def _task(cf, instance_id: int, name: str) -> dict:
    ready = [t for t in cf.tasks(instance_id=instance_id) if t["name"] == name]
    assert ready, f"no ready task {name}: {[t['name'] for t in cf.tasks(instance_id=instance_id)]}"
    return ready[0]


def _at(clock, hours: float) -> str:
    return (clock.now() + timedelta(hours=hours)).isoformat()


def _run_to_the_end(crm, clock, iid: int, plan_after_hours: float) -> None:
    crm.complete(_task(crm, iid, "ut_investigate")["id"], {"investigation": {
        "findings": "派单遗漏，工程师未收到工单", "substantiated": True, "cause_category": "response_delay"}},
        user="zhang.wei")
    clock.advance(timedelta(hours=plan_after_hours))
    crm.complete(_task(crm, iid, "ut_plan")["id"], {"plan": {
        "summary": "当天上门维修并致歉", "executor": "zhang.wei", "compensation": {"kind": "apology"},
        "actions": [{"content": "安排工程师上门", "owner": "zhang.wei", "due": "2026-03-03"}]}}, user="li.na")
    carry = _task(crm, iid, "ut_carry_out")
    assert carry["assignee"] == "zhang.wei"
    clock.advance(timedelta(hours=2))
    crm.complete(carry["id"], {"execution": {"actions": [{"content": "安排工程师上门", "done": True}],
                                             "completed_at": _at(clock, 0)}}, user="zhang.wei")
    crm.complete(_task(crm, iid, "ut_follow_up")["id"], {"feedback": {
        "contacted_at": _at(clock, 0), "mode": "phone", "resolved": True, "satisfaction": 4}}, user="zhang.wei")
    special = _task(crm, iid, "ut_special_revisit")
    assert special["lane"] == "supervisor"
    crm.complete(special["id"], {"special_revisit": {
        "contacted_at": _at(clock, 0), "mode": "phone", "resolved": True, "satisfaction": 4,
        "customer_opinion": "处理及时，问题已解决"}}, user="li.na")


def test_complaint_path_with_its_three_deadlines(crm, clock):
    deploy(crm, "complaint.bpmn")
    cid = add(crm, enterprise(1))
    started = crm.start("complaint", {}, actor="zhang.wei")
    iid = started.instance_id
    record = _task(crm, iid, "ut_complaint_record")
    assert record["due_at"] == (clock.now() + timedelta(hours=1)).isoformat()
    crm.complete(record["id"], _record_form(cid, "2026-03-02T09:40:00+08:00"), user="zhang.wei")
    case = crm.show(iid)["data"]["complaint_case"]
    assert case["number"] == "CP20260302001"
    assert case["respond_due"] == utc(sh(2026, 3, 2, 10, 40)).isoformat()   # 1 h from receipt
    assert case["plan_due"] == utc(sh(2026, 3, 3, 9, 40)).isoformat()       # 24 h
    assert case["resolve_due"] == utc(sh(2026, 3, 4, 9, 40)).isoformat()    # 48 h
    assert _task(crm, iid, "ut_investigate")["due_at"] == case["plan_due"]
    with crm.Session() as s:
        c = get_complaint(s, case["number"])
        assert (c["status"], c["customer_id"], c["cause"], c["recorded_by"]) == (
            "investigating", cid, "response_delay", "zhang.wei")
        assert c["responded_at"] == clock.now().isoformat() and c["in_time"]["respond"] is True
        assert {r["name"]: r["status"] for r in sla.clocks_for(s, case["number"])}["respond"] == "met"
        (contact,) = list_contacts(s, cid)
        assert contact["kind"] == "complaint" and case["number"] in contact["summary"]

    _run_to_the_end(crm, clock, iid, plan_after_hours=20)
    assert crm.show(iid)["status"] == "completed"
    with crm.Session() as s:
        c = get_complaint(s, case["number"])
        assert c["status"] == "closed" and c["satisfaction"] == 4 and c["substantiated"] is True
        assert c["in_time"] == {"respond": True, "plan": True, "resolve": True}
        assert c["planned_at"] == utc(sh(2026, 3, 3, 6)).isoformat()
        assert c["resolved_at"] == c["closed_at"] == utc(sh(2026, 3, 3, 8)).isoformat()
        assert {r["name"]: r["status"] for r in sla.clocks_for(s, case["number"])} == {
            "respond": "met", "plan": "met", "resolve": "met"}
        assert [x["summary"] for x in list_contacts(s, cid)][0] == f"Complaint {case['number']} closed " \
                                                                  "(satisfaction 4/5)"
        review = weekly_review(s, "2026-W10")
    assert review["total"] == 1 and review["resolved_within_48h"] == 1 and review["late"] == 0


def test_a_late_plan_is_late_everywhere(crm, clock):
    deploy(crm, "complaint.bpmn")
    cid = add(crm, enterprise(1))
    iid = crm.start("complaint", {}, actor="zhang.wei").instance_id
    crm.complete(_task(crm, iid, "ut_complaint_record")["id"], _record_form(cid, clock.now().isoformat()),
                 user="zhang.wei")
    _run_to_the_end(crm, clock, iid, plan_after_hours=30)
    with crm.Session() as s:
        (c,) = [get_complaint(s, "CP20260302001")]
        assert c["in_time"] == {"respond": True, "plan": False, "resolve": True}
        assert {r["name"]: r["status"] for r in sla.clocks_for(s, c["number"])}["plan"] == "breached"
        review = weekly_review(s, "2026-W10")
    (cause,) = review["causes"]
    assert (cause["cause"], cause["late"], cause["planned_in_time"], cause["resolved_in_time"]) == (
        "response_delay", 1, 0, 1)


def test_registering_without_the_sla_module_gives_the_same_deadlines(crm, monkeypatch):
    cid = add(crm, enterprise(1))
    data = _record_form(cid, "2026-03-02T09:40:00+08:00")["complaint"]
    with crm.Session() as s, s.begin():
        with_sla = register_complaint_in(s, data, pm=crm.pm, actor="zhang.wei", now=crm.now())
    monkeypatch.delattr(sla, "open_clocks")
    with crm.Session() as s, s.begin():
        without = register_complaint_in(s, data, pm=crm.pm, actor="zhang.wei", now=crm.now())
    assert (with_sla["number"], without["number"]) == ("CP20260302001", "CP20260302002")
    for key in ("respond_due", "plan_due", "resolve_due"):
        assert with_sla[key] == without[key]


def test_customers_are_linked_by_id_or_phone_and_bad_input_is_refused(crm):
    cid = add(crm, enterprise(1))
    base = _record_form(cid, "2026-03-02T09:40:00+08:00")["complaint"]
    with crm.Session() as s, s.begin():
        by_phone = register_complaint_in(s, {**base, "customer": {**base["customer"], "customer_id": "",
                                                                  "phone": "+86 139 0000 0001"}}, pm=crm.pm, now=crm.now())
        unknown = register_complaint_in(s, {**base, "customer": {"customer_type": "individual", "name": "路人甲",
                                                                 "phone": "13700000000"}}, pm=crm.pm, now=crm.now())
        assert by_phone["customer_id"] == cid and unknown["customer_id"] is None
        assert get_complaint(s, unknown["number"])["customer_name"] == "路人甲"
        update_complaint_in(s, by_phone["number"], status="resolved", resolved_at="2026-03-02T09:50:00+08:00",
                            now=crm.now())
        done = get_complaint(s, by_phone["number"])  # implied earlier milestones: no later than the resolution
        assert done["responded_at"] == done["planned_at"] == done["resolved_at"] == utc(sh(2026, 3, 2, 9, 50)).isoformat()
        with pytest.raises(ValueError, match="in the future"):
            register_complaint_in(s, {**base, "received_at": "2026-03-02T12:00:00+08:00"}, pm=crm.pm, now=crm.now())
        with pytest.raises(ValueError, match="time zone"):
            register_complaint_in(s, {**base, "received_at": "2026-03-02T09:00:00"}, pm=crm.pm, now=crm.now())
        with pytest.raises(NotFound):
            update_complaint_in(s, "CP19990101001", status="resolved", now=crm.now())
        with pytest.raises(ValueError, match="lower-case word"):
            update_complaint_in(s, by_phone["number"], status="Resolved!", now=crm.now())


def test_a_bad_receipt_time_refuses_the_form_step(crm):
    deploy(crm, "complaint.bpmn")
    cid = add(crm, enterprise(1))
    iid = crm.start("complaint", {}, actor="zhang.wei").instance_id
    task = _task(crm, iid, "ut_complaint_record")
    with pytest.raises(ScriptError, match="in the future"):
        crm.complete(task["id"], _record_form(cid, "2026-03-05T09:00:00+08:00"), user="zhang.wei")
    assert _task(crm, iid, "ut_complaint_record")["id"] == task["id"]


def test_weekly_review_groups_a_china_week_by_cause(crm, clock):
    cid = add(crm, enterprise(1))
    base = _record_form(cid, "")["complaint"]
    received = [("2026-03-02T08:00:00+08:00", "response_delay"), ("2026-03-04T15:00:00+08:00", "response_delay"),
                ("2026-03-08T23:30:00+08:00", "billing"),         # Sunday night: still week 10
                ("2026-03-09T00:10:00+08:00", "billing"),         # Monday 00:10 China time: week 11
                ("2026-03-05T11:00:00+08:00", None)]
    clock.set(sh(2026, 3, 9, 1))
    with crm.Session() as s, s.begin():
        numbers = [register_complaint_in(s, {**base, "received_at": at, "cause_category": cause}, pm=crm.pm,
                                         now=crm.now())["number"] for at, cause in received]
        update_complaint_in(s, numbers[0], status="resolved", actor="zhang.wei",
                            responded_at="2026-03-02T08:30:00+08:00", planned_at="2026-03-02T20:00:00+08:00",
                            resolved_at="2026-03-04T07:00:00+08:00", now=crm.now())  # 47 h after receipt
        update_complaint_in(s, numbers[1], status="executing", planned_at="2026-03-05T10:00:00+08:00",
                            now=crm.now())
    with crm.Session() as s:
        review = weekly_review(s, "2026-w10", now=crm.now())
        current = weekly_review(s, now=crm.now())
    assert review["week"] == "2026-W10" and review["from"] == utc(sh(2026, 3, 2)).isoformat()
    assert review["total"] == 4 and review["resolved"] == 1 and review["resolution_rate"] == 0.25
    assert [(g["cause"], g["count"]) for g in review["causes"]] == [("response_delay", 2), ("billing", 1),
                                                                     ("unclassified", 1)]
    delay = review["causes"][0]
    assert (delay["resolved"], delay["open"], delay["resolved_in_time"], delay["mean_hours_to_resolve"]) == (
        1, 1, 1, 47.0)
    assert delay["late"] == 1  # the open one passed its 24 h plan deadline (planned 43 h after receipt)
    assert delay["label"] == {"en": "Slow response", "zh": "响应不及时"}
    assert [c["number"] for c in delay["complaints"]] == numbers[:2]
    assert current["week"] == "2026-W11" and current["total"] == 1
    with pytest.raises(ValidationFailed):
        with crm.Session() as s:
            weekly_review(s, "2026-W60")


def test_cli_complaints_review_and_show(runner, crm):
    cid = add(crm, enterprise(1))
    with crm.Session() as s, s.begin():
        number = register_complaint_in(s, _record_form(cid, "2026-03-02T09:40:00+08:00")["complaint"],
                                       pm=crm.pm, now=crm.now())["number"]
    out = runner.invoke(cli, ["complaints", "review", "--week", "2026-W10", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["causes"][0]["complaints"][0]["number"] == number
    text = runner.invoke(cli, ["complaints", "review", "--week", "2026-W10"])
    assert "响应不及时 / Slow response: 1" in text.output
    shown = runner.invoke(cli, ["complaints", "show", number])
    assert shown.exit_code == 0 and "respond " in shown.output
    assert runner.invoke(cli, ["complaints", "review", "--week", "last"]).exit_code == 2
    assert runner.invoke(cli, ["complaints", "show", "CP1"]).exit_code == 4
