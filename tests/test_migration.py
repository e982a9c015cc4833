"""Instance migration between process versions: dry run and real run, per fixture pair, on the
real engine (SQLite and PostgreSQL), including instances that cannot move."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree
from sqlalchemy import select

from engine.audit_verify import verify_chain
from engine.clock import FrozenClock, use_clock
from engine.errors import CareflowError, NotFound, ValidationFailed
from engine.migration import migrate_instances, plan_migration
from engine.models import HumanTask
from engine.runtime import Careflow
from engine.versions import deploy_edited

from migration_helpers import (
    FIX,
    FORMS,
    at_diagnose,
    at_intake,
    deploy,
    only_task,
    run_to_end,
    snapshot,
    timers,
)


def plan_of(plans, iid):
    return next(p for p in plans if p.instance_id == iid)


def task_of(plan, element_id):
    return next(t for t in plan.tasks if t.element_id == element_id)


def audit_rows(cf, iid, action):
    return [a for a in cf.audit(iid) if a["action"] == action]


# ------------------------------------------------------------------------------ task renamed


def test_dry_run_writes_nothing_and_maps_by_id(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    first, second = at_intake(cf), at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_renamed.bpmn")
    before = {i: snapshot(cf, i) for i in (first, second)}

    plans = plan_migration(cf, "mig_ticket", 1, 2)

    assert [p.instance_id for p in plans] == [first, second]
    assert all(p.movable and not p.reasons for p in plans)
    diagnose = task_of(plan_of(plans, second), "diagnose")
    assert diagnose.outcome == "mapped" and diagnose.state == "READY" and diagnose.type == "UserTask"
    assert diagnose.changes == [{"field": "name", "old": "诊断 / Diagnose", "new": "诊断处理 / Diagnose and fix"}]
    assert task_of(plan_of(plans, second), "sla").state == "WAITING"
    assert {i: snapshot(cf, i) for i in (first, second)} == before
    assert not audit_rows(cf, second, "instance_migrated")


def test_renamed_task_moves_with_its_row_timer_and_audit(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    iid = at_diagnose(cf)
    task = only_task(cf, iid)
    [timer_before] = timers(cf, iid)
    v2 = deploy(cf, "mig_ticket_v2_renamed.bpmn", comment="clearer task name")[0]

    report = migrate_instances(cf, "mig_ticket", 1, 2, by="owner")

    assert report.ok and [o.instance_id for o in report.migrated] == [iid] and report.total == 1
    moved = only_task(cf, iid)
    assert moved["id"] == task["id"]  # the same task (and row), not a new one
    assert moved["title"] == "诊断处理 / Diagnose and fix" and moved["lane"] == "technical_support"
    assert moved["due_at"] == task["due_at"] and moved["form_name"] == "mig-diagnose.schema.json"
    with cf.Session() as s:
        row = s.get(HumanTask, task["id"])
        assert row.process_version_id == v2.version_id
    assert timers(cf, iid) == [timer_before]  # the SLA timer keeps its due time
    shown = cf.show(iid)
    assert shown["version"] == 2 and shown["revision"] == 3
    [row] = audit_rows(cf, iid, "instance_migrated")
    assert row["cause"] == "migration" and row["actor"] == "owner"
    assert row["process_version_id"] == v2.version_id
    details = row["details"]
    assert (details["from_version"], details["to_version"], details["run_id"]) == (1, 2, report.run_id)
    assert [m["element_id"] for m in details["mapped"]] == ["diagnose", "sla"]
    assert details["task_rows"][0]["after"]["title"] == "诊断处理 / Diagnose and fix"
    assert run_to_end(cf, iid) == ["diagnose", "revisit"]
    assert verify_chain(cf.db).ok


def test_waiting_timer_still_fires_at_its_original_time_after_migration(settings):
    clock = FrozenClock(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))
    cf = Careflow(settings, clock=clock)
    try:
        with use_clock(clock):
            deploy(cf, "mig_ticket_v1.bpmn")
            iid = at_diagnose(cf)
            [(_, _, due)] = timers(cf, iid)
            assert due == clock.now() + timedelta(hours=24)
            deploy(cf, "mig_ticket_v2_renamed.bpmn")
            clock.advance(timedelta(hours=23))  # the migration happens late in the SLA window
            assert migrate_instances(cf, "mig_ticket", 1, 2).ok
            assert timers(cf, iid)[0][2] == due
            clock.advance(timedelta(minutes=59))
            assert cf.fire_due_timers() == 0
            clock.advance(timedelta(minutes=2))
            assert cf.fire_due_timers() == 1
        assert sorted(t["name"] for t in cf.tasks(instance_id=iid)) == ["diagnose", "escalate"]
        assert cf.show(iid)["version"] == 2
    finally:
        cf.close()


# ------------------------------------------------------------------------------ task added


def test_task_added_after_the_current_position_runs_after_migration(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    first, second = at_intake(cf), at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_added.bpmn")

    plans = plan_migration(cf, "mig_ticket", 1, 2)
    assert all(p.movable for p in plans) and all(not p.lost for p in plans)
    report = migrate_instances(cf, "mig_ticket", 1, 2)

    assert report.ok and len(report.migrated) == 2
    assert run_to_end(cf, first) == ["intake", "diagnose", "confirm", "revisit"]
    assert run_to_end(cf, second) == ["diagnose", "confirm", "revisit"]


# ------------------------------------------------------------------------------ task removed


def test_current_task_removed_cannot_move_and_stays_untouched(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    ahead, stuck = at_intake(cf), at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_removed.bpmn")
    before = snapshot(cf, stuck)

    plans = plan_migration(cf, "mig_ticket", 1, 2)
    blocked = plan_of(plans, stuck)
    assert not blocked.movable
    diagnose = task_of(blocked, "diagnose")
    assert diagnose.outcome == "blocked" and "diagnose" in diagnose.reason and "removes it" in diagnose.reason
    assert any("diagnose" in r for r in blocked.reasons)
    fine = plan_of(plans, ahead)
    assert fine.movable and [e["element_id"] for e in fine.lost] == ["diagnose", "escalate", "sla"]
    assert task_of(fine, "intake").changes == [{"field": "outgoing flow", "old": ["diagnose"], "new": ["classify"]}]

    seen = []
    report = migrate_instances(cf, "mig_ticket", 1, 2, by="owner", progress=lambda *a: seen.append(a[:2]))

    assert not report.ok and seen == [(1, 2), (2, 2)]
    assert [o.instance_id for o in report.migrated] == [ahead]
    [failed] = report.failed
    assert failed.instance_id == stuck and failed.reasons == blocked.reasons
    assert snapshot(cf, stuck) == before  # nothing half-migrated
    [row] = audit_rows(cf, stuck, "migration_failed")
    assert row["cause"] == "migration" and row["details"]["reasons"] == blocked.reasons
    assert row["details"]["blocked"][0]["element_id"] == "diagnose"
    assert cf.show(stuck)["version"] == 1 and cf.show(ahead)["version"] == 2
    assert run_to_end(cf, stuck) == ["diagnose", "revisit"]  # still runs on its version
    assert run_to_end(cf, ahead) == ["intake", "revisit"]
    assert verify_chain(cf.db).ok


def test_history_through_a_removed_element_cannot_move(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    iid = at_diagnose(cf)
    cf.complete(only_task(cf, iid)["id"], {"fixed": True}, user="ts1")  # now at revisit, diagnose passed
    deploy(cf, "mig_ticket_v2_removed.bpmn")

    [plan] = plan_migration(cf, "mig_ticket", 1, 2)

    assert not plan.movable
    assert any("already passed '诊断 / Diagnose' (diagnose)" in r for r in plan.reasons)
    assert task_of(plan, "revisit").outcome == "mapped"
    assert not migrate_instances(cf, "mig_ticket", 1, 2).ok


# ------------------------------------------------------------------------------ lane changed


def test_lane_change_moves_the_open_task_to_the_new_group(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    iid = at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_lane.bpmn")

    [plan] = plan_migration(cf, "mig_ticket", 1, 2)
    assert {"field": "lane", "old": "technical_support", "new": "supervisor"} in task_of(plan, "diagnose").changes
    assert migrate_instances(cf, "mig_ticket", 1, 2).ok

    task = only_task(cf, iid)
    assert (task["lane"], task["group"]) == ("supervisor", "supervisor")
    assert cf.tasks(user="sup1", groups=["supervisor"])[0]["id"] == task["id"]
    assert cf.tasks(user="ts1", groups=["technical_support"]) == []
    [row] = audit_rows(cf, iid, "instance_migrated")
    [change] = row["details"]["task_rows"]
    assert change["before"]["group"] == "technical_support" and change["after"]["group"] == "supervisor"


# ------------------------------------------------------------------------------ timer changed


def test_a_changed_waiting_timer_cannot_move(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    ahead, waiting = at_intake(cf), at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_timer.bpmn")

    plans = plan_migration(cf, "mig_ticket", 1, 2)

    assert plan_of(plans, ahead).movable  # its timer has not started yet
    sla = task_of(plan_of(plans, waiting), "sla")
    assert sla.outcome == "blocked" and '"PT24H"' in sla.reason and '"PT8H"' in sla.reason
    report = migrate_instances(cf, "mig_ticket", 1, 2)
    assert [o.instance_id for o in report.failed] == [waiting]


# ------------------------------------------------------------------------------ call activity


def test_running_call_activity_whose_callee_changed_incompatibly(cf):
    deploy(cf, "mig_call_v1.bpmn")
    at_schedule = at_intake(cf, "mig_repair")
    at_visit = at_intake(cf, "mig_repair")
    cf.complete(only_task(cf, at_visit)["id"], {"fixed": False}, user="ts1")
    assert only_task(cf, at_visit)["name"] == "visit"
    deploy(cf, "mig_call_v2_removed.bpmn")

    plans = plan_migration(cf, "mig_repair", 1, 2)

    blocked = plan_of(plans, at_visit)
    assert not blocked.movable
    assert task_of(blocked, "visit").outcome == "blocked"
    onsite = task_of(blocked, "onsite")
    assert onsite.state == "STARTED" and onsite.outcome == "blocked" and "mig_onsite" in onsite.reason
    fine = plan_of(plans, at_schedule)
    assert fine.movable and [e["element_id"] for e in fine.lost] == ["visit"]
    report = migrate_instances(cf, "mig_repair", 1, 2)
    assert [o.instance_id for o in report.failed] == [at_visit]
    assert run_to_end(cf, at_schedule) == ["schedule", "revisit"]
    assert run_to_end(cf, at_visit) == ["visit", "revisit"]


def test_task_added_after_a_running_call_activity_is_not_skipped(cf):
    deploy(cf, "mig_call_v1.bpmn")
    iid = at_intake(cf, "mig_repair")
    deploy(cf, "mig_call_v2_added.bpmn")

    report = migrate_instances(cf, "mig_repair", 1, 2)

    assert report.ok
    # SpiffWorkflow's migrate_workflow alone keeps the old prediction after a STARTED call activity
    assert run_to_end(cf, iid) == ["schedule", "visit", "revisit", "survey"]


def test_running_multi_instance_moves_after_a_restart(cf):
    deploy(cf, "mig_loop_v1.bpmn")
    iid = at_intake(cf, "mig_loop")
    first, second = cf.tasks(instance_id=iid)
    cf.complete(first["id"], {"satisfied": True}, user="cs1")  # one of two contacts done
    deploy(cf, "mig_loop_v2_added.bpmn")
    cf.specs.clear()  # a restarted process parses the specs again
    cf._wf_cache.clear()

    assert migrate_instances(cf, "mig_loop", 1, 2).ok

    # the remaining iteration still finishes the loop, and the task added after it runs
    assert run_to_end(cf, iid) == ["contact", "summary", "wrap_up"]


def test_changed_form_of_an_open_task_moves_with_the_new_schema(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    iid = at_diagnose(cf)
    form = json.loads(FORMS["mig-diagnose.schema.json"])
    form["required"] = ["fixed", "steps"]
    deploy_edited(cf, "mig_ticket", 1, (FIX / "mig_ticket_v1.bpmn").read_text(encoding="utf-8"),
                  {"mig-diagnose.schema.json": form})

    [plan] = plan_migration(cf, "mig_ticket", 1, 2)
    assert [c["field"] for c in task_of(plan, "diagnose").changes] == ["form schema"]
    assert migrate_instances(cf, "mig_ticket", 1, 2).ok

    task = only_task(cf, iid)
    assert task["form"]["required"] == ["fixed", "steps"]
    with pytest.raises(ValidationFailed) as exc:
        cf.complete(task["id"], {"fixed": True}, user="ts1")
    assert "steps" in exc.value.field_errors
    cf.complete(task["id"], {"fixed": True, "steps": "重装驱动 / reinstalled the driver"}, user="ts1")
    [completed] = [a for a in cf.audit(iid) if a["action"] == "task_completed" and a["task_name"] == "diagnose"]
    with cf.Session() as s:
        assert completed["form_version"] == s.get(HumanTask, task["id"]).form_checksum


# ------------------------------------------------------------------------------ selection, batches, safety


def test_selected_instances_then_all_in_batches(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    ids = [at_intake(cf) for _ in range(5)]
    done = cf.start("mig_ticket", {}).instance_id
    run_to_end(cf, done)
    deploy(cf, "mig_ticket_v2_added.bpmn")

    first = migrate_instances(cf, "mig_ticket", 1, 2, instance_ids=[ids[3], ids[1]])
    assert [o.instance_id for o in first.migrated] == [ids[3], ids[1]]
    calls = []
    rest = migrate_instances(cf, "mig_ticket", 1, 2, batch_size=2, progress=lambda d, t, o: calls.append((d, t)))

    assert [o.instance_id for o in rest.migrated] == [ids[0], ids[2], ids[4]]  # the completed one is left alone
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert {cf.show(i)["version"] for i in ids} == {2} and cf.show(done)["version"] == 1
    again = migrate_instances(cf, "mig_ticket", 1, 2)
    assert again.total == 0 and again.ok


def test_instances_not_on_the_source_version_are_reported(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    old = at_intake(cf)
    deploy(cf, "mig_ticket_v2_renamed.bpmn")
    new = at_intake(cf)
    finished = at_intake(cf)
    with pytest.raises(CareflowError):
        migrate_instances(cf, "mig_ticket", 2, 2)
    with pytest.raises(NotFound, match="no version 7"):
        plan_migration(cf, "mig_ticket", 1, 7)

    report = migrate_instances(cf, "mig_ticket", 1, 2, instance_ids=[old, new, 999_999])

    assert [o.instance_id for o in report.migrated] == [old]
    reasons = {o.instance_id: o.reasons[0] for o in report.failed}
    assert f"instance {new} is on version 2, not on version 1" == reasons[new]
    assert "no instance 999999" in reasons[999_999]
    assert cf.show(finished)["version"] == 2


def test_a_failure_while_saving_rolls_the_instance_back(cf, monkeypatch):
    deploy(cf, "mig_ticket_v1.bpmn")
    iid = at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_renamed.bpmn")
    before = snapshot(cf, iid)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cf, "_sync_timers", broken)  # after the task rows were already updated
    report = migrate_instances(cf, "mig_ticket", 1, 2)

    assert not report.ok and report.failed[0].reasons == ["RuntimeError: disk full"]
    assert snapshot(cf, iid) == before
    assert audit_rows(cf, iid, "migration_failed")[0]["details"]["reasons"] == ["RuntimeError: disk full"]
    monkeypatch.undo()
    assert migrate_instances(cf, "mig_ticket", 1, 2).ok
    assert only_task(cf, iid)["title"] == "诊断处理 / Diagnose and fix"


def test_task_rows_stay_consistent_after_migration(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    ids = [at_diagnose(cf) for _ in range(3)]
    v2 = deploy(cf, "mig_ticket_v2_lane.bpmn")[0]
    assert migrate_instances(cf, "mig_ticket", 1, 2).ok
    with cf.Session() as s:
        ready = s.scalars(select(HumanTask).where(HumanTask.status == "ready")).all()
        cancelled = s.scalars(select(HumanTask).where(HumanTask.status == "cancelled")).all()
    assert len(ready) == 3 and not cancelled
    assert {r.process_version_id for r in ready} == {v2.version_id}
    assert sorted(r.instance_id for r in ready) == ids


def test_boundary_events_removed_from_an_open_task_cannot_move(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    ahead, open_task = at_intake(cf), at_diagnose(cf)
    root = etree.fromstring((FIX / "mig_ticket_v1.bpmn").read_bytes())
    for el in list(root.iter()):
        if el.get("id") in ("sla", "f_sla_escalate", "sla_di", "f_sla_escalate_di") or el.text in ("sla",
                                                                                                 "f_sla_escalate"):
            el.getparent().remove(el)
    deploy_edited(cf, "mig_ticket", 1, etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

    plans = plan_migration(cf, "mig_ticket", 1, 2)

    assert plan_of(plans, ahead).movable
    blocked = plan_of(plans, open_task)
    assert task_of(blocked, "diagnose").reason == (
        "'诊断 / Diagnose' (diagnose) is open and version 2 changes its boundary events (removed sla); "
        "boundary events are set up when the activity starts")
    assert task_of(blocked, "sla").outcome == "blocked"
