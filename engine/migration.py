"""Moving running instances from one version of a process to another.

``plan_migration`` is the dry run: for each instance, which open tasks (READY user tasks,
WAITING events, STARTED call activities and subprocesses) map to the new version by BPMN
id, which cannot move and why, and which elements of its remaining path the new version
drops. ``migrate_instances`` moves them, one transaction per instance: lock, restore the
state around the old version's specs, move it onto the new specs with SpiffWorkflow's
``SpecDiff``/``WorkflowDiff``/``migrate_workflow`` (``SpiffWorkflow.bpmn.util.diff``), save
it with the new version id, re-sync the human-task and timer rows and audit
``instance_migrated``. An instance that cannot move stays exactly as it was, with the
reason in the report and a ``migration_failed`` audit row.

What cannot move (each is a reason in the plan):
- an open task whose element the new version removes, or gives another type;
- a waiting event (timer, message...) whose definition changed: its due time or
  subscription was fixed when it started waiting;
- an open activity whose boundary events changed: they are set up when it starts;
- a running call activity or subprocess whose callee is gone, is another process now, or
  changed incompatibly (the same rules, applied inside it);
- a running loop / multi-instance activity whose definition changed;
- history the new version cannot hold: a finished element it removes (SpiffWorkflow
  restores every task of an instance against the spec).

The dry run performs the same move in memory (and a save/restore round trip) without
writing, so what it promises is what the real run does.
"""

from __future__ import annotations

import copy
import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.mixins.events.intermediate_event import BoundaryEvent
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import LoopTask
from SpiffWorkflow.bpmn.specs.mixins.subworkflow_task import SubWorkflowTask
from SpiffWorkflow.bpmn.util.diff import SpecDiff, WorkflowDiff, migrate_workflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import Connection, func, select

from engine import ready_task, step_rows
from engine.audit import append_events
from engine.errors import CareflowError, NotFound
from engine.models import HumanTask, Instance
from engine.serialization import dump_state, load_state, serializer
from engine.specs import HumanTaskMeta, LoadedVersion
from engine.specs import connect_loop_children as _connect
from engine.step import Step
from engine.versions import get_version

if TYPE_CHECKING:
    from engine.runtime import Careflow

log = logging.getLogger("careflow.migration")

OPEN = TaskState.READY | TaskState.WAITING | TaskState.STARTED
PREDICTED = TaskState.FUTURE | TaskState.LIKELY | TaskState.MAYBE
_EVENT_NAMES = {"DurationTimerEventDefinition": "timer duration", "TimeDateEventDefinition": "timer date",
                "CycleTimerEventDefinition": "timer cycle", "MessageEventDefinition": "message",
                "SignalEventDefinition": "signal", "ErrorEventDefinition": "error",
                "EscalationEventDefinition": "escalation", "ConditionalEventDefinition": "condition"}


# ------------------------------------------------------------------------------ results


@dataclass
class TaskPlan:
    """One open task of an instance and what the migration does with it."""

    task_id: str
    element_id: str
    name: str | None
    type: str  # the SpiffWorkflow spec class, e.g. UserTask, DurationTimerEventDefinition's BoundaryEvent
    state: str  # READY | WAITING | STARTED
    process: str  # the process or subprocess it runs in
    outcome: str  # mapped | blocked
    reason: str | None = None
    changes: list[dict] = field(default_factory=list)  # [{"field", "old", "new"}] for a mapped task

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class InstancePlan:
    """The dry run of one instance: can it move, its open tasks, what its path loses."""

    instance_id: int
    business_key: str | None
    status: str | None
    from_version: int
    to_version: int
    movable: bool
    reasons: list[str]
    tasks: list[TaskPlan]
    lost: list[dict] = field(default_factory=list)  # [{"element_id", "name"}] on its remaining path, removed

    @property
    def mapped(self) -> list[TaskPlan]:
        """Open tasks that move."""
        return [t for t in self.tasks if t.outcome == "mapped"]

    @property
    def blocked(self) -> list[TaskPlan]:
        """Open tasks that cannot move."""
        return [t for t in self.tasks if t.outcome == "blocked"]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"instance_id": self.instance_id, "business_key": self.business_key, "status": self.status,
                "from_version": self.from_version, "to_version": self.to_version, "movable": self.movable,
                "reasons": list(self.reasons), "tasks": [t.to_dict() for t in self.tasks], "lost": list(self.lost)}


@dataclass
class InstanceOutcome:
    """What happened to one instance in a migration run."""

    instance_id: int
    migrated: bool
    reasons: list[str]
    plan: InstancePlan | None = None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"instance_id": self.instance_id, "migrated": self.migrated, "reasons": list(self.reasons),
                "plan": self.plan.to_dict() if self.plan else None}


@dataclass
class MigrationReport:
    """The result of ``migrate_instances``: which instances moved and which stayed (with why)."""

    run_id: str
    process_id: str
    from_version: int
    to_version: int
    total: int
    migrated: list[InstanceOutcome] = field(default_factory=list)
    failed: list[InstanceOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every instance moved."""
        return not self.failed

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"run_id": self.run_id, "process_id": self.process_id, "from_version": self.from_version,
                "to_version": self.to_version, "total": self.total, "ok": self.ok,
                "migrated": [o.to_dict() for o in self.migrated], "failed": [o.to_dict() for o in self.failed]}


class _Blocked(Exception):
    def __init__(self, plan: InstancePlan):
        super().__init__("; ".join(plan.reasons))
        self.plan = plan


@dataclass
class _Pair:
    """The two versions, with spec diffs computed once per run (they do not depend on the instance)."""

    old: LoadedVersion
    new: LoadedVersion
    _diffs: dict = field(default_factory=dict)

    def spec_diff(self, old_spec, new_spec) -> SpecDiff:
        key = (id(old_spec), id(new_spec))
        if key not in self._diffs:
            self._diffs[key] = SpecDiff(serializer.registry, old_spec, new_spec)
        return self._diffs[key]


@dataclass
class _Part:
    """The top workflow or one subworkflow, with its diff against the new version."""

    workflow: object
    diff: WorkflowDiff | None
    spec_diff: SpecDiff | None
    new_spec: object | None
    parent_task_id: object | None = None


@dataclass
class _Moved:
    plan: InstancePlan
    workflow: BpmnWorkflow | None = None  # restored around the new specs (when movable)
    old_meta: dict[str, HumanTaskMeta] = field(default_factory=dict)  # ready human tasks before the move


# ------------------------------------------------------------------------------ public API


def plan_migration(cf: Careflow, process_id: str, from_version: int, to_version: int,
                   instance_ids: Iterable[int] | None = None) -> list[InstancePlan]:
    """Dry run: one ``InstancePlan`` per instance (the running instances on ``from_version``,
    or the given ones). Writes nothing."""
    instance_ids = _unique(instance_ids)
    pair, _ = _pair(cf, process_id, from_version, to_version)
    plans = []
    for batch in _id_batches(cf, pair, instance_ids, 200):
        with cf.Session() as session:
            found = {i.id: i for i in session.scalars(select(Instance).where(Instance.id.in_(batch)))}
            for iid in batch:
                inst = found.get(iid)
                if inst is None:
                    plans.append(_plan(pair, iid, None, None, movable=False, reasons=[f"no instance {iid}"]))
                else:
                    plans.append(_assess_instance(cf, pair, inst, session.connection()).plan)
    return plans


def migrate_instances(cf: Careflow, process_id: str, from_version: int, to_version: int,
                      instance_ids: Iterable[int] | None = None, batch_size: int = 50, by: str = "system",
                      progress: Callable[[int, int, InstanceOutcome], None] | None = None) -> MigrationReport:
    """Move instances from ``from_version`` to ``to_version`` (all running ones, or the given ids).

    One transaction per instance; ids are read ``batch_size`` at a time. ``progress(done, total,
    outcome)`` is called after each instance. An instance that cannot move keeps its version and
    state; the report lists it with the reasons and a ``migration_failed`` audit row records it.
    """
    if batch_size < 1:
        raise CareflowError("batch size must be at least 1")
    instance_ids = _unique(instance_ids)
    pair, total = _pair(cf, process_id, from_version, to_version, instance_ids)
    report = MigrationReport(uuid.uuid4().hex, process_id, from_version, to_version, total)
    done = 0
    for batch in _id_batches(cf, pair, instance_ids, batch_size):
        for iid in batch:
            outcome = _migrate_one(cf, pair, iid, by, report.run_id)
            (report.migrated if outcome.migrated else report.failed).append(outcome)
            done += 1
            if progress is not None:
                progress(done, total, outcome)
    return report


# ------------------------------------------------------------------------------ selection


def _pair(cf, process_id: str, from_version: int, to_version: int,
          instance_ids: list[int] | None = None) -> tuple[_Pair, int]:
    if from_version == to_version:
        raise CareflowError(f"instances are already on version {from_version}; pick another target version")
    with cf.Session() as session:
        old_pv = get_version(session, process_id, from_version)
        new_pv = get_version(session, process_id, to_version)
        pair = _Pair(cf.specs.get(session, old_pv.id), cf.specs.get(session, new_pv.id))
        connect_loop_children(pair.new)
        if instance_ids is not None:
            total = len(instance_ids)
        else:
            total = session.scalar(select(func.count()).where(Instance.process_version_id == old_pv.id,
                                                              Instance.status == "running"))
    return pair, int(total)


def connect_loop_children(loaded: LoadedVersion) -> None:
    """Connect loop children of a loaded version (see ``engine.specs.connect_loop_children``)."""
    _connect(loaded.spec, loaded.subprocess_specs)


def _unique(instance_ids: Iterable[int] | None) -> list[int] | None:
    return None if instance_ids is None else list(dict.fromkeys(int(i) for i in instance_ids))


def _id_batches(cf, pair: _Pair, instance_ids: list[int] | None, size: int) -> Iterator[list[int]]:
    if instance_ids is not None:
        for i in range(0, len(instance_ids), size):
            yield instance_ids[i:i + size]
        return
    with cf.Session() as session:
        last_id = session.scalar(select(func.max(Instance.id)).where(Instance.process_version_id == pair.old.id))
    after = 0
    while last_id is not None:  # keyset pages; instances started meanwhile (higher ids) are left alone
        with cf.Session() as session:
            batch = list(session.scalars(select(Instance.id).where(
                Instance.process_version_id == pair.old.id, Instance.status == "running", Instance.id > after,
                Instance.id <= last_id).order_by(Instance.id).limit(size)))
        if not batch:
            return
        yield batch
        after = batch[-1]


# ------------------------------------------------------------------------------ one instance


def _plan(pair: _Pair, iid: int, business_key, status, *, movable: bool, reasons: list[str],
          tasks: list[TaskPlan] | None = None, lost: list[dict] | None = None) -> InstancePlan:
    return InstancePlan(iid, business_key, status, pair.old.version, pair.new.version, movable, reasons,
                        tasks or [], lost or [])


def _assess_instance(cf, pair: _Pair, inst: Instance, conn: Connection) -> _Moved:
    """Check and move one instance in memory (nothing is written)."""
    def refuse(reason: str) -> _Moved:
        return _Moved(_plan(pair, inst.id, inst.business_key, inst.status, movable=False, reasons=[reason]))

    if inst.process_version_id != pair.old.id:
        version = pair.new.version if inst.process_version_id == pair.new.id else None
        where = f"version {version}" if version else f"process version id {inst.process_version_id}"
        if inst.process_id != pair.old.process_id:
            where = f"process '{inst.process_id}'"
        return refuse(f"instance {inst.id} is on {where}, not on version {pair.old.version}")
    if inst.status != "running":
        return refuse(f"instance {inst.id} is {inst.status}; only running instances move")
    try:
        wf = load_state(inst.state, pair.old.spec, pair.old.subprocess_specs,
                        parts=lambda numbers: step_rows.state_parts(conn, inst.id, numbers))
    except Exception as err:
        return refuse(f"its saved state could not be restored: {type(err).__name__}: {err}")
    wf.script_engine = cf.script_engine
    return _move(wf, pair, inst.id, inst.business_key)


def _move(wf: BpmnWorkflow, pair: _Pair, iid: int, business_key: str | None) -> _Moved:
    """Assess ``wf`` against the new version and, if nothing blocks, move it (in memory)."""
    try:
        parts = _parts(wf, pair)
    except Exception as err:  # SpiffWorkflow could not align the specs
        reason = f"SpiffWorkflow could not compare the versions: {type(err).__name__}: {err}"
        return _Moved(_plan(pair, iid, business_key, "running", movable=False, reasons=[reason]))
    reasons: list[str] = []
    tasks: list[TaskPlan] = []
    lost: dict[str, dict] = {}
    blocked_subs: set = set()
    for part in parts:
        part_reasons = _assess_part(part, pair, tasks, lost)
        if part_reasons and part.parent_task_id is not None:
            blocked_subs.add(part.parent_task_id)
        reasons += part_reasons
    _propagate_blocked_subs(tasks, blocked_subs, parts)
    reasons = list(dict.fromkeys(reasons))
    plan = _plan(pair, iid, business_key, "running", movable=not reasons, reasons=reasons, tasks=tasks,
                 lost=sorted(lost.values(), key=lambda e: e["element_id"]))
    if reasons:
        return _Moved(plan)
    old_meta = {str(t.id): pair.old.human_task_meta(t.task_spec) for t in _all_tasks(wf)
                if t.state == TaskState.READY and t.task_spec.manual}
    try:
        moved = _apply(wf, parts, pair)
    except Exception as err:
        log.exception("moving instance %s from version %s to %s failed", iid, pair.old.version, pair.new.version)
        plan.movable = False
        plan.reasons = [f"the move failed: {type(err).__name__}: {err}"]
        return _Moved(plan)
    return _Moved(plan, moved, old_meta)


def _parts(wf: BpmnWorkflow, pair: _Pair) -> list[_Part]:
    top = pair.spec_diff(wf.spec, pair.new.spec)
    parts = [_Part(wf, WorkflowDiff(wf, top), top, pair.new.spec)]
    for sp_id, sp in wf.subprocesses.items():
        new_spec = pair.new.subprocess_specs.get(sp.spec.name)
        if new_spec is None:
            parts.append(_Part(sp, None, None, None, sp_id))
            continue
        sd = pair.spec_diff(sp.spec, new_spec)
        parts.append(_Part(sp, WorkflowDiff(sp, sd), sd, new_spec, sp_id))
    return parts


def _label(spec) -> str:
    element = _element_id(spec)
    return f"'{spec.bpmn_name}' ({element})" if getattr(spec, "bpmn_name", None) else f"'{element}'"


def _element_id(spec) -> str:
    return getattr(spec, "bpmn_id", None) or spec.name.split(".")[0]


def _task_plan(task, outcome: str, reason: str | None = None, changes: list | None = None) -> TaskPlan:
    spec = task.task_spec
    return TaskPlan(task_id=str(task.id), element_id=_element_id(spec), name=getattr(spec, "bpmn_name", None),
                    type=type(spec).__name__, state=TaskState.get_name(task.state), process=task.workflow.spec.name,
                    outcome=outcome, reason=reason, changes=changes or [])


def _assess_part(part: _Part, pair: _Pair, tasks: list[TaskPlan], lost: dict[str, dict]) -> list[str]:
    """Reasons why this (sub)workflow cannot move; fills ``tasks`` and ``lost``."""
    wf = part.workflow
    reasons: list[str] = []
    open_tasks = [t for t in wf.tasks.values() if t.state & OPEN]
    if part.diff is None:
        reason = (f"it is running '{wf.spec.name}', which version {pair.new.version} no longer has")
        reasons.append(reason)
        tasks.extend(_task_plan(t, "blocked", reason) for t in open_tasks if t.task_spec.bpmn_id)
        return reasons
    removed = set(part.diff.removed)
    open_elements = {_element_id(t.task_spec) for t in open_tasks}
    history: list[str] = []
    for task in part.diff.removed:
        spec = task.task_spec
        if task.state & TaskState.FINISHED_MASK:
            if task.state == TaskState.CANCELLED and not task.children:
                continue  # a cancelled leaf (e.g. a boundary timer of a finished task) is pruned
            if spec.name.endswith((".BoundaryEventSplit", ".BoundaryEventJoin")):
                if _element_id(spec) not in open_elements:  # an open one gets its own reason below
                    history.append(f"it already went through '{_element_id(spec)}' with boundary events, which "
                                   f"version {pair.new.version} removes (SpiffWorkflow keeps every passed element "
                                   "in the instance's history)")
            else:
                history.append(f"it already passed {_label(spec)}, which version {pair.new.version} removes "
                               "(SpiffWorkflow keeps every passed element in the instance's history)")
        elif task.state & PREDICTED and spec.bpmn_id:
            lost[spec.bpmn_id] = {"element_id": spec.bpmn_id, "name": spec.bpmn_name}
    for task in open_tasks:
        spec = task.task_spec
        reason = None
        changes: list[dict] = []
        if task in removed:
            reason = f"{_label(spec)} is open and version {pair.new.version} removes it"
        else:
            new_spec = part.diff.alignment[task]
            keys = part.spec_diff.comparisons.get(spec, []) if part.spec_diff else []
            reason = _blocking_change(task, spec, new_spec, keys, pair)
            if reason is None:
                changes = _describe_changes(spec, new_spec, keys, pair)
        if spec.bpmn_id is None and reason is None:
            continue  # SpiffWorkflow's own bookkeeping tasks, when nothing is wrong with them
        if reason:
            reasons.append(reason)
        tasks.append(_task_plan(task, "blocked" if reason else "mapped", reason, changes))
    return reasons + history


def _blocking_change(task, spec, new_spec, keys: list[str], pair: _Pair) -> str | None:
    version = pair.new.version
    if new_spec.name != spec.name:
        return (f"{_label(spec)} is open and version {version} has no element with id '{spec.name}' "
                f"(its place is taken by '{new_spec.name}'); keep the element id to carry the open work over")
    if "typename" in keys:
        return (f"{_label(spec)} is open and version {version} makes it a {type(new_spec).__name__} "
                f"instead of a {type(spec).__name__}")
    if task.state == TaskState.WAITING and "event_definition" in keys:
        return (f"{_label(spec)} waits for {_event_text(spec)} and version {version} changes it to "
                f"{_event_text(new_spec)}; what an event waits for is fixed when it starts waiting")
    if task.state == TaskState.STARTED and isinstance(spec, SubWorkflowTask) and new_spec.spec != spec.spec:
        return f"{_label(spec)} is running '{spec.spec}' and version {version} calls '{new_spec.spec}' instead"
    if task.state == TaskState.STARTED and isinstance(spec, LoopTask) and keys:
        return (f"{_label(spec)} is a running loop or multi-instance activity and version {version} changes it "
                f"({', '.join(sorted(keys))})")
    old_events, new_events = _boundary_events(spec), _boundary_events(new_spec)
    if not isinstance(spec, BoundaryEvent) and old_events != new_events:
        added, gone = sorted(set(new_events) - set(old_events)), sorted(set(old_events) - set(new_events))
        what = "; ".join(x for x in (f"added {', '.join(added)}" if added else "",
                                     f"removed {', '.join(gone)}" if gone else "") if x)
        return (f"{_label(spec)} is open and version {version} changes its boundary events ({what}); "
                "boundary events are set up when the activity starts")
    return None


def _boundary_events(spec) -> list[str]:
    split = spec._wf_spec.task_specs.get(f"{spec.name}.BoundaryEventSplit")
    if split is None:
        return []
    return sorted(o.name for o in split.outputs if o.name != spec.name)


def _event_text(spec) -> str:
    definition = getattr(spec, "event_definition", None)
    if definition is None:
        return "an event"
    kind = _EVENT_NAMES.get(type(definition).__name__, type(definition).__name__)
    value = getattr(definition, "expression", None) or getattr(definition, "name", None)
    return f"{kind} {value}" if value else kind


def _describe_changes(spec, new_spec, keys: list[str], pair: _Pair) -> list[dict]:
    out: list[dict] = []
    for key, label in (("bpmn_name", "name"), ("lane", "lane"), ("documentation", "documentation")):
        if key in keys:
            out.append({"field": label, "old": getattr(spec, key, None), "new": getattr(new_spec, key, None)})
    if "extensions" in keys:
        old_ext, new_ext = getattr(spec, "extensions", None) or {}, getattr(new_spec, "extensions", None) or {}
        old_props, new_props = old_ext.get("properties") or {}, new_ext.get("properties") or {}
        for name in sorted(old_props.keys() | new_props.keys()):
            if old_props.get(name) != new_props.get(name):
                label = "form" if name == "formJsonSchemaFilename" else name
                out.append({"field": label, "old": old_props.get(name), "new": new_props.get(name)})
        for name in sorted((old_ext.keys() | new_ext.keys()) - {"properties"}):
            if old_ext.get(name) != new_ext.get(name):
                out.append({"field": name, "old": old_ext.get(name), "new": new_ext.get(name)})
    form = _form_of(new_spec)
    if form and form == _form_of(spec) and pair.old.form_checksums.get(form) != pair.new.form_checksums.get(form):
        out.append({"field": "form schema", "old": (pair.old.form_checksums.get(form) or "")[:12] or None,
                    "new": (pair.new.form_checksums.get(form) or "")[:12] or None})
    if "event_definition" in keys:
        out.append({"field": "event", "old": _event_text(spec), "new": _event_text(new_spec)})
    for key, label in (("outputs", "outgoing flow"), ("inputs", "incoming flow")):
        if key in keys:
            out.append({"field": label, "old": sorted({_element_id(x) for x in getattr(spec, key)}),
                        "new": sorted({_element_id(x) for x in getattr(new_spec, key)})})
    handled = {"bpmn_name", "lane", "documentation", "extensions", "event_definition", "outputs", "inputs",
               "typename"}
    out += [{"field": k, "old": None, "new": None} for k in sorted(set(keys) - handled)]
    return out


def _form_of(spec) -> str | None:
    return ((getattr(spec, "extensions", None) or {}).get("properties") or {}).get("formJsonSchemaFilename")


def _propagate_blocked_subs(tasks: list[TaskPlan], blocked_subs: set, parts: list[_Part]) -> None:
    """A call activity or subprocess with an inner workflow that cannot move cannot move either
    (nor can the activities it runs inside, level by level)."""
    owner_of = {}  # subworkflow task id -> the subworkflow task id of the workflow holding it (None: top)
    for p in parts:
        if p.parent_task_id is not None:
            owner_of[p.parent_task_id] = next((q.parent_task_id for q in parts
                                               if p.parent_task_id in q.workflow.tasks), None)
    bad = set(blocked_subs)
    for sub_id in list(bad):
        up = owner_of.get(sub_id)
        while up is not None and up not in bad:
            bad.add(up)
            up = owner_of.get(up)
    names = {p.parent_task_id: p.workflow.spec.name for p in parts if p.parent_task_id is not None}
    for tp in tasks:
        sub_id = uuid.UUID(tp.task_id)
        if tp.outcome == "mapped" and sub_id in bad:
            tp.outcome = "blocked"
            tp.reason = f"'{names.get(sub_id, 'its subprocess')}' running inside it cannot move (see its tasks)"
            tp.changes = []


def _all_tasks(wf: BpmnWorkflow):
    yield from wf.tasks.values()
    for sp in wf.subprocesses.values():
        yield from sp.tasks.values()


def _apply(wf: BpmnWorkflow, parts: list[_Part], pair: _Pair) -> BpmnWorkflow:
    """Move the workflow onto the new specs; returns it restored from its new saved form."""
    snapshots = {}
    for part in parts:
        for task in part.workflow.tasks.values():
            if task.state in (TaskState.READY, TaskState.WAITING):
                snapshots[task.id] = (copy.deepcopy(task.data), copy.deepcopy(task.internal_data))
        for task in list(part.diff.removed):
            if task.state == TaskState.CANCELLED and not task.children and task.id in part.workflow.tasks:
                part.workflow._remove_task(task.id)
    for part in parts:
        migrate_workflow(part.diff, part.workflow, part.new_spec)
    wf.subprocess_specs = pair.new.subprocess_specs
    for part in parts:
        for task in list(part.workflow.tasks.values()):
            # migrate_workflow resets open tasks (to re-predict what follows them); give them back
            # their data and what they wait for, so a waiting timer keeps its due time
            if task.id in snapshots and task.state in (TaskState.READY, TaskState.WAITING):
                task.data, task.internal_data = snapshots[task.id]
            if task.state == TaskState.STARTED and isinstance(task.task_spec, SubWorkflowTask | LoopTask):
                _repredict(task)
    for part in parts:
        stale = [t for t in part.workflow.tasks.values()
                 if part.workflow.spec.task_specs.get(t.task_spec.name) is not t.task_spec]
        if stale:
            raise CareflowError(f"task {_label(stale[0].task_spec)} would still refer to the old version")
    moved = load_state(dump_state(wf), pair.new.spec, pair.new.subprocess_specs)
    moved.script_engine = wf.script_engine
    return moved


def _repredict(task) -> None:
    """Re-predict what follows a running call activity, subprocess or loop from its new spec.

    ``migrate_workflow`` only resets READY and WAITING tasks, so the successors of a STARTED
    task stay predicted from the old spec (an element added after it would be skipped). The
    loop's own iterations (``triggered`` children) are kept.
    """
    for child in list(task.children):
        if not child.triggered and child.has_state(TaskState.NOT_FINISHED_MASK):
            task.workflow._remove_task(child.id)
    task._sync_children(task.task_spec.outputs, TaskState.FUTURE)
    for child in task.children:
        if not child.triggered and child.has_state(TaskState.NOT_FINISHED_MASK):
            child.task_spec._predict(child, mask=TaskState.PREDICTED_MASK | TaskState.FUTURE)


# ------------------------------------------------------------------------------ writing


def _migrate_one(cf, pair: _Pair, instance_id: int, by: str, run_id: str) -> InstanceOutcome:
    result = None
    plan = None
    try:
        with cf.Session() as session, session.begin():
            inst = cf._lock_instance(session, instance_id)  # the engine's row lock, as in every step
            moved = _assess_instance(cf, pair, inst, session.connection())
            plan = moved.plan
            if not plan.movable or moved.workflow is None:
                raise _Blocked(plan)
            step = Step(session, cf.now(), actor=by, cause="migration", instance_id=inst.id,
                        process_id=inst.process_id, process_version_id=pair.new.id, business_key=inst.business_key)
            rows = _resync_human_tasks(cf, step, inst, moved, pair)
            step.audit("instance_migrated", details={
                "run_id": run_id, "from_version": pair.old.version, "to_version": pair.new.version,
                "from_version_id": pair.old.id, "to_version_id": pair.new.id,
                "mapped": [_task_summary(t) for t in plan.mapped], "lost": plan.lost, "task_rows": rows})
            result = cf.save_migrated(step, inst, moved.workflow, pair.new)
    except _Blocked as blocked:
        _record_failure(cf, instance_id, pair, by, run_id, blocked.plan.reasons, blocked.plan)
        return InstanceOutcome(instance_id, False, blocked.plan.reasons, blocked.plan)
    except NotFound as err:
        return InstanceOutcome(instance_id, False, [str(err)], plan)
    except Exception as err:
        log.exception("migrating instance %s failed", instance_id)
        reasons = [f"{type(err).__name__}: {err}" if not isinstance(err, CareflowError) else str(err)]
        _record_failure(cf, instance_id, pair, by, run_id, reasons, plan)
        return InstanceOutcome(instance_id, False, reasons, plan)
    cf._after_commit(result)
    return InstanceOutcome(instance_id, True, [], plan)


def _task_summary(t: TaskPlan) -> dict:
    return {"task_id": t.task_id, "element_id": t.element_id, "name": t.name, "state": t.state,
            "changes": t.changes}


def _record_failure(cf, instance_id: int, pair: _Pair, by: str, run_id: str, reasons: list[str],
                    plan: InstancePlan | None) -> None:
    """Audit that an instance stayed on its version, in a transaction of its own."""
    from engine.runtime import StepResult

    try:
        with cf.Session() as session, session.begin():
            inst = session.get(Instance, instance_id)
            if inst is None:
                return
            step = Step(session, cf.now(), actor=by, cause="migration", instance_id=inst.id,
                        process_id=inst.process_id, process_version_id=inst.process_version_id,
                        business_key=inst.business_key)
            step.audit("migration_failed", details={
                "run_id": run_id, "from_version": pair.old.version, "to_version": pair.new.version,
                "reasons": reasons, "blocked": [_task_summary(t) | {"reason": t.reason} for t in plan.blocked]
                if plan else []})
            rows = append_events(session, step.events)
            status, revision = inst.status, inst.revision
    except Exception:
        log.exception("could not audit the failed migration of instance %s", instance_id)
        return
    cf._after_commit(StepResult(instance_id, status, revision, [], rows))


def _resync_human_tasks(cf, step: Step, inst: Instance, moved: _Moved, pair: _Pair) -> list[dict]:
    """Bring the open task rows of the instance to the new version: version id, title, lane (and
    then group and assignee), form, due time and instructions. Rows whose task is gone or new are
    handled by the normal save (cancelled / created)."""
    session = step.session
    rows = {r.id: r for r in session.scalars(select(HumanTask).where(HumanTask.instance_id == inst.id,
                                                                     HumanTask.status == "ready"))}
    changed = []
    for task in _all_tasks(moved.workflow):
        row = rows.get(str(task.id))
        if row is None or task.state != TaskState.READY or not task.task_spec.manual:
            continue
        meta = pair.new.human_task_meta(task.task_spec)
        old = moved.old_meta.get(row.id)
        before = _row_view(row)
        row.process_version_id = pair.new.id
        row.name, row.title = meta.name, meta.title
        if meta.lane != row.lane:
            row.lane = meta.lane
            row.group_name, row.assignee = _assign(cf, step, inst, task, meta)
        if meta.form_name != row.form_name or pair.new.form_checksums.get(meta.form_name or "") != row.form_checksum:
            row.form_name = meta.form_name
            row.form_checksum = pair.new.form_checksums.get(meta.form_name or "")
        if old is None or (old.due_in, old.due_at_expr) != (meta.due_in, meta.due_at_expr):
            row.due_at = ready_task.due_at(meta, row.created_at, functools.partial(_evaluate, cf, task))
        if old is None or old.instructions != meta.instructions:
            row.instructions = ready_task.instructions(meta, task)
        after = _row_view(row)
        if after != before:
            changed.append({"task_id": row.id, "element_id": meta.name, "before": before, "after": after})
    return changed


def _row_view(row: HumanTask) -> dict:
    return {"title": row.title, "lane": row.lane, "group": row.group_name, "assignee": row.assignee,
            "form": row.form_name, "form_checksum": row.form_checksum,
            "due_at": row.due_at.isoformat() if row.due_at else None}


def _assign(cf, step: Step, inst: Instance, task, meta: HumanTaskMeta) -> tuple[str | None, str | None]:
    answer, assignee = ready_task.assignment(cf.pm, step, inst.process_id, inst.id, task, meta,
                                             functools.partial(_evaluate, cf, task))
    return answer.get("group", meta.lane), assignee


def _evaluate(cf, task, expr: str):
    try:
        return cf.script_engine.evaluate(task, expr)
    except Exception as err:  # a bad expression must not stop the migration (as in a normal step)
        log.warning("could not evaluate %r on task %s: %s", expr, task.task_spec.bpmn_id, err)
        return None


