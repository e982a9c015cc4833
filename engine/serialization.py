"""Workflow state <-> JSON, with the process spec stored once per version, not per instance.

The stock serializer embeds the whole parsed spec (about half the bytes) in every
instance and rebuilds it on every load. Our converter leaves ``spec`` and
``subprocess_specs`` out and takes the cached spec objects of the instance's version
when restoring. ``date`` and ``Decimal`` in task data get converters of their own.

A task's data is stored as a delta against its parent's data (SpiffWorkflow's format);
that delta only stays valid while the parent is finished too, so a finished task under
a still-running parent (an iteration of a loop) is stored with its full data instead.

``dump_state`` writes the JSON that ``json.dumps(serializer.to_dict(wf))`` would write,
byte for byte, but keeps the JSON text of each task that cannot have changed since the
previous dump of the same workflow object (a finished task; an unfinished one without
data of its own, or whose data equals its parent's: no delta), so a step re-encodes only the
tasks that moved; the common values of a task (empty dicts, floats, ints, booleans, its spec's
name) are written directly rather than through the encoder.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.serializer.default.workflow import (
    BpmnSubWorkflowConverter,
    BpmnWorkflowConverter,
    WorkflowConverter,
)
from SpiffWorkflow.bpmn.serializer.helpers.encoder import create_encoder
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION
from SpiffWorkflow.bpmn.specs import BpmnProcessSpec
from SpiffWorkflow.bpmn.util.subworkflow import BpmnSubWorkflow
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.deep_merge import DeepMerge
from SpiffWorkflow.util.task import TaskState

_FINISHED = TaskState.COMPLETED | TaskState.CANCELLED
_NO_DELTA = object()  # in a cache key: the task's data equals its parent's
_NO_DELTA_TEXT = '{"updates":{},"deletions":[]}'


def _full_data_instead_of_delta(task) -> bool:
    """A finished task under a parent that is not finished: its delta would not stay valid."""
    if not task._state & _FINISHED or task._parent is None:
        return False
    parent = task.workflow.tasks.get(task._parent)
    return parent is not None and not parent._state & _FINISHED


class _SpeclessCommon:
    def workflow_common(self, workflow) -> dict:
        dct = WorkflowConverter.to_dict(self, workflow)
        tasks = dct["tasks"]
        for task in workflow.tasks.values():
            if _full_data_instead_of_delta(task):
                converted = tasks[str(task.id)]
                converted["data"], converted["delta"] = task.data, {}
        return dct


class SpeclessSubWorkflowConverter(_SpeclessCommon, BpmnSubWorkflowConverter):
    """Subprocess converter storing full data for finished tasks under running parents."""

    def to_dict(self, workflow) -> dict:
        dct = self.workflow_common(workflow)
        dct["parent_task_id"] = str(workflow.parent_task_id)
        dct["spec"] = workflow.spec.name
        return dct


class SpeclessWorkflowConverter(_SpeclessCommon, BpmnWorkflowConverter):
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
        workflow.tasks = self.mapping_from_dict(dct["tasks"], UUID, workflow=workflow)
        workflow.task_tree = workflow.tasks.get(UUID(dct["root"]))
        self.set_default_attributes(workflow, dct)
        self.subprocesses_from_dict(dct["subprocesses"], workflow)
        workflow.bpmn_events = self.registry.restore(dct.pop("bpmn_events", []))
        return workflow


def _make_registry():
    config = dict(SPIFF_CONFIG)
    config[BpmnWorkflow] = SpeclessWorkflowConverter
    config[BpmnSubWorkflow] = SpeclessSubWorkflowConverter
    registry = BpmnWorkflowSerializer.configure(config)
    registry.register(Decimal, lambda v: {"value": str(v)}, lambda d: Decimal(d["value"]))
    registry.register(date, lambda v: {"value": v.isoformat()}, lambda d: date.fromisoformat(d["value"]),
                      typename="date")
    return registry


serializer = BpmnWorkflowSerializer(_make_registry())


class _StateWriter:
    """The JSON text of a workflow state, reusing the text of tasks unchanged since the last dump.

    It has a registry of its own, always in encoder mode (the conversion ``serialize_json``
    uses), so dumping never flips the mode of the shared ``serializer.registry``.
    """

    CACHE_ATTR = "_careflow_state_json"

    def __init__(self) -> None:
        self.registry = _make_registry()
        self.registry._encoder_mode = True
        self.encode = create_encoder(self.registry)(separators=(",", ":")).encode
        self.names: dict[str, str] = {}  # a task spec name's JSON text

    def state(self, wf: BpmnWorkflow) -> str:
        enc, reg = self.encode, self.registry
        subprocesses = ",".join(f"{enc(str(k))}:{self.workflow(sp, self.subprocess_tail(sp))}"
                                for k, sp in wf.subprocesses.items())
        rest = enc({"bpmn_events": reg.convert(wf.bpmn_events), "typename": reg.typenames[type(wf)],
                    serializer.VERSION_KEY: SERIALIZER_VERSION})
        return self.workflow(wf, f',"subprocesses":{{{subprocesses}}},{rest[1:]}')

    def subprocess_tail(self, sp) -> str:
        rest = self.encode({"parent_task_id": str(sp.parent_task_id), "spec": sp.spec.name,
                            "typename": self.registry.typenames[type(sp)]})
        return f",{rest[1:]}"

    def workflow(self, wf, tail: str) -> str:
        """A workflow's JSON object: WorkflowConverter.to_dict's keys in its order, then ``tail``."""
        enc, reg = self.encode, self.registry
        data, correlations, last_task = wf.data, wf.correlations, wf.last_task
        success, completed = wf.success, wf.completed
        if (type(data) is dict and not data and type(correlations) is dict and not correlations
                and type(success) is bool and type(completed) is bool):  # a running subprocess, mostly
            last = "null" if last_task is None else f'"{last_task.id}"'
            head = (f'{{"data":{{}},"correlations":{{}},"last_task":{last},"success":{"true" if success else "false"}'
                    f',"completed":{"true" if completed else "false"}}}')
        else:
            head = enc({"data": reg.convert(reg.clean(data)), "correlations": correlations,
                        "last_task": str(last_task.id) if last_task is not None else None,
                        "success": success, "completed": completed})
        return f'{head[:-1]},"tasks":{{{self.tasks(wf)}}},"root":"{wf.task_tree.id}"{tail}'

    def tasks(self, wf) -> str:
        texts = wf.__dict__.get(self.CACHE_ATTR)
        if texts is None:
            texts = wf.__dict__[self.CACHE_ATTR] = _WorkflowTexts()
        cache, ids, children_texts, heads = texts.tasks, texts.ids, texts.children, texts.heads
        convert, enc = self.registry.convert, self.encode
        updated_keys, deleted_keys = DeepMerge.get_updated_keys, DeepMerge.get_deleted_keys
        typename_text = enc(self.registry.typenames[Task])
        names = self.names
        all_tasks = wf.tasks
        parts = []
        for tid, task in all_tasks.items():
            state = task._state
            parent_id = task._parent
            parent = all_tasks.get(parent_id) if parent_id is not None else None
            children = tuple(task._children)
            internal = task.internal_data
            no_internal = type(internal) is dict and not internal
            delta_text = None
            if state & _FINISHED:  # a finished task no longer changes; its children list (pruned) may
                key = (state, task.last_state_change, children, task.triggered, task.task_spec,
                       parent is None or bool(parent._state & _FINISHED))
            elif not task.data and no_internal:  # its delta: "deletions" lists its parent's keys
                parent_keys = None if parent is None else tuple(parent.data)
                key = (state, task.last_state_change, children, task.triggered, task.task_spec, parent_keys)
            elif parent is not None and no_internal:  # the delta decides: none, and the text is known
                updates = updated_keys(parent.data, task.data)
                deletions = deleted_keys(parent.data, task.data)
                if updates or deletions:
                    key = None
                    delta_text = f'{{"updates":{enc(updates)},"deletions":{enc(deletions)}}}'
                else:
                    key = (state, task.last_state_change, children, task.triggered, task.task_spec, _NO_DELTA)
                    delta_text = _NO_DELTA_TEXT
            else:
                key = None
            if key is not None:
                hit = cache.get(tid)
                if hit is not None and hit[0] == key:
                    parts.append(hit[1])
                    continue
            if parent is None or state & _FINISHED and not parent._state & _FINISHED:
                data = task.data
                data_text = "{}" if not data and type(data) is dict else enc(data)
                delta_text = "{}"
            else:
                data_text = "{}"
                if delta_text is None:
                    updates = updated_keys(parent.data, task.data)
                    deletions = deleted_keys(parent.data, task.data)
                    delta_text = (f'{{"updates":{enc(updates) if updates else "{}"}'
                                  f',"deletions":{enc(deletions) if deletions else "[]"}}}')
            # TaskConverter.to_dict's keys in its order: the ids (and a loop's growing list of
            # iterations) as text kept from earlier dumps, the values of their usual types written
            # as the encoder writes them, anything else encoded
            head = heads.get(tid)
            if head is None:  # a task's id and parent never change
                parent_text = "null" if parent is None else ids.get(parent_id) or _quoted(ids, parent_id)
                quoted = ids.get(tid) or _quoted(ids, tid)
                head = heads[tid] = f'{quoted}:{{"id":{quoted},"parent":{parent_text},"children":'
            changed = task.last_state_change
            spec_name = task.task_spec.name
            triggered = task.triggered
            text = (f'{head}{_children_text(children_texts, ids, tid, children) if children else "[]"}'
                    f',"last_state_change":'
                    f'{float.__repr__(changed) if type(changed) is float and changed - changed == 0 else enc(changed)}'
                    f',"state":{int.__repr__(state) if type(state) is int else enc(state)}'
                    f',"task_spec":{names.get(spec_name) or _name_text(names, spec_name, enc)}'
                    f',"triggered":{"true" if triggered is True else "false" if triggered is False else enc(triggered)}'
                    f',"internal_data":{"{}" if no_internal else enc(convert(internal))}'
                    f',"data":{data_text},"delta":{delta_text},"typename":{typename_text}}}')
            if key is not None and (state & _FINISHED or delta_text is _NO_DELTA_TEXT or parent_keys is None
                                    or all(type(k) is str for k in parent_keys)):  # 1 == True, "1" != "true"
                cache[tid] = (key, text)
            parts.append(text)
        texts.prune(all_tasks)
        return ",".join(parts)


class _WorkflowTexts:
    """One workflow's texts from earlier dumps: each task's, each task id's, each children list's,
    each task's opening (id and parent)."""

    __slots__ = ("tasks", "ids", "children", "heads")

    def __init__(self) -> None:
        self.tasks: dict = {}
        self.ids: dict = {}
        self.children: dict = {}
        self.heads: dict = {}

    def prune(self, all_tasks: dict) -> None:
        for texts in (self.tasks, self.ids, self.children, self.heads):
            if len(texts) > len(all_tasks):
                for gone in set(texts) - set(all_tasks):
                    del texts[gone]


def _quoted(ids: dict, task_id: UUID) -> str:
    text = ids[task_id] = f'"{task_id}"'  # a UUID's text needs no JSON escaping
    return text


def _name_text(names: dict, name: str, enc) -> str:
    text = names[name] = enc(name)
    return text


def _children_text(children_texts: dict, ids: dict, tid: UUID, children: tuple) -> str:
    """The JSON list of a task's children ids; a list that only grew (a loop) adds the new ones."""
    known = children_texts.get(tid)
    if known is not None and known[0] == children:
        return known[1]
    if known is not None and known[0] and len(children) > len(known[0]) and children[:len(known[0])] == known[0]:
        added = ",".join(ids.get(c) or _quoted(ids, c) for c in children[len(known[0]):])
        text = f"{known[1][:-1]},{added}]"
    else:
        text = "[" + ",".join(ids.get(c) or _quoted(ids, c) for c in children) + "]"
    children_texts[tid] = (children, text)
    return text


_writer = _StateWriter()


def dump_state(workflow: BpmnWorkflow) -> str:
    """Serialize a workflow's state (without specs) to a JSON string."""
    return _writer.state(workflow)


def load_state(state: str, spec: BpmnProcessSpec, subprocess_specs: dict) -> BpmnWorkflow:
    """Restore a workflow saved by ``dump_state`` around the given (cached) specs."""
    dct = json.loads(state, cls=serializer.json_decoder_cls)
    serializer.migrate(dct)
    return serializer.from_dict(dct, spec=spec, subprocess_specs=subprocess_specs)


# -- plain JSON values ------------------------------------------------------------------------

_BIG_INT = 10 ** 4000  # beyond this, int <-> str conversion limits may apply: leave those to json


class _Unusual(Exception):
    """A value the fast walk leaves to the JSON round trip."""


def to_jsonable(value: Any) -> Any:
    """Convert task data (which may hold datetimes, Decimals, dates) to plain JSON values.

    The result is ``json.loads(json.dumps(value, default=...))``; values made of plain
    dicts, lists, tuples, strings, numbers, booleans, None, datetimes, dates and Decimals
    are converted by a direct walk, anything else by that round trip.
    """
    try:
        return _plain(value, set())
    except _Unusual:
        return _round_trip(value)


def _round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


def _plain(value: Any, path: set) -> Any:
    t = type(value)
    if t is str or t is bool or value is None or t is float:
        return value
    if t is int:
        if -_BIG_INT < value < _BIG_INT:
            return value
        raise _Unusual
    if t is dict:
        ident = id(value)
        if ident in path:
            raise ValueError("Circular reference detected")
        path.add(ident)
        out = {}
        for k, v in value.items():
            out[k if type(k) is str else _key(k)] = _plain(v, path)
        path.discard(ident)
        return out
    if t is list or t is tuple:
        ident = id(value)
        if ident in path:
            raise ValueError("Circular reference detected")
        path.add(ident)
        out_list = [_plain(v, path) for v in value]
        path.discard(ident)
        return out_list
    if t is datetime or t is date:
        return value.isoformat()
    if t is Decimal:
        return str(value)
    return _round_trip(value)  # subclasses, sets, other objects: exactly what json makes of them


def _key(k: Any) -> str:
    """A non-str dict key as JSON writes it (only the exact types whose text is known here)."""
    t = type(k)
    if t is bool or k is None:
        return "true" if k is True else "false" if k is False else "null"
    if t is int and -_BIG_INT < k < _BIG_INT:
        return int.__repr__(k)
    if t is float:
        if k != k:
            return "NaN"
        if k in (float("inf"), float("-inf")):
            return "Infinity" if k > 0 else "-Infinity"
        return float.__repr__(k)
    raise _Unusual


def _default(value: Any) -> Any:
    if isinstance(value, date):  # datetime is a date subclass
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)
