"""Deploy: versions by checksum, and every kind of invalid input rejected with a located, actionable error."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from engine.errors import DeployError
from engine.models import ProcessVersion

from bpmn_factory import FORM, process_xml, write_bundle


def problems_of(cf, path) -> list:
    with pytest.raises(DeployError) as exc:
        cf.deploy([path])
    return exc.value.problems


def test_same_content_same_version_changed_content_new_version(cf, tmp_path):
    path = write_bundle(tmp_path, process_xml())
    first = cf.deploy([path], author="owner", comment="first")[0]
    again = cf.deploy([path])[0]
    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created, again.checksum) == (1, False, first.checksum)

    started = cf.start("p_test", {"n": 1})
    path.write_text(process_xml(script="y = 2"), encoding="utf-8")
    second = cf.deploy([path])[0]
    assert (second.version, second.created) == (2, True)
    # the running instance stays on the version it started with; new ones take the latest
    assert cf.show(started.instance_id)["version"] == 1
    assert cf.show(cf.start("p_test").instance_id)["version"] == 2
    with cf.Session() as s:
        versions = s.scalars(select(ProcessVersion.version).where(ProcessVersion.process_id == "p_test")).all()
        stored = s.scalar(select(ProcessVersion).where(ProcessVersion.version == 1))
    assert sorted(versions) == [1, 2]
    assert stored.author == "owner" and stored.comment == "first"
    assert "note.schema.json" in stored.forms


def test_changed_form_makes_a_new_version(cf, tmp_path):
    path = write_bundle(tmp_path, process_xml())
    v1 = cf.deploy([path])[0]
    write_bundle(tmp_path, process_xml(), form={**FORM, "title": "Changed"})
    v2 = cf.deploy([path])[0]
    assert v2.version == 2 and v2.checksum != v1.checksum


def test_instance_state_does_not_embed_the_spec(cf, tmp_path):
    cf.deploy([write_bundle(tmp_path, process_xml())])
    r = cf.start("p_test")
    from engine.models import Instance

    with cf.Session() as s:
        state = s.get(Instance, r.instance_id).state
    assert '"spec"' not in state and "subprocess_specs" not in state


def test_malformed_xml_names_file_and_line(cf, tmp_path):
    xml = process_xml().replace("</bpmn:userTask>", "</bpmn:userTsk>")
    [p] = problems_of(cf, write_bundle(tmp_path, xml))
    assert p.file == "p_test.bpmn" and "malformed XML" in p.message and p.line == 12


def test_doctype_and_entities_are_refused_fast(cf, tmp_path):
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(f'<!ENTITY lol{i} "{"&lol%s;" % (i - 1 if i > 1 else "") * 10}">' for i in range(1, 10))
            + ']>\n<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&lol9;'
            + "</bpmn:definitions>")
    path = write_bundle(tmp_path, bomb, form=None)
    t0 = time.perf_counter()
    [p] = problems_of(cf, path)
    assert time.perf_counter() - t0 < 1.0
    assert "DOCTYPE" in p.message and p.line == 2


def test_external_entity_refused(cf, tmp_path):
    xxe = ('<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
           '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&x;</bpmn:definitions>')
    [p] = problems_of(cf, write_bundle(tmp_path, xxe, form=None))
    assert "DOCTYPE" in p.message


def test_oversized_file_refused(cf, tmp_path):
    xml = process_xml().replace("</bpmn:process>", "<!--" + "x" * (6 * 1024 * 1024) + "--></bpmn:process>")
    [p] = problems_of(cf, write_bundle(tmp_path, xml))
    assert "limit" in p.message


def test_xsd_violation_reported_with_line(cf, tmp_path):
    xml = process_xml(extra='<bpmn:bogusThing id="bogus" />')
    problems = problems_of(cf, write_bundle(tmp_path, xml))
    assert any("bogusThing" in p.message and p.line for p in problems)


def test_unsupported_elements_listed(cf, tmp_path):
    extra = ('<bpmn:complexGateway id="cg" />'
             '<bpmn:intermediateThrowEvent id="comp"><bpmn:compensateEventDefinition /></bpmn:intermediateThrowEvent>')
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(extra=extra)))
    ids = {p.element_id for p in problems}
    assert {"cg", "comp"} <= ids
    assert all("cannot be executed" in p.message and p.hint for p in problems)


def test_spiff_validation_error_names_element(cf, tmp_path):
    # an exclusive gateway whose non-default flow has no condition
    extra = ('<bpmn:exclusiveGateway id="gw" />'
             '<bpmn:sequenceFlow id="g1" sourceRef="gw" targetRef="end" />'
             '<bpmn:sequenceFlow id="g2" sourceRef="gw" targetRef="calc" />')
    xml = process_xml(extra=extra).replace('<bpmn:sequenceFlow id="f2" sourceRef="work" targetRef="calc" />',
                                           '<bpmn:sequenceFlow id="f2" sourceRef="work" targetRef="gw" />')
    problems = problems_of(cf, write_bundle(tmp_path, xml))
    assert any(p.element_id in ("gw", "g1", "g2") for p in problems)


@pytest.mark.parametrize("expr, fragment", [
    ("PT2H", "not quoted"),
    ('"P1X"', "not a valid ISO 8601"),
    ('"PT2H', "not a valid expression"),
    ("", "empty"),
])
def test_bad_timer_expressions(cf, tmp_path, expr, fragment):
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(timer=expr)))
    assert any(fragment in p.message and p.element_id == "t1" for p in problems), problems


def test_data_driven_timer_is_accepted_with_a_warning(cf, tmp_path):
    [r] = cf.deploy([write_bundle(tmp_path, process_xml(timer="sla_duration"))])
    assert any("sla_duration" in w for w in r.warnings)


def test_user_task_without_form_or_lane(cf, tmp_path):
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(form=None, lane=False), form=None))
    messages = {(p.element_id, p.message.split(" '")[0]) for p in problems}
    assert ("work", "user task has no form") in messages
    assert any(p.element_id == "work" and "in no lane" in p.message for p in problems)


def test_missing_form_file(cf, tmp_path):
    [p] = problems_of(cf, write_bundle(tmp_path, process_xml(form="nope.schema.json")))
    assert "nope.schema.json" in p.message and p.element_id == "work" and p.line


def test_invalid_json_schema(cf, tmp_path):
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(), form={"type": "objectx"}))
    assert any("not a valid JSON Schema" in p.message for p in problems)
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(), form="{not json"))
    assert any("not valid JSON" in p.message for p in problems)


def test_back_edge_loop_rejected(cf, tmp_path):
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(back_edge=True)))
    assert any("loop" in p.message and "standardLoopCharacteristics" in (p.hint or "") for p in problems)


@pytest.mark.parametrize("script, fragment", [
    ("import os", "import"),
    ("x = ().__class__", "_"),
    ("x = = 1", "does not compile"),
])
def test_script_problems_found_at_deploy(cf, tmp_path, script, fragment):
    problems = problems_of(cf, write_bundle(tmp_path, process_xml(script=script)))
    assert any(p.element_id == "calc" and fragment in p.message + (p.hint or "") for p in problems), problems


def test_nothing_written_when_one_file_of_a_bundle_is_bad(cf, tmp_path):
    good = write_bundle(tmp_path, process_xml("p_good"), name="good.bpmn")
    bad = write_bundle(tmp_path, process_xml("p_bad", timer="PT1H"), name="bad.bpmn")
    with pytest.raises(DeployError):
        cf.deploy([good, bad])
    with cf.Session() as s:
        assert s.scalars(select(ProcessVersion)).all() == []


def test_missing_path_and_non_executable(cf, tmp_path):
    with pytest.raises(DeployError, match="no such file"):
        cf.deploy([tmp_path / "missing.bpmn"])
    xml = process_xml().replace('isExecutable="true"', 'isExecutable="false"')
    [p] = problems_of(cf, write_bundle(tmp_path, xml))
    assert "no executable process" in p.message


def test_shipped_workflows_deploy(cf):
    from pathlib import Path

    workflows = Path(__file__).resolve().parents[1] / "workflows"
    if not any(workflows.glob("*.bpmn")):
        pytest.skip("no shipped workflows yet")
    results = cf.deploy([workflows])
    assert results and all(r.version >= 1 for r in results)
