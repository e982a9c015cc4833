"""The dict scans of ``engine.fastpath`` answer exactly what SpiffWorkflow's tree walk answers.

``fastpath.CHECK`` makes every fast call also ask the tree walk and fail on any difference
(list order included); the tests below turn it on and drive real processes through the
engine: the after-sales ticket (a looped call activity with reopen rounds, a boundary
timer, the on-site branch), a parallel multi-instance task, a standard loop, a call
activity and a timer. One more runs the same ticket twice, with and without the scans,
and finds the same audit chain, rows and state.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import logging
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import SpiffWorkflow.task
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.mixins.subworkflow_task import CallActivity, SubWorkflowTask
from SpiffWorkflow.bpmn.util.subworkflow import BpmnSubWorkflow
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser
from SpiffWorkflow.util.task import TaskState
from SpiffWorkflow.workflow import Workflow
from sqlalchemy import select

import engine.runtime
from engine import fastpath
from engine.config import Settings
from engine.fastpath import _TREE_GET_TASKS, accelerate, tree_copy
from engine.models import HumanTask, OutboxMessage, Timer

from migration_helpers import ANSWERS, at_intake, deploy, only_task, run_to_end
from ticket_helpers import (
    CS,
    RISK_ON_TRACK,
    TICKET_BPMN,
    TS,
    Flow,
    diagnosis,
    intake,
    onsite,
    remote,
    revisit,
    sh,
    ticket_engine,
    visit_plan,
)

BENCH = Path(__file__).resolve().parents[1] / "bench"
MIN = timedelta(minutes=1)
STATES = [TaskState.READY, TaskState.WAITING, TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FUTURE,
          TaskState.LIKELY | TaskState.MAYBE, TaskState.STARTED]
FAST_METHODS = ("get_tasks", "update_waiting_tasks", "is_completed", "collect_log_extras")


@pytest.fixture
def checked(monkeypatch):
    """CHECK mode on; counts the compared answers by (query, 0/1/2-or-more tasks)."""
    seen: collections.Counter = collections.Counter()
    compare = fastpath._check_same

    def counting(fast, walked, what, kwargs):
        compare(fast, walked, what, kwargs)
        seen[(what, min(len(fast), 2))] += 1

    monkeypatch.setattr(fastpath, "CHECK", True)
    monkeypatch.setattr(fastpath, "_check_same", counting)
    return seen


def ticket_rounds(f: Flow) -> None:
    """An after-sales ticket through three rounds: the deadline warning fires and is answered, a
    failed remote fix goes on site and stays unfixed, a revisit finds it unsolved, the third round closes."""
    f.start()
    f.do("ut_intake", CS, intake(sh(2026, 11, 23, 9)), "zhang.wei", after=5 * MIN)
    f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=30 * MIN)
    assert f.fire(sh(2026, 11, 23, 12, 15)) == 1  # the boundary timer of the solution deadline
    assert f.ready_names() == ["ut_deadline_risk", "ut_remote"]
    f.do("ut_deadline_risk", TS, RISK_ON_TRACK, "liu.yang", after=5 * MIN)
    f.do("ut_remote", TS, remote(sh(2026, 11, 23, 12, 30), solved=False), "liu.yang", after=10 * MIN)
    f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 23, 15)), "liu.yang", after=10 * MIN)
    f.do("ut_onsite", TS, onsite(sh(2026, 11, 23, 15), sh(2026, 11, 23, 16), resolved=False), "liu.yang",
         after=timedelta(hours=3))
    f.do("ut_diagnose", TS, diagnosis(f.now()), "liu.yang", after=30 * MIN)  # round 2
    f.do("ut_remote", TS, remote(f.now() + 30 * MIN), "liu.yang", after=30 * MIN)
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 24, 10), solved=False, overall=3), "wang.fang",
         after=timedelta(hours=17))
    f.do("ut_diagnose", TS, diagnosis(f.now()), "liu.yang", after=30 * MIN)  # round 3
    f.do("ut_remote", TS, remote(f.now() + 30 * MIN), "liu.yang", after=30 * MIN)
    f.do("ut_revisit", CS, revisit(sh(2026, 11, 25, 10)), "wang.fang", after=timedelta(hours=20))
    assert f.ticket().status == "closed"


@pytest.mark.parametrize("cached", [True, False], ids=["live-workflow", "restored-every-step"])
def test_scans_match_the_walk_through_ticket_rounds(settings, checked, cached):
    gen = ticket_engine(settings)
    cf, clock = next(gen)
    try:
        if not cached:
            cf.wf_cache_size = 0  # every step restores the state: subprocesses come from the database
        ticket_rounds(Flow(cf, clock))
    finally:
        gen.close()
    # the ready lists of the engine loop, the waiting updates and the completion test were all compared,
    # lists of two or more tasks (whose order the scan has to sort out) included
    assert checked[("get_tasks", 1)] > 50 and checked[("get_tasks", 2)] > 0
    assert checked[("update_waiting_tasks", 1)] > 0
    assert checked[("get_tasks(spec_name)", 1)] > 5  # the start events of the process and its subprocesses


def test_scans_match_the_walk_in_a_multi_instance_task_a_loop_and_a_call_activity(cf, checked):
    deploy(cf, "mig_loop_v1.bpmn")  # two parallel iterations of a user task
    iid = at_intake(cf, "mig_loop")
    assert len(cf.tasks(instance_id=iid)) == 2
    assert run_to_end(cf, iid) == ["contact", "contact", "summary"]

    deploy(cf, "mig_call_v1.bpmn")  # a call activity
    iid = at_intake(cf, "mig_repair")
    run_to_end(cf, iid)

    deploy(cf, "mig_ticket_v1.bpmn")  # a boundary timer on a user task
    iid = at_intake(cf, "mig_ticket")
    run_to_end(cf, iid)

    cf.deploy([BENCH / "history.bpmn"])  # a standard loop
    r = cf.start("bench_history", {"done": False})
    for i in range(12):
        cf.complete(only_task(cf, r.instance_id)["id"], {"done": i == 11, "entry": f"e{i}"}, user="u")
    assert cf.show(r.instance_id)["status"] == "completed"
    assert checked[("get_tasks", 2)] > 0 and checked[("get_tasks", 1)] > 20
    assert ANSWERS  # (the answers run_to_end gives)


def _live(cf, instance_id: int) -> BpmnWorkflow:
    return cf._wf_cache[instance_id][1]


@contextlib.contextmanager
def _after_intake(settings):
    """(engine, flow, live workflow) of an after-sales instance whose intake was just completed."""
    gen = ticket_engine(settings)
    cf, clock = next(gen)
    try:
        f = Flow(cf, clock).start()
        f.do("ut_intake", CS, intake(clock.now()), "zhang.wei", after=5 * MIN)
        yield cf, f, _live(cf, f.instance_id)
    finally:
        gen.close()


def test_subprocesses_created_or_restored_get_the_scans_and_no_class_changes(settings):
    with _after_intake(settings) as (cf, f, wf):
        assert wf.subprocesses, "the round runs in a subprocess created during the step"
        for w in [wf, *wf.subprocesses.values()]:
            assert all(name in w.__dict__ for name in FAST_METHODS)
            assert _all_quiet(w)
        cf._forget(f.instance_id)
        f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 20)), "liu.yang", after=25 * MIN)
        restored = _live(cf, f.instance_id)
        assert restored is not wf and restored.subprocesses
        for w in [restored, *restored.subprocesses.values()]:
            assert all(name in w.__dict__ for name in FAST_METHODS)
            assert _all_quiet(w)
        for state in STATES:  # READY is scanned, the rest still walk the tree: all agree
            assert [t.id for t in restored.get_tasks(state=state)] == \
                [t.id for t in _TREE_GET_TASKS(restored, None, state=state)], TaskState.get_name(state)
        assert [t.task_spec.bpmn_id for t in restored.get_tasks(state=TaskState.READY)] == ["ut_remote"]
    # SpiffWorkflow's classes are untouched: the bare baseline in the same process stays bare
    assert BpmnWorkflow.get_tasks is Workflow.get_tasks
    assert BpmnWorkflow.update_waiting_tasks is Workflow.update_waiting_tasks
    assert BpmnWorkflow.is_completed is Workflow.is_completed
    assert BpmnSubWorkflow.get_tasks is Workflow.get_tasks
    assert BpmnWorkflow.create_subprocess is fastpath._STOCK_CREATE_SUBPROCESS
    assert SpiffWorkflow.task.Task._set_state is fastpath._STOCK_SET_STATE
    bare = BpmnWorkflow(wf.spec, wf.subprocess_specs)
    assert not any(name in bare.__dict__ for name in (*FAST_METHODS, "create_subprocess"))
    assert type(bare.tasks) is dict and not any("_set_state" in t.__dict__ for t in bare.tasks.values())


def _all_quiet(wf) -> bool:
    """Every task of ``wf`` (and every task it creates: ``wf.tasks`` is the dict that sees to it) changes state quietly."""
    return type(wf.tasks) is fastpath._TaskDict and all("_set_state" in t.__dict__ for t in wf.tasks.values())


def _ids(tasks) -> list:
    return [t.id for t in tasks]


def test_named_queries_match_the_walk_from_every_task(settings, checked):
    """``get_tasks([first_task], spec_name=...)``, every spec name from every task of every workflow,
    in a ticket in its second round (the round's subprocesses repeat their spec names)."""
    gen = ticket_engine(settings)
    cf, clock = next(gen)
    try:
        f = Flow(cf, clock).start()
        f.do("ut_intake", CS, intake(sh(2026, 11, 23, 9)), "zhang.wei", after=5 * MIN)
        f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 30)), "liu.yang", after=30 * MIN)
        f.do("ut_remote", TS, remote(sh(2026, 11, 23, 10), solved=False), "liu.yang", after=10 * MIN)
        f.do("ut_onsite_schedule", TS, visit_plan(sh(2026, 11, 23, 15)), "liu.yang", after=10 * MIN)
        f.do("ut_onsite", TS, onsite(sh(2026, 11, 23, 15), sh(2026, 11, 23, 16), resolved=False), "liu.yang",
             after=timedelta(hours=3))
        assert f.ready_names() == ["ut_diagnose"]  # round 2
        wf = _live(cf, f.instance_id)
        assert len(wf.subprocesses) >= 3
        checked.clear()
        for w in [wf, *wf.subprocesses.values()]:
            names = {t.task_spec.name for t in w.tasks.values()}
            for name in names:
                w.get_tasks(spec_name=name)
                for first in list(w.tasks.values()):
                    w.get_tasks(first, spec_name=name)
            assert _ids(w.get_tasks(spec_name="no such spec")) == []
    finally:
        gen.close()
    # every answer was compared with the walk's (CHECK); several were lists to put in the walk's order
    assert checked[("get_tasks(spec_name)", 0)] > 100 and checked[("get_tasks(spec_name)", 1)] > 100
    assert checked[("get_tasks(spec_name)", 2)] > 10


def test_state_change_records_are_the_same_when_spiff_task_logs(tmp_path, sqlite_template, monkeypatch, caplog):
    """With ``spiff.task`` at INFO the quiet state changes log exactly SpiffWorkflow's records."""
    caplog.set_level(logging.INFO, logger="spiff.task")

    def records() -> list:
        out = [(r.getMessage(), r.task_id, r.task_spec, r.task_type, r.state, r.parent, r.workflow_spec)
               for r in caplog.records if r.name == "spiff.task"]
        caplog.clear()
        return out

    _run_ticket(tmp_path, sqlite_template, "fast", monkeypatch)
    fast = records()
    monkeypatch.setattr(engine.runtime, "accelerate", lambda wf: wf)
    _run_ticket(tmp_path, sqlite_template, "bare", monkeypatch)
    bare = records()
    assert len(fast) > 200 and any(message.startswith("State changed to READY") for message, *_ in fast)
    assert fast == bare


def test_workflow_log_records_keep_their_task_list_when_logged(settings, caplog):
    caplog.set_level(logging.INFO)  # root at INFO, spiff.workflow's own level unset: SpiffWorkflow adds the tasks
    with _after_intake(settings) as (_cf, _f, wf):
        assert wf.subprocesses
        for sub in wf.subprocesses.values():  # created by the accelerated workflow
            started = [r for r in caplog.records if r.name == "spiff.workflow" and r.msg == "Initialized workflow"
                       and getattr(r, "parent_task_id", None) == sub.parent_task_id]
            assert len(started) == 1 and started[0].tasks
            assert set(started[0].tasks) <= set(sub.tasks)


def test_accelerate_is_idempotent_and_keeps_answers(settings):
    with _after_intake(settings) as (_cf, _f, wf):
        before = [t.id for t in wf.get_tasks(state=TaskState.READY)]
        assert accelerate(accelerate(wf)) is wf
        assert [t.id for t in wf.get_tasks(state=TaskState.READY)] == before
        assert [t.id for t in wf.get_tasks(state=TaskState.READY, manual=True)] == \
            [t.id for t in _TREE_GET_TASKS(wf, None, state=TaskState.READY, manual=True)]
        assert wf.is_completed() is False


# -- the same ticket with and without the scans ------------------------------------------------

def _run_ticket(tmp_path: Path, sqlite_template: Path, name: str, monkeypatch) -> dict:
    ids = itertools.count(1)
    monkeypatch.setattr(SpiffWorkflow.task, "uuid4", lambda: uuid.UUID(int=next(ids)))  # same task ids
    path = tmp_path / f"{name}.db"
    shutil.copy(sqlite_template, path)
    gen = ticket_engine(Settings(database_url=f"sqlite:///{path}", home=tmp_path))
    cf, clock = next(gen)
    try:
        f = Flow(cf, clock)
        ticket_rounds(f)
        return _everything(cf, f.instance_id)
    finally:
        gen.close()


def _everything(cf, instance_id: int) -> dict:
    with cf.Session() as s:
        state = cf.stored_state(instance_id)
        for wf in [state, *state["subprocesses"].values()]:
            for task in wf["tasks"].values():
                del task["last_state_change"]  # wall-clock time of the run
        return {
            # without the hashes: personal data is hashed under a random key (engine.pii)
            "audit": [{k: v for k, v in row.items() if k not in ("hash", "prev_hash")}
                      for row in cf.audit(instance_id)],
            "tasks": [(t.id, t.name, t.status, t.group_name, t.assignee, t.due_at, t.completed_at)
                      for t in s.scalars(select(HumanTask).order_by(HumanTask.created_at, HumanTask.id))],
            "timers": [(t.task_id, t.due_at, t.status) for t in s.scalars(select(Timer).order_by(Timer.id))],
            "outbox": [(m.idempotency_key, m.topic, m.recipient, m.payload)
                       for m in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))],
            "state": state,
        }


def test_a_ticket_runs_the_same_with_and_without_the_scans(tmp_path, sqlite_template, monkeypatch):
    fast = _run_ticket(tmp_path, sqlite_template, "fast", monkeypatch)
    monkeypatch.setattr(engine.runtime, "accelerate", lambda wf: wf)
    bare = _run_ticket(tmp_path, sqlite_template, "bare", monkeypatch)
    assert len(fast["audit"]) > 50
    for part in fast:
        assert fast[part] == bare[part], part


# -- subprocess data copies --------------------------------------------------------------------

def _shape(value, seen=None) -> object:
    """A value's structure as deepcopy keeps it: types, contents, which containers are one object."""
    seen = {} if seen is None else seen
    if isinstance(value, dict | list | tuple | set):
        if id(value) in seen:
            return ("same as", seen[id(value)])
        seen[id(value)] = len(seen)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return (type(value), [(_shape(k, seen), _shape(v, seen)) for k, v in items])
    return (type(value), repr(value))


def _leaves(value) -> list:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (k, *_leaves(v))]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


class Tagged(dict):
    pass


_SHARED = {"x": [1]}
_LOOP: dict = {"name": "loop"}
_LOOP["self"] = _LOOP
TREES = [
    {}, [], {"intake": {"customer": {"name": "杭州星河", "tier": "core"}, "tags": ["a", 1, 2.5, None, True]}},
    {"n": -0.0, "nan": float("nan"), "big": 10**40, "nested": [[[{"k": "v"}]]]},
    {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
]
NOT_TREES = [
    {"a": _SHARED, "b": _SHARED},  # one dict under two keys: deepcopy copies it once
    [_SHARED["x"], _SHARED["x"]], _LOOP, {"t": (1, [2])}, {"t": (1, 2)}, {(1, 2): "tuple key"},
    {"when": datetime(2026, 11, 23, 9, tzinfo=UTC)}, {"amount": Decimal("1.50")}, Tagged(a=[1]), {"s": {1, 2}},
    {"deep": _deep(2000)}, {"deep": _deep(200)},  # deeper than the direct copy goes: deepcopy decides
]


@pytest.mark.parametrize("value", TREES + NOT_TREES, ids=lambda v: type(v).__name__)
def test_tree_copy_is_deepcopy(value):
    try:
        expected = copy.deepcopy(value)
    except RecursionError:
        with pytest.raises(RecursionError):
            tree_copy(value)
        return
    copied = tree_copy(value)
    assert _shape(copied) == _shape(expected)
    if any(value is tree for tree in TREES):  # new containers around the same leaves, as deepcopy makes them
        assert not {id(c) for c in _containers(copied)} & {id(c) for c in _containers(value)}
        assert all(a is b is c for a, b, c in zip(_leaves(copied), _leaves(expected), _leaves(value), strict=True))


def test_subprocess_tasks_copy_with_tree_copy_and_the_classes_stay_bare(settings):
    with _after_intake(settings) as (_cf, _f, wf):
        subtasks = [ts for spec in (wf.spec, *wf.subprocess_specs.values()) for ts in spec.task_specs.values()
                    if isinstance(ts, SubWorkflowTask)]
        assert len(subtasks) >= 3 and any(isinstance(ts, CallActivity) for ts in subtasks)
        for ts in subtasks:
            assert "update_data" in ts.__dict__
            assert ("copy_data" in ts.__dict__) == (type(ts).copy_data is SubWorkflowTask.copy_data)
        # a subprocess starts with a copy of its calling task's data: no container is the caller's
        for key, sub in wf.subprocesses.items():
            caller = wf.get_task_from_id(key)
            start = sub.task_tree
            if isinstance(caller.task_spec, CallActivity):
                continue  # (a call activity hands its data over as it is, copy_data untouched)
            assert start.data == caller.data and _shape(start.data) == _shape(copy.deepcopy(caller.data))
            mine = {id(x) for x in _containers(start.data)}
            assert not mine & {id(x) for x in _containers(caller.data)}
    assert SubWorkflowTask.copy_data.__module__.startswith("SpiffWorkflow.")
    assert SubWorkflowTask.update_data.__module__.startswith("SpiffWorkflow.")
    assert CallActivity.update_data.__module__.startswith("SpiffWorkflow.")
    parser = SpiffBpmnParser()
    parser.add_bpmn_files([str(TICKET_BPMN)])
    bare = parser.get_spec("after_sales_ticket")
    assert not any("copy_data" in ts.__dict__ or "update_data" in ts.__dict__ for ts in bare.task_specs.values())


def _containers(value) -> list:
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in _containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in _containers(v))]
    return []
