"""Workflow state <-> JSON, with the process spec stored once per version, not per instance.

The stock serializer embeds the whole parsed spec (about half the bytes) in every
instance and rebuilds it on every load. Our converter leaves ``spec`` and
``subprocess_specs`` out and takes the cached spec objects of the instance's version
when restoring. ``date`` and ``Decimal`` in task data get converters of their own.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnSubWorkflowConverter, BpmnWorkflowConverter
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION
from SpiffWorkflow.bpmn.specs import BpmnProcessSpec
from SpiffWorkflow.bpmn.util.subworkflow import BpmnSubWorkflow
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.util.task import TaskState

_FINISHED = TaskState.COMPLETED | TaskState.CANCELLED


class _TaskDictCache:
    """Converted dicts of finished tasks, reused while the task is unchanged.

    A finished task no longer changes, except for its children list (pruned
    predictions), which is part of the cache key. SpiffWorkflow stores a task's data as
    a delta against its parent's data; that delta only stays valid while the parent is
    finished too, so a finished task under a still-running parent (an iteration of a
    loop) is stored with its full data instead. This keeps saving a step cheap as an
    instance's history grows.
    """

    def workflow_common(self, workflow) -> dict:
        cache = workflow.__dict__.setdefault("_careflow_task_dicts", {})
        tasks = {}
        convert = self.registry.convert
        all_tasks = workflow.tasks
        for tid, task in all_tasks.items():
            if task.state & _FINISHED:
                parent = all_tasks.get(task._parent) if task._parent is not None else None
                parent_finished = parent is None or bool(parent.state & _FINISHED)
                key = (task.state, task.last_state_change, tuple(task._children), task.triggered, parent_finished)
                hit = cache.get(tid)
                if hit is not None and hit[0] == key:
                    tasks[hit[2]] = hit[1]
                    continue
                dct = convert(task)
                if not parent_finished and parent is not None:
                    dct["data"], dct["delta"] = task.data, {}
                cache[tid] = (key, dct, dct["id"])
                tasks[dct["id"]] = dct
                continue
            else:
                dct = convert(task)
            tasks[str(tid)] = dct
        if len(cache) > len(all_tasks):
            for gone in set(cache) - set(all_tasks):
                del cache[gone]
        return {
            "data": self.registry.convert(self.registry.clean(workflow.data)),
            "correlations": workflow.correlations,
            "last_task": str(workflow.last_task.id) if workflow.last_task is not None else None,
            "success": workflow.success,
            "completed": workflow.completed,
            "tasks": tasks,
            "root": str(workflow.task_tree.id),
        }


class CachingSubWorkflowConverter(_TaskDictCache, BpmnSubWorkflowConverter):
    """Subprocess converter with the finished-task cache."""

    def to_dict(self, workflow) -> dict:
        dct = self.workflow_common(workflow)
        dct["parent_task_id"] = str(workflow.parent_task_id)
        dct["spec"] = workflow.spec.name
        return dct


class SpeclessWorkflowConverter(_TaskDictCache, BpmnWorkflowConverter):
    """Converts a workflow without its specs; restores it around specs given by the caller."""

    def to_dict(self, workflow: BpmnWorkflow) -> dict:
        dct = self.workflow_common(workflow)
        dct["subprocesses"] = self.mapping_to_dict(workflow.subprocesses)
        dct["bpmn_events"] = self.registry.convert(workflow.bpmn_events)
        return dct

    def from_dict(self, dct: dict, spec: BpmnProcessSpec | None = None,
                  subprocess_specs: dict | None = None) -> BpmnWorkflow:
        if spec is None:  # a full serialization (e.g. from stock SpiffWorkflow)
            return super().from_dict(dct)
        dct.pop("spec", None)
        dct.pop("subprocess_specs", None)
        workflow = self.target_class(spec, subprocess_specs or {}, deserializing=True)
        workflow.tasks = self.mapping_from_dict(dct["tasks"], _uuid(), workflow=workflow)
        workflow.task_tree = workflow.tasks.get(_uuid()(dct["root"]))
        self.set_default_attributes(workflow, dct)
        self.subprocesses_from_dict(dct["subprocesses"], workflow)
        workflow.bpmn_events = self.registry.restore(dct.pop("bpmn_events", []))
        return workflow


def _uuid():
    from uuid import UUID

    return UUID


def _make_serializer() -> BpmnWorkflowSerializer:
    config = dict(SPIFF_CONFIG)
    config[BpmnWorkflow] = SpeclessWorkflowConverter
    config[BpmnSubWorkflow] = CachingSubWorkflowConverter
    registry = BpmnWorkflowSerializer.configure(config)
    registry.register(Decimal, lambda v: {"value": str(v)}, lambda d: Decimal(d["value"]))
    registry.register(date, lambda v: {"value": v.isoformat()}, lambda d: date.fromisoformat(d["value"]),
                      typename="date")
    return BpmnWorkflowSerializer(registry)


serializer = _make_serializer()


def dump_state(workflow: BpmnWorkflow) -> str:
    """Serialize a workflow's state (without specs) to a JSON string."""
    reg = serializer.registry
    reg._encoder_mode = True
    try:
        dct = serializer.to_dict(workflow)
        dct[serializer.VERSION_KEY] = SERIALIZER_VERSION
        return json.dumps(dct, cls=serializer._encoder_cls, separators=(",", ":"))
    finally:
        reg._encoder_mode = False


def load_state(state: str, spec: BpmnProcessSpec, subprocess_specs: dict) -> BpmnWorkflow:
    """Restore a workflow saved by ``dump_state`` around the given (cached) specs."""
    dct = json.loads(state, cls=serializer.json_decoder_cls)
    serializer.migrate(dct)
    return serializer.from_dict(dct, spec=spec, subprocess_specs=subprocess_specs)


def to_jsonable(value: Any) -> Any:
    """Convert task data (which may hold datetimes, Decimals, dates) to plain JSON values."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, date):  # datetime is a date subclass
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)
