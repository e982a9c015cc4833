"""Versions for the modeler: list with counts, open, edit-and-deploy (errors on element ids,
nothing written on error), diff of two versions, form meta-validation, and the CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.errors import DeployError
from engine.models import ProcessVersion
from engine.versions import (
    deploy_edited,
    diff_versions,
    get_version_files,
    list_processes,
    list_versions,
    validate_form_schema,
)

from migration_helpers import FIX, FORMS, at_diagnose, at_intake, deploy, run_to_end

V1 = (FIX / "mig_ticket_v1.bpmn").read_text(encoding="utf-8")


def version_count(cf) -> int:
    with cf.Session() as s:
        return s.scalar(select(func.count()).select_from(ProcessVersion))


def problems_of(call) -> list:
    with pytest.raises(DeployError) as exc:
        call()
    return exc.value.problems


# ------------------------------------------------------------------------------ list and open


def test_version_list_with_author_checksum_comment_and_instance_counts(cf):
    v1 = deploy(cf, "mig_ticket_v1.bpmn", author="owner_li", comment="first cut")[0]
    at_intake(cf), at_diagnose(cf)
    run_to_end(cf, at_intake(cf))
    v2 = deploy(cf, "mig_ticket_v2_renamed.bpmn", author="owner_wang", comment="clearer name")[0]
    at_intake(cf)

    with cf.Session() as s:
        rows = list_versions(s, "mig_ticket")
        processes = list_processes(s)

    assert [r["version"] for r in rows] == [2, 1]
    newest, oldest = rows
    assert (oldest["author"], oldest["comment"], oldest["checksum"]) == ("owner_li", "first cut", v1.checksum)
    assert (newest["author"], newest["comment"], newest["version_id"]) == ("owner_wang", "clearer name", v2.version_id)
    assert (oldest["running"], oldest["total"]) == (2, 3) and (newest["running"], newest["total"]) == (1, 1)
    assert oldest["created_at"].endswith("+00:00") and oldest["called_only"] is False
    assert oldest["files"] == ["mig_ticket.bpmn"] and "mig-diagnose.schema.json" in oldest["forms"]
    [proc] = processes
    assert (proc["process_id"], proc["latest_version"], proc["versions"], proc["running"], proc["total"]) == \
        ("mig_ticket", 2, 2, 3, 4)


def test_called_only_process_and_unknown_process(cf):
    deploy(cf, "mig_call_v1.bpmn")
    with cf.Session() as s:
        assert list_versions(s, "mig_onsite")[0]["called_only"] is True
        assert list_versions(s, "mig_repair")[0]["called_only"] is False
        with pytest.raises(Exception, match="no process 'nope'"):
            list_versions(s, "nope")
        with pytest.raises(Exception, match="has no version 9"):
            get_version_files(s, "mig_repair", 9)


def test_get_version_files_for_the_modeler(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    with cf.Session() as s:
        files = get_version_files(s, "mig_ticket", 1)
    assert files["main_file"] == "mig_ticket.bpmn" and files["bpmn"]["mig_ticket.bpmn"] == V1
    assert files["forms"]["mig-intake.schema.json"]["title"] == "Intake"
    assert files["task_forms"] == {"intake": "mig-intake.schema.json", "diagnose": "mig-diagnose.schema.json",
                                   "revisit": "mig-revisit.schema.json"}
    assert set(files["form_checksums"]) == set(files["forms"])


# ------------------------------------------------------------------------------ edit and deploy


def test_valid_edit_deploys_a_new_version(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    edited = V1.replace('name="诊断 / Diagnose"', 'name="远程诊断 / Remote diagnosis"')

    [result] = deploy_edited(cf, "mig_ticket", 1, edited, author="owner_li", comment="label")

    assert result.created and result.version == 2
    with cf.Session() as s:
        files = get_version_files(s, "mig_ticket", 2)
    assert "远程诊断 / Remote diagnosis" in files["bpmn"]["mig_ticket.bpmn"] and files["author"] == "owner_li"
    assert files["forms"] == {n: json.loads(b) for n, b in FORMS.items()}
    iid = at_intake(cf)
    assert cf.show(iid)["version"] == 2
    deployed = [a for a in cf.audit() if a["action"] == "process_deployed"]
    assert deployed[-1]["actor"] == "owner_li" and deployed[-1]["details"]["version"] == 2


def test_saving_an_unchanged_diagram_creates_no_version(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    [result] = deploy_edited(cf, "mig_ticket", 1, V1, author="owner_li")
    assert (result.created, result.version) == (False, 1) and version_count(cf) == 1


def test_invalid_edit_lists_problems_on_element_ids_and_writes_nothing(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    edited = (V1.replace('<spiffworkflow:property name="formJsonSchemaFilename" value="mig-diagnose.schema.json" />',
                         "")
                .replace('"PT24H"</bpmn:timeDuration>', "PT24H</bpmn:timeDuration>")
                .replace("resolved = bool(fixed)", "resolved = = fixed"))

    problems = problems_of(lambda: deploy_edited(cf, "mig_ticket", 1, edited, author="owner_li"))

    by_element = {p.element_id: p for p in problems}
    assert set(by_element) == {"diagnose", "sla", "classify"}
    assert "no form" in by_element["diagnose"].message
    assert "not quoted" in by_element["sla"].message and by_element["sla"].hint == 'write "PT24H" (with quotes)'
    assert "does not compile" in by_element["classify"].message
    assert all(p.file == "mig_ticket.bpmn" and p.line for p in problems)
    assert version_count(cf) == 1


def test_schema_errors_that_only_know_a_line_get_the_element_id(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    edited = V1.replace('<bpmn:userTask id="diagnose" name="诊断 / Diagnose">',
                        '<bpmn:userTask id="diagnose" name="诊断 / Diagnose" isForCompensation="maybe">')
    [problem] = problems_of(lambda: deploy_edited(cf, "mig_ticket", 1, edited))
    assert "not valid BPMN 2.0" in problem.message and problem.element_id == "diagnose"
    assert problem.line == edited.splitlines().index(
        '    <bpmn:userTask id="diagnose" name="诊断 / Diagnose" isForCompensation="maybe">') + 1


def test_edit_must_keep_the_process_id_and_be_well_formed(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    renamed = V1.replace('id="mig_ticket"', 'id="other_ticket"').replace('processRef="mig_ticket"',
                                                                          'processRef="other_ticket"')
    [problem] = problems_of(lambda: deploy_edited(cf, "mig_ticket", 1, renamed))
    assert "no longer defines process 'mig_ticket'" in problem.message and problem.element_id == "other_ticket"
    [broken] = problems_of(lambda: deploy_edited(cf, "mig_ticket", 1, V1[:-40]))
    assert broken.message.startswith("malformed XML")
    assert version_count(cf) == 1


def test_edited_forms_are_versioned_with_the_bpmn(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    form = json.loads(FORMS["mig-diagnose.schema.json"])
    form["properties"]["parts"] = {"type": "string", "title": "Spare parts", "x-title-zh": "备件"}
    edited = V1.replace('value="mig-revisit.schema.json"', 'value="mig-revisit-v2.schema.json"')
    new_form = {"type": "object", "title": "Revisit", "x-title-zh": "回访", "required": ["rating"],
                "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5}}}

    [result] = deploy_edited(cf, "mig_ticket", 1, edited, {"mig-diagnose.schema.json": form,
                                                            "mig-revisit-v2.schema.json": json.dumps(new_form)})

    assert result.created
    with cf.Session() as s:
        files = get_version_files(s, "mig_ticket", 2)
        old = get_version_files(s, "mig_ticket", 1)
    assert "parts" in files["forms"]["mig-diagnose.schema.json"]["properties"]
    assert "parts" not in old["forms"]["mig-diagnose.schema.json"]["properties"]
    assert files["task_forms"]["revisit"] == "mig-revisit-v2.schema.json"
    assert "mig-revisit.schema.json" not in files["forms"]  # no task uses it any more


def test_invalid_edited_form_is_refused_with_its_path(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    bad = {"type": "object", "properties": {"fixed": {"type": "yes-or-no"}}}
    problems = problems_of(lambda: deploy_edited(cf, "mig_ticket", 1, V1, {"mig-diagnose.schema.json": bad,
                                                                           "../etc/passwd.json": {}}))
    form_problem = next(p for p in problems if p.field == "properties/fixed/type")
    assert form_problem.file == "mig-diagnose.schema.json" and "not a valid JSON Schema" in form_problem.message
    assert any("not allowed" in p.message and p.file == "../etc/passwd.json" for p in problems)
    assert any(p.element_id == "diagnose" for p in problems)  # the task that uses the bad form
    assert version_count(cf) == 1


# ------------------------------------------------------------------------------ form meta-validation


@pytest.mark.parametrize("text, field, fragment", [
    ('{"type": "object",\n "properties": {"a": {"type": "string"},}}', None, "not valid JSON"),
    ("[1, 2]", None, "must be a JSON object"),
    ('{"type": "object", "$schema": "http://json-schema.org/draft-07/schema#"}', "$schema", "2020-12"),
    ('{"type": "object", "properties": {"a": {"type": "text"}}}', "properties/a/type", "not a valid JSON Schema"),
    ('{"type": "object", "properties": []}', "properties", "not a valid JSON Schema"),
    ('{"type": "object", "properties": {"a": {"type": "string", "pattern": "(["}}}', "properties/a/pattern",
     "not a valid JSON Schema"),
    ('{"type": "array", "items": {"type": "string"}}', "type", "must be \"type\": \"object\""),
    ('{"type": "object", "properties": {"a": {"$ref": "https://evil.example/s.json"}}}', "properties/a/$ref",
     "points outside the form"),
    ('{"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}', "properties/a/$ref",
     "does not point at anything"),
])
def test_form_meta_validation(text, field, fragment):
    problems = validate_form_schema(text)
    assert problems, text
    assert any(fragment in p.message and p.field == field for p in problems), [p.to_dict() for p in problems]


def test_form_meta_validation_accepts_the_shipped_form_style():
    for raw in FORMS.values():
        assert validate_form_schema(raw.decode("utf-8")) == []
    assert validate_form_schema({"type": "object", "$defs": {"a": {"type": "string"}},
                                 "properties": {"x": {"$ref": "#/$defs/a"}}}) == []
    [syntax] = validate_form_schema('{\n  "type": "object",\n  "title": }')
    assert syntax.line == 3


# ------------------------------------------------------------------------------ diff


def test_diff_of_a_renamed_task(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    deploy(cf, "mig_ticket_v2_renamed.bpmn")
    with cf.Session() as s:
        d = diff_versions(s, "mig_ticket", 1, 2)
    assert (d["a"]["version"], d["b"]["version"]) == (1, 2)
    els = d["elements"]
    assert els["added"] == [] and els["removed"] == []
    [changed] = els["changed"]
    assert changed["id"] == "diagnose" and changed["type"] == "userTask" and changed["process"] == "mig_ticket"
    assert changed["changes"] == [{"field": "name", "old": "诊断 / Diagnose", "new": "诊断处理 / Diagnose and fix"}]
    [f] = d["files"]
    assert f["status"] == "changed"
    assert '-    <bpmn:userTask id="diagnose" name="诊断 / Diagnose">' in f["diff"]
    assert '+    <bpmn:userTask id="diagnose" name="诊断处理 / Diagnose and fix">' in f["diff"]
    assert f["diff"].startswith("--- v1/mig_ticket.bpmn\n+++ v2/mig_ticket.bpmn\n")
    assert all(x["status"] == "unchanged" and x["diff"] == "" for x in d["forms"])
    assert d["summary"] == {"added": 0, "removed": 0, "changed": 1, "moved": 0, "files_changed": 1,
                            "forms_changed": 0}


def test_diff_of_added_and_removed_elements_and_layout(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    deploy(cf, "mig_ticket_v2_added.bpmn")
    deploy(cf, "mig_ticket_v2_removed.bpmn")
    with cf.Session() as s:
        added = diff_versions(s, "mig_ticket", 1, 2)["elements"]
        removed = diff_versions(s, "mig_ticket", 1, 3)["elements"]
    assert [e["id"] for e in added["added"]] == ["confirm", "f_classify_confirm", "f_confirm_revisit"]
    assert [e["id"] for e in added["removed"]] == ["f_classify_revisit"]
    assert {"revisit", "end"} <= set(added["moved"])  # shifted right to make room, nothing else changed
    assert next(e for e in added["added"] if e["id"] == "confirm")["name"] == "确认 / Confirm with customer"
    assert {e["id"] for e in removed["removed"]} == {"diagnose", "sla", "escalate", "end_escalated",
                                                     "f_intake_diagnose", "f_diagnose_classify",
                                                     "f_sla_escalate", "f_escalate_end"}
    classify = next(e for e in removed["changed"] if e["id"] == "classify")
    assert [c["field"] for c in classify["changes"]] == ["script"]


def test_diff_of_lane_timer_and_form_content(cf):
    deploy(cf, "mig_ticket_v1.bpmn")
    deploy(cf, "mig_ticket_v2_lane.bpmn")
    deploy(cf, "mig_ticket_v2_timer.bpmn")
    with cf.Session() as s:
        lane = diff_versions(s, "mig_ticket", 1, 2)["elements"]["changed"]
        timer = diff_versions(s, "mig_ticket", 1, 3)["elements"]["changed"]
    diagnose = next(e for e in lane if e["id"] == "diagnose")
    assert {"field": "lane", "old": "technical_support", "new": "supervisor"} in diagnose["changes"]
    [sla] = timer
    assert sla["id"] == "sla" and sla["changes"][0]["field"] == "event:timerEventDefinition"
    assert (sla["changes"][0]["old"], sla["changes"][0]["new"]) == ('timeDuration: "PT24H"', 'timeDuration: "PT8H"')

    form = json.loads(FORMS["mig-diagnose.schema.json"])
    form["required"] = ["fixed", "steps"]
    deploy_edited(cf, "mig_ticket", 1, V1, {"mig-diagnose.schema.json": form})
    with cf.Session() as s:
        d = diff_versions(s, "mig_ticket", 1, 4)
    [changed] = d["elements"]["changed"]
    assert changed["id"] == "diagnose" and changed["changes"][0]["field"] == "form schema"
    [form_diff] = [f for f in d["forms"] if f["status"] != "unchanged"]
    assert form_diff["name"] == "mig-diagnose.schema.json" and '+    "steps"' in form_diff["diff"]


# ------------------------------------------------------------------------------ CLI


def run(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_cli_versions_and_diff(cf, runner):
    deploy(cf, "mig_ticket_v1.bpmn", author="owner_li", comment="first cut")
    at_intake(cf)
    deploy(cf, "mig_ticket_v2_renamed.bpmn", author="owner_wang", comment="clearer name")

    res = run(runner, "versions", "mig_ticket", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["process_id"] == "mig_ticket"
    assert [(v["version"], v["author"], v["running"], v["total"]) for v in body["versions"]] == \
        [(2, "owner_wang", 0, 0), (1, "owner_li", 1, 1)]
    assert {"checksum", "comment", "created_at", "called_only", "version_id"} <= set(body["versions"][0])
    res = run(runner, "versions", "mig_ticket")
    assert res.exit_code == 0 and "owner_li" in res.output and "clearer name" in res.output
    assert run(runner, "versions", "nope").exit_code == 4

    res = run(runner, "diff", "mig_ticket", "1", "2", "--json")
    assert res.exit_code == 0
    body = json.loads(res.stdout)
    assert body["elements"]["changed"][0]["id"] == "diagnose" and body["files"][0]["status"] == "changed"
    res = run(runner, "diff", "mig_ticket", "1", "2")
    assert res.exit_code == 0
    assert "~ userTask diagnose" in res.output and "name: 诊断 / Diagnose -> 诊断处理 / Diagnose and fix" in res.output
    assert "+++ v2/mig_ticket.bpmn" in res.output
    assert run(runner, "diff", "mig_ticket", "1", "5").exit_code == 4
