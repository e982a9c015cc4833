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
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION
from SpiffWorkflow.bpmn.specs import BpmnProcessSpec
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG


class SpeclessWorkflowConverter(BpmnWorkflowConverter):
    """Converts a workflow without its specs; restores it around specs given by the caller."""

    def to_dict(self, workflow: BpmnWorkflow) -> dict:
        dct = super(BpmnWorkflowConverter, self).to_dict(workflow)
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
