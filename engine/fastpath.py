"""Flat scans for the two task queries SpiffWorkflow makes on every step.

``do_engine_steps`` asks ``get_tasks(state=READY)`` and every task completion asks
``update_waiting_tasks()``; both walk the whole task tree, so a step costs more the
longer an instance's history, and the walk stops at depth 1000 (an instance that deep
silently stops running its engine tasks). The workflow already keeps every task in a
dict, so a scan of that dict answers the same question in history-independent time and
without a depth limit. Only those two calls change; every other query walks the tree.
"""

from __future__ import annotations

import types

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState

_TREE_GET_TASKS = BpmnWorkflow.get_tasks


def accelerate(workflow: BpmnWorkflow) -> BpmnWorkflow:
    """Give ``workflow`` (a top-level workflow) the flat scans; returns it."""
    workflow.get_tasks = types.MethodType(_get_tasks, workflow)
    workflow.update_waiting_tasks = types.MethodType(_update_waiting_tasks, workflow)
    return workflow


def _get_tasks(self: BpmnWorkflow, first_task=None, **kwargs):
    """``get_tasks(state=READY)`` from the task dicts (this workflow and its subprocesses); else the tree walk.

    Only READY: a ready task's ancestors have all run, so the tree walk reaches every one of
    them (it prunes below unfinished tasks and skips finished subprocesses, which hold no
    ready task); for other states the walk's pruning makes its answer differ from a scan.
    """
    if first_task is not None or set(kwargs) != {"state"} or kwargs["state"] != TaskState.READY:
        return _TREE_GET_TASKS(self, first_task, **kwargs)
    found = [t for t in self.tasks.values() if t.state == TaskState.READY]
    for sub in self.subprocesses.values():
        found.extend(t for t in sub.tasks.values() if t.state == TaskState.READY)
    return found


def _update_waiting_tasks(self: BpmnWorkflow) -> None:
    """Update every WAITING task of the top workflow, including ones that start waiting meanwhile."""
    seen: set = set()
    while True:
        batch = [t for t in self.tasks.values() if t.state == TaskState.WAITING and t.id not in seen]
        if not batch:
            return
        for task in batch:
            seen.add(task.id)
            task.task_spec._update(task)
