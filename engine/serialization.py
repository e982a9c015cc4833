"""Workflow state <-> JSON, with the process spec stored once per version, not per instance.

The stock serializer embeds the whole parsed spec (about half the bytes) in every
instance and rebuilds it on every load. Our converter leaves ``spec`` and
``subprocess_specs`` out and takes the cached spec objects of the instance's version
when restoring. ``date`` and ``Decimal`` in task data get converters of their own.

A task's data is stored as a delta against its parent's data (SpiffWorkflow's format);
that delta only stays valid while the parent is finished too, so a finished task under
a still-running parent (an iteration of a loop) is stored with its full data instead.

``dump_state`` writes the JSON that ``json.dumps(serializer.to_dict(wf))`` would write,
byte for byte, but keeps the JSON text of what cannot have changed since the previous dump
of the same workflow object, so a step re-encodes only what moved. A task's text has three
parts: its fixed fields (ids, children, state, spec name...: reused while they are the
same objects), its internal data and its data or delta. Those two are encoded anew for a
running task (they change with it, mostly); a finished task's are reused while the values
they encode pickle to the same bytes (``_Pickles``), or, when no container holds them,
without even that check (below). The common values of a task (empty dicts, floats, ints,
booleans, its spec's name) are written directly rather than through the encoder.

Why data needs checking at all: SpiffWorkflow copies a parent's data one level deep into
its children, so the nested containers of a finished task's data are shared with the
tasks after it, and a script changing one in place (``case["customer"]["tier"] = "vip"``)
changes the finished task's data too: the stock conversion writes the change into its
delta. What does not change is the data and internal-data dicts themselves of a finished
task (and of its finished parent): scripts and expressions run on the data of the task
running them, SpiffWorkflow inherits into, resets and merges into unfinished tasks, and
the engine writes only the start's data and the data a user submits to a ready task. So a
finished task whose text is made of values no container holds (strings, numbers,
booleans, None) keeps its text for as long as its dicts are the same objects: a long
history of such tasks costs no checking (those checks come first, before anything else of
the task is looked at). A finished task that runs again is a running task's text until it
finishes anew, however its dicts stayed.
"""

from __future__ import annotations

import io
import json
import pickle
import threading
from collections.abc import Callable, Mapping
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
    """The JSON text of a workflow state, reusing the text of what did not change since the last dump.

    It has a registry of its own, always in encoder mode (the conversion ``serialize_json``
    uses), so dumping never flips the mode of the shared ``serializer.registry``.
    """

    CACHE_ATTR = "_careflow_state_json"

    def __init__(self) -> None:
        self.registry = _make_registry()
        self.registry._encoder_mode = True
        self.encode = create_encoder(self.registry)(separators=(",", ":")).encode
        self.names: dict[str, str] = {}  # a task spec name's JSON text
        self._events_text = self.encode({"bpmn_events": [], "typename": self.registry.typenames[BpmnWorkflow],
                                         serializer.VERSION_KEY: SERIALIZER_VERSION})
        if self.encode(self.registry.typenames[Task]) != _TASK_TYPENAME:
            raise RuntimeError("SpiffWorkflow names its Task type differently: review _TASK_TYPENAME")

    def state(self, wf: BpmnWorkflow, part_no: int | None = None, part_min: int = 0) -> tuple[str, str | None]:
        """The state's JSON text; with ``part_no``, the text to store (archived tasks as stubs) and
        the part of newly archived tasks (None when they come to less than ``part_min`` characters)."""
        enc, reg = self.encode, self.registry
        texts = self.texts(wf)
        out: list = []  # the text's pieces (a workflow's tasks: a list of them), joined once
        archiving = _Archiving(part_no) if part_no is not None else None
        self.workflow(wf, out, archiving, '""')
        out.append(',"subprocesses":{')
        for i, (k, sp) in enumerate(wf.subprocesses.items()):
            key_text = self.subprocess_key(texts, k)
            out.append(f"{',' if i else ''}{key_text}:")
            self.workflow(sp, out, archiving, key_text)
            out.append(self.subprocess_tail(sp))
        events = wf.bpmn_events
        if type(events) is list and not events and type(wf) is BpmnWorkflow:
            rest = self._events_text
        else:
            rest = enc({"bpmn_events": reg.convert(events), "typename": reg.typenames[type(wf)],
                        serializer.VERSION_KEY: SERIALIZER_VERSION})
        out.append(f"}},{rest[1:]}")
        part = archiving.archive(part_min) if archiving is not None else None
        return "".join(x if type(x) is str else ",".join(x) for x in out), part

    def texts(self, wf) -> _WorkflowTexts:
        texts = wf.__dict__.get(self.CACHE_ATTR)
        if texts is None:
            texts = wf.__dict__[self.CACHE_ATTR] = _WorkflowTexts()
        return texts

    def subprocess_key(self, texts: _WorkflowTexts, key) -> str:
        known = texts.keys.get(key)
        if known is None or known[0] is not key:
            known = texts.keys[key] = (key, self.encode(str(key)))
        return known[1]

    def subprocess_tail(self, sp) -> str:
        texts = self.texts(sp)
        parent_task_id, spec_name, kind = sp.parent_task_id, sp.spec.name, type(sp)
        known = texts.tail
        if known is None or known[0] is not parent_task_id or known[1] is not spec_name or known[2] is not kind:
            rest = self.encode({"parent_task_id": str(parent_task_id), "spec": spec_name,
                                "typename": self.registry.typenames[kind]})
            known = texts.tail = (parent_task_id, spec_name, kind, f",{rest[1:]}")  # (closes the object)
        return known[3]

    def workflow(self, wf, out: list, archiving: _Archiving | None, key_text: str) -> None:
        """A workflow's JSON object, open at its end: WorkflowConverter.to_dict's keys in its order
        (its tasks as the list of their texts; ``key_text``: the workflow's key in a part)."""
        enc, reg = self.encode, self.registry
        texts = self.texts(wf)
        ids = texts.ids
        data, correlations, last_task = wf.data, wf.correlations, wf.last_task
        success, completed = wf.success, wf.completed
        last_id = None if last_task is None else last_task.id
        if (type(data) is dict and not data and type(correlations) is dict and not correlations
                and type(success) is bool and type(completed) is bool):  # a running subprocess, mostly
            last = "null" if last_task is None else ids.get(last_id) or _id_text(ids, last_id, enc)
            head = (f'{{"data":{{}},"correlations":{{}},"last_task":{last},"success":{"true" if success else "false"}'
                    f',"completed":{"true" if completed else "false"}}}')
        else:  # a finished one has the data of its end
            snapshot = _pickles().of((data, correlations))
            known = texts.head
            if (snapshot is not None and known is not None and known[0] == snapshot and known[1] is last_task
                    and known[2] is last_id and known[3] is success and known[4] is completed):
                head = known[5]
            else:
                head = enc({"data": reg.convert(reg.clean(data)), "correlations": correlations,
                            "last_task": str(last_id) if last_task is not None else None,
                            "success": success, "completed": completed})
                texts.head = (snapshot, last_task, last_id, success, completed, head)
        root_id = wf.task_tree.id
        root = ids.get(root_id) or _id_text(ids, root_id, enc)
        out.append(f'{head[:-1]},"tasks":{{')
        out.append(self.tasks(wf, archiving, key_text))
        out.append(f'}},"root":{root}')

    def tasks(self, wf, archiving: _Archiving | None, key_text: str) -> list[str]:
        """The tasks' texts, each TaskConverter.to_dict's keys in its order: a task's fixed fields
        (reused while they are the same objects), its internal data and its data or delta (see
        the module's docstring for when those are reused). When ``archiving``, an archived task
        whose text did not change is its stub, and the finished tasks not archived are offered
        to ``archiving``."""
        texts = self.texts(wf)
        entries = texts.tasks
        enc, convert = self.encode, self.registry.convert
        pickled = _pickles().of
        all_tasks = wf.tasks
        parts = []
        for key, task in all_tasks.items():
            e = entries.get(task)
            if e is None:
                e = entries[task] = _TaskText()
            state, parent_id = task._state, task._parent
            parent = all_tasks.get(parent_id) if parent_id is not None else None
            # a finished task whose text was reused or settled at the last dump and still is: the checks of
            # the way below that end in its last text (see there), in a cheaper order
            if (state & _FINISHED and e.settled and state is e.state and task.data is e.settled_data
                    and key is e.key and task.id is e.id and parent_id is e.parent_id and parent is e.parent
                    and task.last_state_change is e.changed and task.triggered is e.triggered
                    and task.task_spec.name is e.name and task._children == e.children):
                internal = task.internal_data
                if type(internal) is dict and not internal:
                    internal_text = _EMPTY_OBJECT
                else:
                    internal_text = e.internal_text if internal is e.settled_internal else None
                if internal_text is e.internal_used:
                    full = parent is None or not parent._state & _FINISHED
                    if full is e.settled_full and (None if full else parent.data) is e.settled_parent:
                        text = e.text
                        if archiving is None:
                            parts.append(text)
                        elif text is e.archived:
                            parts.append(e.stub)
                        else:
                            archiving.offer(parts, e, text, key_text)
                        continue
            changed, triggered = task.last_state_change, task.triggered
            name, children, tid = task.task_spec.name, task._children, task.id
            # id, parent, children, last_state_change, state, task_spec, triggered
            if (state is e.state and changed is e.changed and triggered is e.triggered and name is e.name
                    and parent is e.parent and tid is e.id and key is e.key and parent_id is e.parent_id
                    and children == e.children):
                fixed = e.fixed
            else:
                fixed = self.fixed(e, texts.ids, key, tid, parent, parent_id, children, changed, state, name, triggered)
            # internal_data
            internal = task.internal_data
            finished = state & _FINISHED
            if type(internal) is dict and not internal:
                internal_text = _EMPTY_OBJECT
            elif finished and internal is e.settled_internal:  # no container in it: see the module's docstring
                internal_text = e.internal_text
            else:
                snapshot = pickled(internal) if finished else None  # (a running task's changes, mostly)
                if snapshot is not None and snapshot == e.internal_pickle:
                    internal_text = e.internal_text
                else:
                    internal_text = enc(convert(internal))
                    e.internal_pickle, e.internal_text = snapshot, internal_text
                e.settled_internal = internal if finished and _no_containers(internal, None) else None
            # data, delta: the full data of a root (or of a finished task under a running parent, whose
            # delta would not stay valid), else the updates and deletions against the parent's data
            data = task.data
            full = parent is None or bool(finished and not parent._state & _FINISHED)
            parent_data = None if full else parent.data
            if (finished and e.settled and e.settled_data is data and e.settled_full is full
                    and e.settled_parent is parent_data):  # no container in it: see the module's docstring
                data_text = e.data_used
            elif full:
                if type(data) is dict and not data:
                    data_text = _EMPTY_DATA
                else:
                    snapshot = pickled(data) if finished else None
                    if snapshot is not None and e.data_kind is _FULL and snapshot == e.data_pickle:
                        data_text = e.data_text
                    else:
                        data_text = f'"data":{enc(data)},"delta":{{}}'
                        e.data_kind, e.data_pickle, e.data_text = _FULL, snapshot, data_text
            else:
                if type(data) is not dict or type(parent_data) is not dict:
                    data_text = self.delta(e, DeepMerge.get_updated_keys(parent_data, data),
                                           DeepMerge.get_deleted_keys(parent_data, data), pickled if finished else None)
                elif not data:  # every key of the parent's is a deletion
                    keys = tuple(parent_data)
                    if e.data_kind is _KEYS and keys == e.data_pickle:
                        data_text = e.data_text
                    else:
                        data_text = (f'"data":{{}},"delta":{{"updates":{{}},"deletions":'
                                     f'{enc(list(keys)) if keys else "[]"}}}')
                        # 1 == True, "1" != "true": equal keys give the same text when they are strings
                        if all(type(k) is str for k in keys):
                            e.data_kind, e.data_pickle, e.data_text = _KEYS, keys, data_text
                        else:
                            e.data_kind = None
                else:  # DeepMerge.get_updated_keys, get_deleted_keys, each value compared once
                    updates = None
                    items = iter(data.items())
                    for k, v in items:  # no delta, mostly: a check that builds nothing
                        if k not in parent_data or v != parent_data[k]:
                            updates = {k: v}
                            for k, v in items:  # (the rest of them)
                                if k not in parent_data or v != parent_data[k]:
                                    updates[k] = v
                            break
                    if updates is None and len(data) == len(parent_data):  # (and its keys are all the parent's)
                        data_text = _NO_DELTA
                    else:
                        data_text = self.delta(e, updates or {}, [k for k in parent_data if k not in data],
                                               pickled if finished else None)
            if finished:
                if e.settled_data is not data or e.settled_full is not full or e.settled_parent is not parent_data:
                    e.settled_data, e.settled_full, e.settled_parent = data, full, parent_data
                    e.settled = _no_containers(data, parent_data)
            elif e.settled_data is not None:  # its text is a running task's now: settled anew when it finishes
                e.settled, e.settled_data, e.settled_full, e.settled_parent = False, None, None, None
            if fixed is e.fixed_used and internal_text is e.internal_used and data_text is e.data_used:
                text = e.text
            else:
                text = e.join(fixed, internal_text, data_text)
            archived = e.archived
            if archived is not None:
                if text is archived or text == archived:  # (equal: the text a restored task had in its part)
                    e.archived = text
                    if archiving is not None:
                        parts.append(e.stub)
                        continue
                else:  # changed since: stored in full again (and archived anew once settled)
                    e.archived = e.stub = None
            if archiving is not None and finished:
                archiving.offer(parts, e, text, key_text)
            else:
                parts.append(text)
        if len(entries) > len(all_tasks):
            texts.prune(all_tasks)
        return parts

    def delta(self, e: _TaskText, updates: dict, deletions: list, pickled) -> str:
        """A task's delta text: the last one while its updates and deletions pickle the same (``pickled``
        is None for a running task: its delta changes with it, mostly)."""
        if not updates and not deletions:
            return _NO_DELTA
        snapshot = None if pickled is None else pickled((updates, deletions))
        if snapshot is not None and e.data_kind is _DELTA and snapshot == e.data_pickle:
            return e.data_text
        enc = self.encode
        data_text = (f'"data":{{}},"delta":{{"updates":{enc(updates) if updates else "{}"}'
                     f',"deletions":{enc(deletions) if deletions else "[]"}}}')
        e.data_kind, e.data_pickle, e.data_text = _DELTA, snapshot, data_text
        return data_text

    def fixed(self, e: _TaskText, ids: dict, key, tid, parent, parent_id, children, changed, state, name,
              triggered) -> str:
        """The text of a task's fields that are not data (remembered in ``e`` with what it was made of)."""
        enc, names = self.encode, self.names
        if e.head is None or key is not e.key or tid is not e.id or parent is not e.parent \
                or parent_id is not e.parent_id:
            id_text = ids.get(tid) or _id_text(ids, tid, enc)
            key_text = id_text if key is tid else enc(str(key))
            parent_text = "null" if parent is None else ids.get(parent_id) or _id_text(ids, parent_id, enc)
            e.head = f'{key_text}:{{"id":{id_text},"parent":{parent_text},"children":'
            e.key_text = key_text
            e.key, e.id, e.parent, e.parent_id = key, tid, parent, parent_id
        if children != e.children or e.children_text is None:
            e.children_text = _children_text(e, children, ids, enc)
        e.state, e.changed, e.triggered, e.name = state, changed, triggered, name
        text = e.fixed = (
            f'{e.head}{e.children_text},"last_state_change":'
            f'{float.__repr__(changed) if type(changed) is float and changed - changed == 0 else enc(changed)}'
            f',"state":{int.__repr__(state) if type(state) is int else enc(state)}'
            f',"task_spec":{names.get(name) or _name_text(names, name, enc)}'
            f',"triggered":{"true" if triggered is True else "false" if triggered is False else enc(triggered)}')
        return text


_EMPTY_OBJECT = "{}"
_EMPTY_DATA = '"data":{},"delta":{}'
_NO_DELTA = '"data":{},"delta":{"updates":{},"deletions":[]}'
_FULL, _DELTA, _KEYS = "full", "delta", "keys"  # what a task's data text was made of
_TASK_TYPENAME = json.dumps("Task")


class _TaskText:
    """A task's text from the last dump, in parts, each with what it was made of."""

    __slots__ = ("key", "id", "parent", "parent_id", "head", "children", "children_text", "state", "changed",
                 "triggered", "name", "fixed", "internal_pickle", "internal_text", "data_kind", "data_pickle",
                 "data_text", "fixed_used", "internal_used", "data_used", "text", "settled", "settled_data",
                 "settled_full", "settled_parent", "settled_internal", "key_text", "archived", "stub")

    def __init__(self) -> None:
        self.key = self.id = self.parent = self.parent_id = self.head = self.children = None
        self.children_text = self.state = self.changed = self.triggered = self.name = self.fixed = None
        self.internal_pickle = self.internal_text = self.data_kind = self.data_pickle = self.data_text = None
        self.fixed_used = self.internal_used = self.data_used = self.text = None
        self.settled = False
        self.settled_data = self.settled_full = self.settled_parent = self.settled_internal = None
        self.key_text = self.archived = self.stub = None  # its key's text; its text in a part, its stub

    def join(self, fixed: str, internal_text: str, data_text: str) -> str:
        """The whole text from its parts (remembered with them)."""
        self.fixed_used, self.internal_used, self.data_used = fixed, internal_text, data_text
        text = self.text = f'{fixed},"internal_data":{internal_text},{data_text},"typename":{_TASK_TYPENAME}}}'
        return text


class _Archiving:
    """The finished tasks one dump offers to archive, and the part made of them (``archive``)."""

    __slots__ = ("part_no", "offers", "size")

    def __init__(self, part_no: int) -> None:
        self.part_no = part_no
        self.offers: list[tuple[list[str], int, _TaskText, str, str]] = []
        self.size = 0

    def offer(self, parts: list[str], e: _TaskText, text: str, key_text: str) -> None:
        """Append a finished task's text to its workflow's ``parts``; it may become a stub there."""
        self.offers.append((parts, len(parts), e, text, key_text))
        parts.append(text)
        self.size += len(text)

    def archive(self, min_size: int) -> str | None:
        """The part of the tasks offered (their texts by workflow key), each replaced by its stub in
        the state, when they come to ``min_size`` characters or more; else None."""
        if not self.offers or self.size < min_size:
            return None
        tail = f":{self.part_no}"
        by_workflow: dict[str, list[str]] = {}
        for parts, i, e, text, key_text in self.offers:
            by_workflow.setdefault(key_text, []).append(text)
            e.archived = text
            e.stub = parts[i] = f"{e.key_text}{tail}"
        return "{" + ",".join(f"{k}:{{{','.join(texts)}}}" for k, texts in by_workflow.items()) + "}"


class _WorkflowTexts:
    """One workflow's texts from earlier dumps: each task's (by task object), each task id's, each
    subprocess key's, a subprocess's closing fields, the workflow's opening fields when it has data."""

    __slots__ = ("tasks", "ids", "keys", "tail", "head")

    def __init__(self) -> None:
        self.tasks: dict[Task, _TaskText] = {}
        self.ids: dict = {}
        self.keys: dict = {}
        self.tail: tuple | None = None
        self.head: tuple | None = None

    def prune(self, all_tasks: dict) -> None:
        live = set(all_tasks.values())
        for task in [t for t in self.tasks if t not in live]:
            del self.tasks[task]
        if len(self.ids) > 2 * len(all_tasks):  # (ids of children are kept as well: seldom worth it)
            for gone in set(self.ids) - set(all_tasks):
                del self.ids[gone]


class _Pickles:
    """Pickles of values made only of exact builtin types (dict, list, tuple, set, str, int, float,
    bool, None, bytes...), to tell whether a value changed since its text was written.

    A value's JSON text is a function of its structure: types, contents, order. For exact
    builtins, the pickle writes all of that (a ``True`` is not a ``1``, a ``-0.0`` not a
    ``0.0``, key order is kept), so equal pickles mean equal texts; one object met twice is
    pickled as a reference, so the pickles of equal values can differ (the text is then
    written anew: never wrong, only slower). Any other object (a subclass, a datetime, a
    function) stops the pickler before its own code runs: ``of`` returns None and the text
    is always written anew. Task data needs this check because SpiffWorkflow's data
    inheritance copies shallowly: a script changing a nested value in place also changes
    the data of the finished tasks that share it.
    """

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.pickler = _BuiltinsPickler(self.buffer, protocol=5)

    def of(self, value: Any) -> bytes | None:
        """The pickle of ``value``, or None when it holds anything but exact builtins."""
        buffer = self.buffer
        buffer.seek(0)
        buffer.truncate()
        try:
            self.pickler.dump(value)
        except Exception:  # not builtins only, or too deep: no reuse
            return None
        finally:
            self.pickler.clear_memo()  # (it holds the objects pickled)
        return buffer.getvalue()


class _NotBuiltin(Exception):
    pass


class _BuiltinsPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:  # called for everything but the exact builtin types
        raise _NotBuiltin


_local = threading.local()


def _pickles() -> _Pickles:
    """This thread's pickler (a pickler and its buffer serve one dump at a time)."""
    pickles = getattr(_local, "pickles", None)
    if pickles is None:
        pickles = _local.pickles = _Pickles()
    return pickles


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _no_containers(data, parent_data) -> bool:
    """Whether a finished task's data text is made of values no container holds: its data's (and, for
    a delta, its parent's), or its parent's keys alone (a task without data of its own)."""
    if type(data) is not dict:
        return False
    if parent_data is None:
        return _ATOMS.issuperset(map(type, data.values()))
    if type(parent_data) is not dict:
        return False
    return not data or (_ATOMS.issuperset(map(type, data.values()))
                        and _ATOMS.issuperset(map(type, parent_data.values())))


def _name_text(names: dict, name: str, enc) -> str:
    text = names[name] = enc(name)
    return text


def _children_text(e: _TaskText, children: list, ids: dict, enc) -> str:
    """The JSON list of a task's children ids; a list that only grew (a loop) adds the new ones."""
    known, known_text = e.children, e.children_text
    if (known and known_text is not None and type(children) is list and len(children) > len(known)
            and children[:len(known)] == known):
        added = ",".join(ids.get(c) or _id_text(ids, c, enc) for c in children[len(known):])
        text = f"{known_text[:-1]},{added}]"
    else:
        text = "[" + ",".join(ids.get(c) or _id_text(ids, c, enc) for c in children) + "]"
    e.children = list(children)
    return text


def _id_text(ids: dict, task_id, enc) -> str:
    """A task id's JSON text, kept in ``ids`` (a UUID's ``str`` is slow; its text needs no escaping)."""
    text = ids[task_id] = f'"{task_id}"' if type(task_id) is UUID else enc(str(task_id))
    return text


_writer = _StateWriter()

PART_MIN = 4096
"""The fewest characters of finished tasks ``dump_state_parts`` moves into a part of their own."""

PartsReader = Callable[[list[int]], Mapping[int, str]]
"""Reads the parts with the given numbers (of the instance being restored): number -> text."""


def dump_state(workflow: BpmnWorkflow) -> str:
    """Serialize a workflow's state (without specs) to a JSON string, every task in it."""
    return _writer.state(workflow)[0]


def dump_state_parts(workflow: BpmnWorkflow, part_no: int, part_min: int = PART_MIN) -> tuple[str, str | None]:
    """The state to store for a workflow, and the new part to store with it under ``part_no``
    (or None), so that a step writes what moved rather than its whole history.

    A finished task whose text did not change since it was archived is written as a stub,
    ``"<task id>":<part number>``, its text kept in that part. The finished tasks not archived
    yet become the new part once they come to ``part_min`` characters. The marks live on the
    workflow object: store the part in the same transaction as the state, and drop the
    workflow if that transaction fails (``engine.runtime`` caches workflows only after commit).
    ``load_state`` with the parts restores exactly what ``dump_state`` would have written.
    """
    return _writer.state(workflow, part_no, part_min)


def load_state(state: str, spec: BpmnProcessSpec, subprocess_specs: dict,
               parts: PartsReader | None = None) -> BpmnWorkflow:
    """Restore a workflow saved by ``dump_state`` (or ``dump_state_parts``: its stubs are read
    through ``parts``) around the given (cached) specs."""
    dct = json.loads(state, cls=serializer.json_decoder_cls)
    archived = _unstub(dct, parts)
    serializer.migrate(dct)
    workflow = serializer.from_dict(dct, spec=spec, subprocess_specs=subprocess_specs)
    if archived:
        _seed_archived(workflow, archived)
    return workflow


def expand_state(state: str, parts: PartsReader) -> dict:
    """A stored state as a dict with every task in full (its stubs replaced from ``parts``): the
    dict ``serializer.to_dict`` makes of the workflow, without its specs."""
    dct = json.loads(state, cls=serializer.json_decoder_cls)
    _unstub(dct, parts)
    return dct


def _unstub(dct: dict, parts: PartsReader | None) -> dict[str, list[tuple[str, str, str]]]:
    """Put the archived tasks of a state back in place of their stubs; returns them by workflow
    key ('' for the top workflow) as (task key, stub, text in the part) for ``_seed_archived``."""
    stubs = []  # (workflow key, its tasks, task key, part number)
    for key, workflow in [("", dct), *dct.get("subprocesses", {}).items()]:
        tasks = workflow.get("tasks", {})
        stubs += [(key, tasks, task_key, n) for task_key, n in tasks.items() if type(n) is int]
    if not stubs:
        return {}
    if parts is None:
        raise ValueError("this state keeps finished tasks in parts of their own: load it with its parts")
    wanted = sorted({n for *_, n in stubs})
    texts = parts(wanted)
    missing = [n for n in wanted if n not in texts]
    if missing:
        raise ValueError(f"the state's parts {missing} are missing")
    decoded = {n: json.loads(texts[n]) for n in wanted}
    enc = _writer.encode
    archived: dict[str, list[tuple[str, str, str]]] = {}
    for workflow_key, tasks, task_key, n in stubs:
        try:
            raw = decoded[n][workflow_key][task_key]
        except KeyError:
            raise ValueError(f"part {n} of the state lacks task {task_key}") from None
        tasks[task_key] = raw
        key_text = enc(task_key)
        # (encoded before restoring: the converters may change the dict they read)
        archived.setdefault(workflow_key, []).append((task_key, f"{key_text}:{n}", f"{key_text}:{enc(raw)}"))
    return archived


def _seed_archived(wf: BpmnWorkflow, archived: dict[str, list[tuple[str, str, str]]]) -> None:
    """Mark the tasks a restored state took from its parts as archived, so the next dump writes
    them as stubs again when their text is still the one in the part."""
    workflows = {"": wf, **{str(k): sp for k, sp in wf.subprocesses.items()}}
    for workflow_key, entries in archived.items():
        workflow = workflows[workflow_key]
        texts = _writer.texts(workflow)
        for task_key, stub, text in entries:
            e = texts.tasks[workflow.tasks[UUID(task_key)]] = _TaskText()
            e.archived, e.stub = text, stub


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
