"""Builds small BPMN documents for tests, with one knob per thing a test wants to break."""

from __future__ import annotations

import json
from pathlib import Path

HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  id="Defs_{pid}" targetNamespace="http://careflow.example/test">
"""

FORM = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Note", "x-title-zh": "备注", "type": "object", "required": ["note"],
    "properties": {"note": {"type": "string", "minLength": 1, "title": "Note", "x-title-zh": "备注"}},
}


def process_xml(pid: str = "p_test", *, script: str = "y = 1", timer: str | None = None,
                form: str | None = "note.schema.json", lane: bool = True, extra: str = "",
                task_tag: str = "userTask", back_edge: bool = False, head: str | None = None) -> str:
    """A process: start -> user task (lane 'customer_service') -> script -> end, with options."""
    props = (f'<bpmn:extensionElements><spiffworkflow:properties><spiffworkflow:property '
             f'name="formJsonSchemaFilename" value="{form}" /></spiffworkflow:properties>'
             f'</bpmn:extensionElements>') if form else ""
    lanes = ("""<bpmn:laneSet id="ls"><bpmn:lane id="lane_cs" name="customer_service">
        <bpmn:flowNodeRef>start</bpmn:flowNodeRef><bpmn:flowNodeRef>work</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>calc</bpmn:flowNodeRef><bpmn:flowNodeRef>end</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>t1</bpmn:flowNodeRef><bpmn:flowNodeRef>after_timer</bpmn:flowNodeRef>
        </bpmn:lane></bpmn:laneSet>""" if lane else "")
    timer_xml = ""
    if timer is not None:
        timer_xml = f"""<bpmn:boundaryEvent id="t1" name="Timer" attachedToRef="work" cancelActivity="false">
      <bpmn:outgoing>ft</bpmn:outgoing>
      <bpmn:timerEventDefinition id="td"><bpmn:timeDuration>{timer}</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="after_timer"><bpmn:incoming>ft</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="ft" sourceRef="t1" targetRef="after_timer" />"""
    back = ""
    if back_edge:  # calc -> gateway -> (again) work, else end
        back = ('<bpmn:exclusiveGateway id="again" default="fdone" />'
                '<bpmn:sequenceFlow id="fback" sourceRef="again" targetRef="work">'
                '<bpmn:conditionExpression>y &lt; 3</bpmn:conditionExpression></bpmn:sequenceFlow>'
                '<bpmn:sequenceFlow id="fdone" sourceRef="again" targetRef="end" />')
        xml_f3 = '<bpmn:sequenceFlow id="f3" sourceRef="calc" targetRef="again" />'
    else:
        xml_f3 = '<bpmn:sequenceFlow id="f3" sourceRef="calc" targetRef="end" />'
    return (head or HEAD).format(pid=pid) + f"""  <bpmn:process id="{pid}" name="测试 / Test" isExecutable="true">
    {lanes}
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:{task_tag} id="work" name="处理 / Work">{props}<bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing></bpmn:{task_tag}>
    <bpmn:scriptTask id="calc" name="计算 / Calc"><bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
      <bpmn:script>{script}</bpmn:script></bpmn:scriptTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="work" />
    <bpmn:sequenceFlow id="f2" sourceRef="work" targetRef="calc" />
    {xml_f3}
    {back}{timer_xml}{extra}
  </bpmn:process>
</bpmn:definitions>
"""


def write_bundle(folder: Path, xml: str, name: str = "p_test.bpmn", form: dict | str | None = FORM,
                 form_name: str = "note.schema.json") -> Path:
    """Write a BPMN file (and its form) into ``folder``; returns the BPMN path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(xml, encoding="utf-8")
    if form is not None:
        (folder / form_name).write_text(form if isinstance(form, str) else json.dumps(form), encoding="utf-8")
    return path
