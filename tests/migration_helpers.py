"""Helpers for the version and migration tests: deploy the ``mig_*`` fixtures under one file
name (as the modeler would), and drive ``mig_ticket`` / ``mig_repair`` instances."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from engine.deploy import Bundle
from engine.models import HumanTask, Instance, Timer

FIX = Path(__file__).parent / "fixtures"
FORMS = {p.name: p.read_bytes() for p in sorted((FIX / "forms").glob("mig-*.schema.json"))}
INTAKE = {"ticket": "SN20261123001", "customer": "杭州星河制造有限公司", "priority": "urgent"}
ANSWERS = {"intake": INTAKE, "diagnose": {"fixed": True, "steps": "更换电源 / replaced the PSU"},
           "confirm": {"satisfied": True}, "revisit": {"satisfied": True, "rating": 5},
           "survey": {"satisfied": True, "rating": 4}, "schedule": {"fixed": False}, "visit": {"fixed": True},
           "escalate": {}, "contact": {"satisfied": True}, "summary": {"satisfied": True},
           "wrap_up": {"satisfied": True}}


def deploy(cf, fixture: str, *, file: str | None = None, author: str = "owner", comment: str | None = None):
    """Deploy a fixture as ``mig_ticket.bpmn`` / ``mig_repair.bpmn`` (one file name across versions)."""
    name = file or {"mig_call": "mig_repair.bpmn", "mig_loop": "mig_loop.bpmn"}.get(fixture[:8], "mig_ticket.bpmn")
    bundle = Bundle(bpmn={name: (FIX / fixture).read_bytes()}, forms=dict(FORMS))
    return cf.deploy(bundle, author=author, comment=comment or fixture)


def only_task(cf, instance_id: int) -> dict:
    """The single ready task of an instance."""
    tasks = cf.tasks(instance_id=instance_id)
    assert len(tasks) == 1, tasks
    return tasks[0]


def at_intake(cf, process_id: str = "mig_ticket") -> int:
    """A new instance waiting at its first task."""
    return cf.start(process_id, {}, actor="cs1").instance_id


def at_diagnose(cf) -> int:
    """A ``mig_ticket`` instance past intake: diagnose ready, its SLA timer waiting."""
    iid = at_intake(cf)
    cf.complete(only_task(cf, iid)["id"], INTAKE, user="cs1")
    assert only_task(cf, iid)["name"] == "diagnose"
    return iid


def run_to_end(cf, instance_id: int, limit: int = 10) -> list[str]:
    """Complete ready tasks until the instance ends; returns the task names in order."""
    names = []
    for _ in range(limit):
        tasks = cf.tasks(instance_id=instance_id)
        if not tasks:
            break
        task = tasks[0]
        cf.complete(task["id"], ANSWERS[task["name"]], user="agent")
        names.append(task["name"])
    assert cf.show(instance_id)["status"] == "completed", names
    return names


def snapshot(cf, instance_id: int) -> dict:
    """Everything a migration may change about an instance (to prove a failed one changed nothing)."""
    with cf.Session() as s:
        inst = s.get(Instance, instance_id)
        tasks = s.scalars(select(HumanTask).where(HumanTask.instance_id == instance_id)
                          .order_by(HumanTask.id)).all()
        timers = s.scalars(select(Timer).where(Timer.instance_id == instance_id).order_by(Timer.id)).all()
        return {"version_id": inst.process_version_id, "revision": inst.revision, "state": inst.state,
                "status": inst.status,
                "tasks": [(t.id, t.status, t.process_version_id, t.title, t.lane, t.group_name) for t in tasks],
                "timers": [(t.task_id, t.due_at, t.status) for t in timers]}


def timers(cf, instance_id: int, status: str = "waiting") -> list:
    """(task id, name, due) of an instance's timer rows in a state."""
    with cf.Session() as s:
        return [(t.task_id, t.name, t.due_at) for t in s.scalars(
            select(Timer).where(Timer.instance_id == instance_id, Timer.status == status))]
