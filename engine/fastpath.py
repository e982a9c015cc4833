"""Dict scans for the task queries SpiffWorkflow makes on every step, per workflow instance.

SpiffWorkflow answers ``get_tasks(state=READY)`` (``do_engine_steps``, once per pass on
the top workflow and on every active subprocess), ``get_tasks(task, spec_name=...)`` (a
catching event resetting the events of its spec below it, a parallel join counting its
branches), ``update_waiting_tasks()`` (on every task completion, in the task's own
workflow), ``is_completed()`` and the task list that ``collect_log_extras`` builds for
its log records by walking a task tree. The walk visits the whole history, so a step
costs more the longer an instance runs, and it stops at depth 1000 (an instance that deep
silently stops running its engine tasks). Every workflow keeps its tasks in a dict as
well: ``accelerate`` gives a workflow, its subprocesses and the subprocesses it creates
later, versions of these calls that scan the dicts and sort the (few) hits into the
walk's depth-first order, so the answer is the walk's answer, list order included
(``CHECK`` makes every call prove it), except that nothing is lost below depth 1000.

Their tasks change state quietly: ``Task._set_state`` builds a log record (message,
extras, the parent looked up) on every state change even when ``spiff.task`` drops it;
each task of an accelerated workflow gets a ``_set_state`` that builds it only when the
logger takes it (``_TaskDict``, the workflow's task dict, gives it to every task added).
The change is per instance: SpiffWorkflow's classes stay untouched (the bare-SpiffWorkflow
baseline of the benchmark runs alongside).

A subprocess starts with a ``copy.deepcopy`` of its calling task's data and hands its end's
data back the same way; deepcopy's bookkeeping costs several times the copy itself. The
subprocess tasks of an accelerated workflow's specs (spec objects, once per spec: the
engine's spec cache is the only user of them) copy with ``tree_copy``, which is
``copy.deepcopy`` exactly: it copies directly what it can prove to be a plain tree (exact
dicts and lists, without any container met twice, around strings, numbers, booleans and
None, which deepcopy returns as they are) and leaves anything else to deepcopy.
"""

from __future__ import annotations

import copy
import logging
import time
import types
from typing import Any

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.mixins.subworkflow_task import CallActivity, SubWorkflowTask
from SpiffWorkflow.bpmn.util.subworkflow import BpmnSubWorkflow
from SpiffWorkflow.bpmn.util.task import BpmnTaskFilter
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskIterator, TaskState
from SpiffWorkflow.workflow import Workflow

_TREE_GET_TASKS = Workflow.get_tasks
_STOCK_CREATE_SUBPROCESS = BpmnWorkflow.create_subprocess
_STOCK_SET_STATE = Task._set_state

READY, WAITING = TaskState.READY, TaskState.WAITING
_NOT_FINISHED = TaskState.NOT_FINISHED_MASK
# filters a READY scan can apply itself; any other argument (first_task, max_depth,
# skip_subprocesses, end_at_spec, task_filter...) shapes the walk, so the walk answers
_FILTERS = frozenset({"state", "manual", "spec_name", "spec_class", "lane", "updated_ts", "catches_event"})
_workflow_log = logging.getLogger("spiff.workflow")
_task_log = logging.getLogger("spiff.task")

CHECK = False
"""When true, every fast answer is compared with the tree walk's (tests turn it on)."""


class FastPathMismatch(AssertionError):
    """In ``CHECK`` mode: a fast answer differed from SpiffWorkflow's tree walk."""


def accelerate(workflow: BpmnWorkflow) -> BpmnWorkflow:
    """Give a top-level workflow, its subprocesses and the ones it creates later the dict scans
    (and their tasks the quiet state changes, the subprocess tasks of its specs the quick data
    copies); returns it."""
    _install(workflow)
    _install_tasks(workflow)
    _install_copies(workflow.spec)
    for spec in workflow.subprocess_specs.values():
        _install_copies(spec)
    for sub in workflow.subprocesses.values():
        _install(sub)
        _install_tasks(sub)
    if type(workflow).create_subprocess is _STOCK_CREATE_SUBPROCESS:
        workflow.create_subprocess = types.MethodType(_create_subprocess, workflow)
    else:  # a subclass creates its own kind: accelerate what it returns
        workflow.create_subprocess = types.MethodType(_wrap_create(type(workflow).create_subprocess), workflow)
    return workflow


def _install(wf) -> None:
    wf.get_tasks = types.MethodType(_get_tasks, wf)
    wf.update_waiting_tasks = types.MethodType(_update_waiting_tasks, wf)
    wf.is_completed = types.MethodType(_is_completed, wf)
    wf.collect_log_extras = types.MethodType(_collect_log_extras, wf)


def _install_tasks(wf) -> None:
    """Make ``wf.tasks`` a ``_TaskDict``: its tasks, and every task created in ``wf`` later, change
    state quietly. (``Workflow.__init__`` and the deserializer assign a plain dict.)"""
    tasks = wf.tasks
    if type(tasks) is not _TaskDict:
        wf.tasks = _TaskDict(tasks)
        for task in tasks.values():
            task._set_state = types.MethodType(_set_state, task)


def _create_subprocess(self: BpmnWorkflow, my_task, spec_name: str) -> BpmnSubWorkflow:
    """``BpmnWorkflow.create_subprocess``, with the subprocess accelerated before it initializes
    (its initialization logs, and the log extras would walk its tree)."""
    subprocess = BpmnSubWorkflow.__new__(BpmnSubWorkflow)
    _install(subprocess)
    subprocess.__init__(self.subprocess_specs[spec_name], parent_task_id=my_task.id, top_workflow=self)
    _install_tasks(subprocess)
    self.subprocesses[my_task.id] = subprocess
    return subprocess


def _wrap_create(create):
    def create_subprocess(self, my_task, spec_name):
        subprocess = create(self, my_task, spec_name)
        _install(subprocess)
        _install_tasks(subprocess)
        return subprocess

    return create_subprocess


# -- subprocess data copies --------------------------------------------------------------------

_COPIES = "_careflow_tree_copies"  # set on a process spec whose subprocess tasks copy with tree_copy


def _install_copies(spec) -> None:
    """Give the subprocess tasks of a process spec (once) SpiffWorkflow's ``copy_data`` and
    ``update_data`` with ``tree_copy`` for ``copy.deepcopy``; a subclass's own versions stay."""
    if spec is None or spec.__dict__.get(_COPIES):
        return
    for task_spec in spec.task_specs.values():
        if isinstance(task_spec, SubWorkflowTask):
            kind = type(task_spec)
            if kind.copy_data is SubWorkflowTask.copy_data:
                task_spec.copy_data = types.MethodType(_copy_data, task_spec)
            if kind.update_data is SubWorkflowTask.update_data:
                task_spec.update_data = types.MethodType(_update_data, task_spec)
            elif kind.update_data is CallActivity.update_data:
                task_spec.update_data = types.MethodType(_call_activity_update_data, task_spec)
    spec.__dict__[_COPIES] = True


def _copy_data(self: SubWorkflowTask, my_task, subworkflow) -> None:
    """``SubWorkflowTask.copy_data``: the calling task's data into the subprocess's start."""
    start = subworkflow.get_next_task(spec_name="Start")
    start.set_data(**tree_copy(my_task.data))


def _update_data(self: SubWorkflowTask, my_task, subworkflow) -> None:
    """``SubWorkflowTask.update_data``: the subprocess's last data back into the calling task."""
    my_task.data = tree_copy(subworkflow.last_task.data)


def _call_activity_update_data(self: CallActivity, my_task, subworkflow) -> None:
    """``CallActivity.update_data``: all the data back when the called process names no outputs."""
    io_specification = subworkflow.spec.io_specification
    if io_specification is None or len(io_specification.data_outputs) == 0:
        my_task.data = tree_copy(subworkflow.last_task.data)
    else:
        CallActivity.update_data(self, my_task, subworkflow)


_ATOMS = frozenset({str, int, float, bool, type(None)})  # deepcopy returns these as they are


class _NotATree(Exception):
    """A value ``tree_copy`` leaves to deepcopy."""


def tree_copy(value: Any) -> Any:
    """``copy.deepcopy(value)``: the same copy, made directly when ``value`` is a plain tree.

    A plain tree: exact dicts and lists, none met twice (deepcopy would copy a shared one
    once, and keep a cycle), with keys and leaves of the types deepcopy returns as they are,
    at most ``_MAX_DEPTH`` deep. Anything else (a tuple, a datetime, a subclass, a shared
    list, a deeper nesting, which deepcopy may refuse at the recursion limit) goes to
    deepcopy, whole.
    """
    try:
        return _tree(value, set(), _MAX_DEPTH)
    except _NotATree:
        return copy.deepcopy(value)


_MAX_DEPTH = 64


def _tree(value: Any, seen: set, depth: int) -> Any:
    kind = type(value)
    if kind is dict:
        if id(value) in seen or not depth:
            raise _NotATree
        seen.add(id(value))
        atoms = _ATOMS
        out = {}
        for k, v in value.items():
            if type(k) not in atoms:
                raise _NotATree
            out[k] = v if type(v) in atoms else _tree(v, seen, depth - 1)
        return out
    if kind is list:
        if id(value) in seen or not depth:
            raise _NotATree
        seen.add(id(value))
        atoms = _ATOMS
        return [v if type(v) in atoms else _tree(v, seen, depth - 1) for v in value]
    if kind in _ATOMS:
        return value
    raise _NotATree


# -- quiet state changes -----------------------------------------------------------------------

class _TaskDict(dict):
    """A workflow's task dict whose new entries (``Task.__init__`` adds itself first thing) get
    ``_set_state``; lookups are the dict's own."""

    __slots__ = ()

    def __setitem__(self, task_id, task) -> None:
        dict.__setitem__(self, task_id, task)
        task._set_state = types.MethodType(_set_state, task)


def _set_state(self: Task, value: int) -> None:
    """``Task._set_state``; the log record (a message, extras with the task's parent looked up,
    state names, two clock reads), only when ``spiff.task`` would take it.

    SpiffWorkflow builds the record before calling ``logger.info``/``logger.debug``, on every
    state change; a record would be dropped when the logger is not enabled for its level.
    """
    if value != self._state:
        if _task_log.isEnabledFor(logging.INFO):
            _STOCK_SET_STATE(self, value)
        else:
            self.last_state_change = time.time()
            self._state = value
    elif _task_log.isEnabledFor(logging.DEBUG):
        _STOCK_SET_STATE(self, value)


# -- get_tasks(state=READY) ------------------------------------------------------------------

def _get_tasks(self, first_task=None, **kwargs) -> list:
    """``get_tasks(state=READY, ...)`` and ``get_tasks([first_task], spec_name=...)`` from the task
    dicts; any other query walks the tree.

    READY: a ready task's ancestors have all run, so the walk (which prunes below predicted
    tasks) reaches every one of them; for other states its pruning makes its answer differ
    from a scan. A query with no state prunes nothing: the walk reaches every task below
    its start (subprocesses included), and the spec name leaves a few of them.
    """
    if len(kwargs) == 1 and type(kwargs.get("spec_name")) is str and (first_task is None
                                                                   or first_task.workflow is self):
        found = _named_tasks(self, first_task or self.task_tree, kwargs["spec_name"])
        if CHECK:
            _check_same(found, _TREE_GET_TASKS(self, first_task, **kwargs), "get_tasks(spec_name)", kwargs)
        return found
    if first_task is not None or kwargs.get("state") != READY or not _FILTERS.issuperset(kwargs):
        return _TREE_GET_TASKS(self, first_task, **kwargs)
    found = _ready_tasks(self)
    if len(kwargs) > 1:
        task_filter = BpmnTaskFilter(**kwargs)
        found = [t for t in found if task_filter.matches(t)]
    if CHECK:
        _check_same(found, _TREE_GET_TASKS(self, None, **kwargs), "get_tasks", kwargs)
    return found


def _named_tasks(wf, first, name: str) -> list:
    """Tasks of the spec named ``name`` that the walk from ``first`` (a task of ``wf``) reaches, in its order."""
    top = wf.top_workflow
    found = [t for t in wf.tasks.values() if t.task_spec.name == name]
    for sub in top.subprocesses.values():
        if sub is not wf:
            found += [t for t in sub.tasks.values() if t.task_spec.name == name]
    found = [t for t in found if _reaches(first, t, top)]
    if len(found) > 1:
        found.sort(key=lambda t: _position(t, wf, top))
    return found


def _reaches(first, task, top: BpmnWorkflow) -> bool:
    """Whether ``first`` is ``task`` or one of its ancestors, through the tasks calling subprocesses."""
    while True:
        tasks = task.workflow.tasks
        while task is not first:
            parent_id = task._parent
            if parent_id is None:
                break
            task = tasks.get(parent_id)
            if task is None:
                return False
        else:
            return True
        wf = task.workflow
        if wf is top:
            return False
        calling_id = wf.parent_task_id
        owner = _owner(top, calling_id)
        if owner is None:
            return False
        task = owner.tasks[calling_id]


def _ready_tasks(wf) -> list:
    """READY tasks of ``wf`` and of the subprocesses below it, in the walk's depth-first order."""
    found = [t for t in wf.tasks.values() if t._state == READY]
    top = wf.top_workflow
    for sub in top.subprocesses.values():
        if sub is not wf:
            ready = [t for t in sub.tasks.values() if t._state == READY]
            if ready and _is_below(sub, wf, top):  # (most have none: no need to place them)
                found += ready
    if len(found) > 1:
        found.sort(key=lambda t: _position(t, wf, top))
    return found


def _owner(top: BpmnWorkflow, task_id):
    """The workflow (top or a subprocess) holding the task ``task_id``, or None."""
    if task_id in top.tasks:
        return top
    for sub in top.subprocesses.values():
        if task_id in sub.tasks:
            return sub
    return None


def _is_below(sub, wf, top: BpmnWorkflow) -> bool:
    """Whether the walk of ``wf`` reaches subprocess ``sub`` (through its chain of calling tasks)."""
    while True:
        parent_id = sub.parent_task_id
        if parent_id is None:
            return False
        if parent_id in wf.tasks:
            return True
        sub = _owner(top, parent_id)
        if sub is None or sub is top:  # a detached subprocess, or one called from outside ``wf``
            return False


def _position(task, base, top: BpmnWorkflow) -> list[int]:
    """A task's place in the depth-first walk from ``base``'s root: the child indexes on its path.

    The walk visits a task's subprocess before the task's children, hence ``-1`` for the
    step from a calling task into its subprocess's root.
    """
    path: list[int] = []
    while True:
        wf = task.workflow
        tasks = wf.tasks
        parent_id = task._parent
        while parent_id is not None:
            parent = tasks[parent_id]
            path.append(parent._children.index(task.id))
            task, parent_id = parent, parent._parent
        if wf is base:
            break
        path.append(-1)
        calling_id = wf.parent_task_id
        task = _owner(top, calling_id).tasks[calling_id]
    path.reverse()
    return path


# -- update_waiting_tasks(), is_completed(), collect_log_extras() ----------------------------

def _update_waiting_tasks(self) -> None:
    """Update this workflow's WAITING tasks (not its subprocesses'), in the walk's order.

    The walk is lazy: it skips a task that stopped waiting (or left the tree) before its
    turn, and so does this. Updating a waiting task only readies or cancels tasks, so no
    task starts waiting meanwhile; should one ever do, it is updated afterwards.
    """
    tasks = self.tasks
    batch = [t for t in tasks.values() if t._state == WAITING]
    if not batch:
        return
    top = self.top_workflow
    if len(batch) > 1:
        batch.sort(key=lambda t: _position(t, self, top))
    if CHECK:
        _check_same(batch, list(TaskIterator(self.task_tree, state=WAITING)), "update_waiting_tasks", {})
    done = set()
    while batch:
        for task in batch:
            done.add(task.id)
            if task._state == WAITING and tasks.get(task.id) is task:
                task.task_spec._update(task)
            elif CHECK and task._state == WAITING:
                raise FastPathMismatch(f"update_waiting_tasks: {task} left the tree before its turn")
        batch = [t for t in tasks.values() if t._state == WAITING and t.id not in done]
        if batch and CHECK:
            raise FastPathMismatch(f"update_waiting_tasks: {batch} started waiting during the update")
        batch.sort(key=lambda t: _position(t, self, top))


def _is_completed(self) -> bool:
    """``is_completed()``: no unfinished task in this workflow (a dict scan, stopping at the first)."""
    if not self.completed:
        unfinished = any(task._state & _NOT_FINISHED for task in self.tasks.values())
        if CHECK:
            walked = next(TaskIterator(self.task_tree, state=_NOT_FINISHED), None) is not None
            if walked != unfinished:
                raise FastPathMismatch(f"is_completed: scan found unfinished={unfinished}, the walk {walked}")
        if not unfinished:
            self.completed = True
    return self.completed


def _collect_log_extras(self, dct: dict | None = None) -> dict:
    """The extras of a workflow log record; built only when the record will be logged.

    SpiffWorkflow builds them (a walk of every task when the logger's level is unset)
    before calling ``logger.info``, which drops them when INFO is disabled.
    """
    if _workflow_log.isEnabledFor(logging.INFO):
        return type(self).collect_log_extras(self, dct)
    return dct or {}


def _check_same(fast: list, walked: list, what: str, kwargs: dict) -> None:
    if [t.id for t in fast] != [t.id for t in walked]:
        raise FastPathMismatch(f"{what}({kwargs}): scan found {fast}, the walk {walked}")
