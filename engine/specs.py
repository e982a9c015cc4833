"""Parsed process specs, cached per process version (parsing is the expensive part)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

from lxml import etree
from SpiffWorkflow.bpmn.specs import BpmnProcessSpec
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import LoopTask
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser
from sqlalchemy.orm import Session

from engine.bpmn_xml import _parser
from engine.deploy import FORM_PROPERTY
from engine.errors import NotFound
from engine.models import ProcessVersion


@dataclass(frozen=True)
class HumanTaskMeta:
    """What the engine needs to know about a user/manual task spec to mirror it."""

    name: str
    title: str | None
    lane: str | None
    form_name: str | None
    instructions: str | None
    due_in: timedelta | None
    due_at_expr: str | None
    assignee_expr: str | None
    properties: dict


@dataclass
class LoadedVersion:
    """A process version with its parsed specs, ready to instantiate or restore workflows."""

    id: int
    process_id: str
    version: int
    spec: BpmnProcessSpec
    subprocess_specs: dict
    forms: dict[str, dict]
    form_checksums: dict[str, str]
    bpmn_files: dict[str, str]
    _meta: dict[tuple[str, str], HumanTaskMeta]

    def human_task_meta(self, task_spec) -> HumanTaskMeta:
        """Metadata of a human task spec (cached per spec)."""
        key = (task_spec._wf_spec.name, task_spec.name)
        meta = self._meta.get(key)
        if meta is None:
            ext = getattr(task_spec, "extensions", None) or {}
            props = dict(ext.get("properties") or {})
            due_in = None
            if props.get("dueIn"):
                due_in = TimerEventDefinition.get_timedelta_from_start(
                    TimerEventDefinition.parse_iso_duration(props["dueIn"]))
            meta = HumanTaskMeta(
                name=task_spec.bpmn_id or task_spec.name, title=task_spec.bpmn_name, lane=task_spec.lane,
                form_name=props.get(FORM_PROPERTY), instructions=ext.get("instructionsForEndUser"),
                due_in=due_in, due_at_expr=props.get("dueAt"), assignee_expr=props.get("assignee"),
                properties=props,
            )
            self._meta[key] = meta
        return meta


class SpecCache:
    """Thread-safe cache of ``LoadedVersion`` by process version id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[int, LoadedVersion] = {}

    def get(self, session: Session, version_id: int) -> LoadedVersion:
        """The loaded version, parsing it from the stored BPMN on first use."""
        loaded = self._cache.get(version_id)
        if loaded is not None:
            return loaded
        pv = session.get(ProcessVersion, version_id)
        if pv is None:
            raise NotFound(f"process version {version_id} does not exist")
        loaded = load_version(pv)
        with self._lock:
            self._cache[version_id] = loaded
        return loaded

    def clear(self) -> None:
        """Forget every cached spec."""
        with self._lock:
            self._cache.clear()


def load_version(pv: ProcessVersion) -> LoadedVersion:
    """Parse a stored process version's BPMN files into specs."""
    parser = SpiffBpmnParser()
    for name, text in pv.bpmn_files.items():
        parser.add_bpmn_xml(etree.fromstring(text.encode("utf-8"), _parser()), filename=name)
    spec = parser.get_spec(pv.process_id)
    subs = parser.get_subprocess_specs(pv.process_id)
    connect_loop_children(spec, subs)
    return LoadedVersion(id=pv.id, process_id=pv.process_id, version=pv.version, spec=spec, subprocess_specs=subs,
                         forms=pv.forms, form_checksums=pv.form_checksums, bpmn_files=pv.bpmn_files, _meta={})


def connect_loop_children(spec: BpmnProcessSpec | None, subprocess_specs: dict) -> None:
    """Connect each loop / multi-instance spec to its child spec's completion.

    SpiffWorkflow's spec deserializer does this; freshly parsed specs only get it when a
    loop creates a child in this process, so a running loop restored onto them (after a
    restart, or a migration) would never finish its iteration. Idempotent.
    """
    for wf_spec in [spec, *subprocess_specs.values()]:
        for task_spec in (wf_spec.task_specs.values() if wf_spec is not None else ()):
            if isinstance(task_spec, LoopTask):
                child = wf_spec.task_specs.get(task_spec.task_spec)
                if child is not None and not child.completed_event.is_connected(task_spec.merge_child):
                    child.completed_event.connect(task_spec.merge_child)
