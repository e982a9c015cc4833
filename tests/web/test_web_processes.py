"""Process owners' pages (issue #8, web half): the process and version lists, the diff of two
versions, the modeler's save (valid diagrams deploy a version, invalid ones list problems by
element id and deploy nothing), the form editor's check and preview, uploads from other
modelers and hostile uploads (4xx in under a second, nothing read beyond the size check),
migration dry run and run (including an instance that cannot move), who may do what, and a
real browser (Chromium via Playwright) editing a task's label in the modeler and saving."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from lxml import etree
from sqlalchemy import func, select

from engine.models import ProcessVersion
from engine.versions import get_version_files

from migration_helpers import at_diagnose, at_intake, only_task, run_to_end
from migration_helpers import deploy as deploy_fixture
from webtools import FIXTURES, AuthActions, screenshot, sign_in

OTHER = FIXTURES / "other_modelers"
BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
SPIFF = "http://spiffworkflow.org/bpmn/schema/1.0/core"
NS = {"bpmn": BPMN, "spiffworkflow": SPIFF}
NOTE_FORM = {"type": "object", "title": "Notes", "x-title-zh": "备注", "required": ["notes"],
             "properties": {"notes": {"type": "string", "minLength": 1, "title": "Notes", "x-title-zh": "备注"}}}


# ------------------------------------------------------------------------------ helpers


def version_count(cf, process_id: str | None = None) -> int:
    with cf.Session() as s:
        q = select(func.count()).select_from(ProcessVersion)
        if process_id:
            q = q.where(ProcessVersion.process_id == process_id)
        return s.scalar(q)


def stored_xml(cf, process_id: str = "simple_review", version: int = 1) -> str:
    with cf.Session() as s:
        files = get_version_files(s, process_id, version)
    return files["bpmn"][files["main_file"]]


def edit_xml(xml: str, edit) -> str:
    """Apply ``edit(root)`` to a BPMN document, as the modeler would before saving."""
    root = etree.fromstring(xml.encode("utf-8"))
    edit(root)
    return etree.tostring(root, encoding="unicode")


def task(root, task_id: str):
    return root.find(f".//bpmn:*[@id='{task_id}']", NS)


def set_property(el, name: str, value: str | None) -> None:
    props = el.find("bpmn:extensionElements/spiffworkflow:properties", NS)
    for p in props.findall("spiffworkflow:property", NS):
        if p.get("name") == name:
            props.remove(p)
    if value is not None:
        etree.SubElement(props, f"{{{SPIFF}}}property", name=name, value=value)


def save(login: AuthActions, client, xml: str, *, version: int = 1, forms: dict | None = None,
         comment: str | None = None, process_id: str = "simple_review"):
    """POST the modeler's save as the page's script does (JSON, CSRF token in a header)."""
    return client.post(f"/processes/{process_id}/versions/{version}/deploy",
                       data=json.dumps({"xml": xml, "forms": forms or {}, "comment": comment}),
                       content_type="application/json",
                       headers={"X-CSRFToken": login.token(), "Accept": "application/json"})


def upload(login: AuthActions, bpmn: dict[str, bytes], forms: dict[str, bytes] | None = None, comment: str = ""):
    data = {"bpmn": [(io.BytesIO(content), name) for name, content in bpmn.items()], "comment": comment}
    if forms:
        data["forms"] = [(io.BytesIO(content), name) for name, content in forms.items()]
    return login.post("/processes/upload", data, content_type="multipart/form-data")


def set_forms(xml: bytes, forms: dict[str, str]) -> bytes:
    """What the properties panel does to a Camunda file: a form property on each user task."""
    root = etree.fromstring(xml)
    for task_id, form in forms.items():
        el = root.find(f".//{{{BPMN}}}userTask[@id='{task_id}']")
        ext = el.find(f"{{{BPMN}}}extensionElements")
        if ext is None:
            ext = etree.SubElement(el, f"{{{BPMN}}}extensionElements")
            el.insert(0, ext)
        props = etree.SubElement(ext, f"{{{SPIFF}}}properties", nsmap={"spiffworkflow": SPIFF})
        etree.SubElement(props, f"{{{SPIFF}}}property", name="formJsonSchemaFilename", value=form)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def text_of(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def owner(client, login) -> AuthActions:
    """Signed in as olga, a process owner."""
    assert login.login("olga").status_code == 302
    return login


# ------------------------------------------------------------------------------ lists and diff


def test_process_and_version_lists(cf, client, owner):
    """Every process with its latest version; per version author, time, checksum, comment and how
    many instances run on it."""
    cf.start("simple_review", {"customer": "ACME"}, actor="test")
    xml = edit_xml(stored_xml(cf), lambda r: task(r, "intake").set("name", "登记工单 / Register ticket"))
    assert save(owner, client, xml, comment="clearer intake name").status_code == 201
    cf.start("simple_review", {"customer": "ACME"}, actor="test")
    cf.start("simple_review", {"customer": "ACME"}, actor="test")

    page = client.get("/processes")
    assert page.status_code == 200
    body = text_of(page)
    assert "simple_review" in body and "简单审核" in body and "v2" in body
    assert 'href="/processes/simple_review/versions"' in body and 'href="/processes/upload"' in body

    page = client.get("/processes/simple_review/versions")
    assert page.status_code == 200
    rows = re.findall(r'<tr data-version="(\d+)">(.*?)</tr>', text_of(page), re.S)
    assert [v for v, _ in rows] == ["2", "1"]
    v2, v1 = rows[0][1], rows[1][1]
    with cf.Session() as s:
        checksums = dict(s.execute(select(ProcessVersion.version, ProcessVersion.checksum)).all())
    assert "olga" in v2 and "clearer intake name" in v2 and checksums[2][:12] in v2 and "2</span> / 2" in v2
    assert "test" in v1 and checksums[1][:12] in v1 and "1</span> / 1" in v1
    assert "/processes/simple_review/migrate?from=1&amp;to=2" in v1
    assert "/processes/simple_review/diff?a=1&amp;b=2" in v2
    assert client.get("/processes/no_such_process/versions").status_code == 404


def test_diff_page_and_its_diagrams(cf, client, owner):
    """Side by side: both diagrams (laid out when they had none), the element diff to colour, the
    XML unified diff and the form diff."""
    def change(root):
        task(root, "intake").set("name", "登记工单 / Register ticket")
        set_property(task(root, "intake"), "dueIn", "PT8H")

    form = json.loads((FIXTURES / "forms" / "approve.schema.json").read_text())
    form["title"] = "Approval decision"
    r = save(owner, client, edit_xml(stored_xml(cf), change),
             forms={"approve.schema.json": json.dumps(form)})
    assert r.status_code == 201, r.get_json()

    page = client.get("/processes/simple_review/diff?a=1&b=2")
    assert page.status_code == 200
    body = text_of(page)
    assert "对比 v1 与 v2" in body  # Chinese by default
    changes = re.search(r'<table class="list" id="element-changes">(.*?)</table>', body, re.S).group(1)
    assert "intake" in changes and "PT4H" in changes and "PT8H" in changes and "Register ticket" in changes
    assert '<span class="d-del">-' in body and '<span class="d-add">+' in body  # the XML diff
    assert "approve.schema.json" in body and "Approval decision" in body  # the form diff
    assert client.get("/processes/simple_review/diff").status_code == 200  # latest against the one before

    data = client.get("/processes/simple_review/diff.json?a=1&b=2").get_json()
    assert (data["a"]["version"], data["b"]["version"]) == (1, 2)
    assert "BPMNDiagram" in data["a"]["xml"] and "BPMNDiagram" in data["b"]["xml"]
    assert "intake" in [e["id"] for e in data["elements"]["changed"]]
    assert client.get("/processes/simple_review/diff?a=x&b=2").status_code == 400
    assert client.get("/processes/simple_review/diff?a=1&b=9").status_code == 404


# ------------------------------------------------------------------------------ modeler save


def test_modeler_page_and_what_it_opens(cf, client, owner):
    page = client.get("/processes/simple_review/versions/1/edit")
    assert page.status_code == 200
    body = text_of(page)
    assert "bpmn-modeler.production.min.js" in body and "js/modeler.js" in body
    config = json.loads(re.search(r'<script type="application/json" id="modeler-config">(.*?)</script>',
                                  body, re.S).group(1))
    assert config["deployUrl"] == "/processes/simple_review/versions/1/deploy"
    assert config["groups"]["customer_service"] and config["texts"]["dueIn"]
    assert "<script>" not in body  # the CSP forbids inline scripts: data only
    model = client.get(config["modelUrl"]).get_json()
    assert model["main_file"] == "simple.bpmn" and "BPMNDiagram" in model["xml"]  # laid out for the modeler
    assert set(model["forms"]) == {"intake.schema.json", "approve.schema.json"}
    assert model["task_forms"] == {"intake": "intake.schema.json", "approve": "approve.schema.json"}
    assert client.get("/processes/simple_review/versions/7/edit").status_code == 404
    assert client.get("/vendor/bpmn-js/dist/bpmn-modeler.production.min.js").status_code == 200


def test_saving_a_valid_diagram_deploys_a_new_version(cf, client, owner):
    def change(root):
        task(root, "intake").set("name", "登记工单 / Register ticket")
        set_property(task(root, "intake"), "dueIn", "P1D")
        set_property(task(root, "approve"), "assignee", '"sam"')

    form = json.loads((FIXTURES / "forms" / "intake.schema.json").read_text())
    form["properties"]["channel_note"] = {"type": "string", "title": "Channel note", "x-title-zh": "渠道备注"}
    r = save(owner, client, edit_xml(stored_xml(cf), change), forms={"intake.schema.json": json.dumps(form)},
             comment="intake due in a day")

    assert r.status_code == 201
    body = r.get_json()
    assert body["created"] and body["version"] == 2
    assert body["edit_url"] == "/processes/simple_review/versions/2/edit"
    with cf.Session() as s:
        v2 = get_version_files(s, "simple_review", 2)
    assert v2["author"] == "olga" and v2["comment"] == "intake due in a day"
    assert "Register ticket" in v2["bpmn"]["simple.bpmn"] and 'value="P1D"' in v2["bpmn"]["simple.bpmn"]
    assert "channel_note" in v2["forms"]["intake.schema.json"]["properties"]  # versioned with the BPMN
    started = cf.start("simple_review", {"customer": "ACME"}, actor="test")  # runs on the new version
    assert cf.show(started.instance_id)["version"] == 2
    assert started.ready_tasks[0]["title"] == "登记工单 / Register ticket"

    again = save(owner, client, v2["bpmn"]["simple.bpmn"], version=2)  # nothing changed
    assert again.status_code == 200 and again.get_json() | {"created": False} == again.get_json()
    assert again.get_json()["version"] == 2 and version_count(cf) == 2


def test_invalid_diagram_lists_problems_by_element_and_deploys_nothing(cf, client, owner):
    def break_it(root):
        set_property(task(root, "approve"), "formJsonSchemaFilename", None)  # user task without a form
        set_property(task(root, "intake"), "dueIn", "tomorrow")  # not an ISO duration
        task(root, "compute").find("bpmn:script", NS).text = "total = amount *"  # does not compile

    r = save(owner, client, edit_xml(stored_xml(cf), break_it))

    assert r.status_code == 422
    body = r.get_json()
    assert body["error"] == "invalid"
    found = {(p.get("element_id"), p["message"].split(":")[0].split(" '")[0]) for p in body["problems"]}
    assert ("approve", "user task has no form") in found
    assert ("intake", "dueIn") in found
    assert ("compute", "script does not compile") in found
    assert all(p.get("file") == "simple.bpmn" and p.get("line") for p in body["problems"])
    assert version_count(cf) == 1  # nothing deployed half-way


def test_invalid_form_and_broken_xml_are_refused(cf, client, owner):
    r = save(owner, client, stored_xml(cf), forms={"intake.schema.json": '{"type": "object", "properties": 5}'})
    assert r.status_code == 422
    [problem] = [p for p in r.get_json()["problems"] if p.get("file") == "intake.schema.json"]
    assert problem["field"] == "properties"

    r = save(owner, client, stored_xml(cf)[:300])
    assert r.status_code == 422 and "malformed XML" in r.get_json()["problems"][0]["message"]
    r = save(owner, client, stored_xml(cf).replace('id="simple_review"', 'id="other_process"'))
    assert r.status_code == 422 and any(p.get("element_id") == "other_process" for p in r.get_json()["problems"])
    assert version_count(cf) == 1

    bad = client.post("/processes/simple_review/versions/1/deploy", data="not json", content_type="application/json",
                      headers={"X-CSRFToken": owner.token(), "Accept": "application/json"})
    assert bad.status_code == 400
    no_token = client.post("/processes/simple_review/versions/1/deploy", json={"xml": stored_xml(cf)})
    assert no_token.status_code == 400 and version_count(cf) == 1  # CSRF


def test_form_editor_checks_the_schema_and_renders_a_preview(cf, client, owner):
    def check(text):
        r = client.post("/processes/form-check", json={"text": text},
                        headers={"X-CSRFToken": owner.token(), "Accept": "application/json"})
        assert r.status_code == 200
        return r.get_json()

    good = check(json.dumps(NOTE_FORM | {"properties": {
        "notes": NOTE_FORM["properties"]["notes"],
        "rating": {"type": "integer", "minimum": 1, "maximum": 5, "title": "Rating", "x-title-zh": "评分"}}}))
    assert good["valid"] and not good["problems"]
    assert 'name="notes"' in good["html"] and 'name="rating"' in good["html"] and "评分" in good["html"]

    bad = check('{"type": "object", "properties": {"n": {"type": "strin"}}}')
    assert not bad["valid"] and bad["html"] is None
    assert bad["problems"][0]["field"] == "properties/n/type"
    syntax = check('{"type": "object",\n "properties": }')
    assert not syntax["valid"] and syntax["problems"][0]["line"] == 2
    root = check('{"type": "array"}')
    assert [p["field"] for p in root["problems"]] == ["type"]


# ------------------------------------------------------------------------------ uploads


def test_upload_page(client, owner):
    page = client.get("/processes/upload")
    assert page.status_code == 200
    assert 'enctype="multipart/form-data"' in text_of(page) and 'name="bpmn"' in text_of(page)


def test_upload_from_camunda_lists_problems_then_deploys_once_fixed(cf, client, owner):
    raw = (OTHER / "camunda8_revisit.bpmn").read_bytes()
    r = upload(owner, {"camunda8_revisit.bpmn": raw})
    assert r.status_code == 422
    body = text_of(r)
    assert body.count("user task has no form") == 2
    assert 'data-element-id="Activity_0x7m2pq"' in body and 'data-element-id="Activity_1h6r2ka"' in body
    assert version_count(cf, "camunda_revisit") == 0

    fixed = set_forms(raw, {"Activity_0x7m2pq": "revisit-notes.schema.json",
                            "Activity_1h6r2ka": "revisit-notes.schema.json"})
    r = upload(owner, {"camunda8_revisit.bpmn": fixed},
               {"revisit-notes.schema.json": json.dumps(NOTE_FORM).encode()}, comment="from Camunda 8")
    assert r.status_code == 201, text_of(r)
    assert 'href="/processes/camunda_revisit/versions"' in text_of(r)
    with cf.Session() as s:
        v1 = get_version_files(s, "camunda_revisit", 1)
    assert (v1["author"], v1["comment"]) == ("olga", "from Camunda 8")
    assert cf.start("camunda_revisit", {}).ready_tasks  # it runs


def test_upload_lists_every_unsupported_element(cf, client, owner):
    r = upload(owner, {"camunda7_ticket.bpmn": (OTHER / "camunda7_ticket.bpmn").read_bytes()})
    assert r.status_code == 422
    body = text_of(r)
    assert "JUEL (Camunda 7)" in body and "written in groovy" in body
    assert 'data-element-id="Flow_urgent"' in body and 'data-element-id="Activity_number"' in body

    r = upload(owner, {"signavio_complaint_export.bpmn": (OTHER / "signavio_complaint_export.bpmn").read_bytes()})
    assert r.status_code == 422
    body = text_of(r)
    problems = re.findall(r'<div class="pl-message">(.*?)</div>', body)
    assert len(problems) >= 4 and any("cannot be executed by Careflow" in p for p in problems)
    assert "no executable process" in body
    assert version_count(cf) == 1


@pytest.mark.parametrize("name", ["hostile_billion_laughs.bpmn", "hostile_xxe_file.bpmn", "hostile_xxe_http.bpmn"])
def test_hostile_upload_is_refused_fast(cf, client, owner, name):
    started = time.perf_counter()
    r = upload(owner, {name: (OTHER / name).read_bytes()})
    elapsed = time.perf_counter() - started
    assert r.status_code == 422 and elapsed < 1.0
    body = text_of(r)
    assert "DOCTYPE and ENTITY declarations are not allowed" in body
    assert "root:x:0:0" not in body  # /etc/passwd was never read
    assert version_count(cf) == 1


def test_oversized_upload_is_refused_before_it_is_read(cf, client, owner):
    big = b'<?xml version="1.0"?><bpmn:definitions xmlns:bpmn="' + BPMN.encode() + b'">' \
        + b"<!-- padding -->" * (20 * 1024 * 1024 // 16) + b"</bpmn:definitions>"
    started = time.perf_counter()
    r = upload(owner, {"huge.bpmn": big})
    assert r.status_code == 413 and time.perf_counter() - started < 1.0
    assert "一次最多只能发送 6.1 MB" in text_of(r)
    r = client.post("/processes/simple_review/versions/1/deploy", data=json.dumps({"xml": big.decode()}),
                    content_type="application/json", headers={"X-CSRFToken": owner.token(), "Accept": "application/json"})
    assert r.status_code == 413 and r.get_json()["error"] == "too_large"
    assert version_count(cf) == 1


def test_size_limits_follow_the_engine_setting(cf, client, owner, monkeypatch):
    """CAREFLOW_MAX_BPMN_BYTES caps each file; the request may add room for forms, no more."""
    monkeypatch.setattr(cf, "settings", dataclasses.replace(cf.settings, max_bpmn_bytes=50_000))
    padded = (FIXTURES / "simple.bpmn").read_bytes().replace(b"</bpmn:definitions>",
                                                             b"<!--" + b"x" * 60_000 + b"--></bpmn:definitions>")
    r = upload(owner, {"padded.bpmn": padded})
    assert r.status_code == 400 and "padded.bpmn" in text_of(r)
    r = upload(owner, {"padded.bpmn": padded * 25})
    assert r.status_code == 413
    r = save(owner, client, padded.decode())
    assert r.status_code == 422 and "the limit is 50,000" in r.get_json()["problems"][0]["message"]
    assert version_count(cf) == 1


def test_upload_needs_a_bpmn_file(cf, client, owner):
    r = upload(owner, {"notes.txt": b"hello"})
    assert r.status_code == 400 and "notes.txt" in text_of(r)
    r = owner.post("/processes/upload", {"comment": "x"}, content_type="multipart/form-data")
    assert r.status_code == 400
    assert version_count(cf) == 1


# ------------------------------------------------------------------------------ migration


@pytest.fixture
def mig(cf):
    """mig_ticket v1 with one instance at intake (can move) and one at diagnose, which v2 removes."""
    deploy_fixture(cf, "mig_ticket_v1.bpmn")
    ahead, stuck = at_intake(cf), at_diagnose(cf)
    deploy_fixture(cf, "mig_ticket_v2_removed.bpmn")
    return {"ahead": ahead, "stuck": stuck}


def test_migration_dry_run_page(cf, client, owner, mig):
    page = client.get("/processes/mig_ticket/migrate")  # defaults: the old version with instances → latest
    assert page.status_code == 200
    body = text_of(page)
    rows = dict(re.findall(r'<tr data-instance="(\d+)" class="(\w+)">', body))
    assert rows == {str(mig["ahead"]): "movable", str(mig["stuck"]): "blocked"}
    stuck_row = re.search(rf'<tr data-instance="{mig["stuck"]}".*?</tr>', body, re.S).group(0)
    assert "removes it" in stuck_row and "diagnose" in stuck_row and "checked" not in stuck_row
    ahead_row = re.search(rf'<tr data-instance="{mig["ahead"]}".*?</tr>', body, re.S).group(0)
    assert "checked" in ahead_row and "sla" in ahead_row  # what its remaining path loses
    assert cf.show(mig["ahead"])["version"] == 1  # a dry run changes nothing

    same = client.get("/processes/mig_ticket/migrate?from=2&to=2")
    assert same.status_code == 200 and "already on version 2" in text_of(same)


def test_migration_run_moves_who_can_and_keeps_the_others_with_reasons(cf, client, owner, mig):
    r = owner.post("/processes/mig_ticket/migrate", {"from": "1", "to": "2",
                                                     "instance_id": [str(mig["ahead"]), str(mig["stuck"])]})
    assert r.status_code == 200
    body = text_of(r)
    migrated = re.search(r'id="migrated-list">(.*?)</ul>', body, re.S).group(1)
    failed = re.search(r'id="failed-list">(.*?)</ul></li></ul>', body, re.S).group(1)
    assert f"#{mig['ahead']}<" in migrated and f"#{mig['stuck']}<" in failed and "removes it" in failed
    assert cf.show(mig["ahead"])["version"] == 2 and cf.show(mig["stuck"])["version"] == 1
    audit = {a["action"]: a for i in mig.values() for a in cf.audit(i)}
    assert audit["instance_migrated"]["actor"] == "olga" and audit["migration_failed"]["actor"] == "olga"
    assert run_to_end(cf, mig["stuck"]) == ["diagnose", "revisit"]  # still runs on its own version


def test_migration_in_batches_as_the_page_script_runs_it(cf, client, owner, mig):
    more = [cf.start("mig_ticket", {}, actor="cs1", version=1).instance_id for _ in range(3)]

    def batch(ids):
        return client.post("/processes/mig_ticket/migrate/batch", json={"from": 1, "to": 2, "instance_ids": ids},
                           headers={"X-CSRFToken": owner.token(), "Accept": "application/json"})

    first = batch([mig["ahead"], mig["stuck"]])
    assert first.status_code == 200
    body = first.get_json()
    assert [o["instance_id"] for o in body["migrated"]] == [mig["ahead"]]
    [failed] = body["failed"]
    assert failed["instance_id"] == mig["stuck"] and any("removes it" in r for r in failed["reasons"])
    second = batch(more).get_json()
    assert sorted(o["instance_id"] for o in second["migrated"]) == more and not second["failed"]
    assert {cf.show(i)["version"] for i in more} == {2}
    assert batch([]).status_code == 400 and batch(list(range(1, 500))).status_code == 400
    assert batch(["1"]).status_code == 400
    assert client.post("/processes/mig_ticket/migrate/batch", json={"from": 2, "to": 2, "instance_ids": [1]},
                       headers={"X-CSRFToken": owner.token(), "Accept": "application/json"}).status_code == 422


def test_migrate_all_without_javascript(cf, client, owner, mig):
    r = owner.post("/processes/mig_ticket/migrate", {"from": "1", "to": "2", "all": "1"})
    assert r.status_code == 200
    assert cf.show(mig["ahead"])["version"] == 2 and cf.show(mig["stuck"])["version"] == 1
    r = owner.post("/processes/mig_ticket/migrate", {"from": "1", "to": "2"})  # nothing selected
    assert r.status_code == 302 and "migrate?from=1&to=2" in r.headers["Location"]
    only = only_task(cf, mig["ahead"])
    assert only["name"] == "intake"


# ------------------------------------------------------------------------------ authorization


READS = ["/processes", "/processes/simple_review/versions", "/processes/simple_review/diff?a=1&b=1",
         "/processes/simple_review/diff.json?a=1&b=1", "/processes/simple_review/versions/1/model.json"]
MODEL_PAGES = ["/processes/simple_review/versions/1/edit", "/processes/upload", "/processes/simple_review/migrate"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("user,reads,models", [("olga", 200, 200), ("root", 200, 200), ("aud", 200, 403),
                                               ("ann", 403, 403), ("sam", 403, 403), ("tom", 403, 403)])
def test_only_process_owners_and_admins_edit_deploy_upload_and_migrate(app, cf, user, reads, models):
    deploy_fixture(cf, "mig_ticket_v1.bpmn")
    iid = at_intake(cf)
    deploy_fixture(cf, "mig_ticket_v2_renamed.bpmn")
    client = app.test_client()
    auth = AuthActions(client)
    assert auth.login(user).status_code == 302
    for path in READS:
        assert client.get(path).status_code == reads, path
    for path in MODEL_PAGES:
        assert client.get(path).status_code == models, path
    nav = text_of(client.get("/tasks"))
    assert ('href="/processes"' in nav) == (reads == 200)

    allowed = models == 200
    xml = edit_xml(stored_xml(cf), lambda r: task(r, "intake").set("name", "X / X"))
    headers = {"X-CSRFToken": auth.token(), "Accept": "application/json"}
    r = client.post("/processes/simple_review/versions/1/deploy", json={"xml": xml}, headers=headers)
    assert r.status_code == (201 if allowed else 403)
    r = client.post("/processes/form-check", json={"text": "{}"}, headers=headers)
    assert r.status_code == (200 if allowed else 403)
    r = upload(auth, {"simple2.bpmn": (FIXTURES / "simple.bpmn").read_bytes().replace(b"simple_review", b"simple2")},
               {name: (FIXTURES / "forms" / name).read_bytes() for name in ("intake.schema.json", "approve.schema.json")})
    assert r.status_code == (201 if allowed else 403)
    r = client.post("/processes/mig_ticket/migrate/batch", json={"from": 1, "to": 2, "instance_ids": [iid]},
                    headers=headers)
    assert r.status_code == (200 if allowed else 403)
    r = auth.post("/processes/mig_ticket/migrate", {"from": "1", "to": "2", "all": "1"})
    assert r.status_code == (200 if allowed else 403)
    assert version_count(cf, "simple_review") == (2 if allowed else 1)
    assert version_count(cf, "simple2") == (1 if allowed else 0)
    assert cf.show(iid)["version"] == (2 if allowed else 1)


def test_signed_out_users_are_sent_tosign_in(client, login):
    assert client.get("/processes").status_code == 302
    assert login.post("/processes/upload", {}).status_code == 401


def test_oversized_request_is_answered_without_reading_the_body(live_server):
    """Over a real connection: the 413 comes back while the 20 MB body is still unsent, so the
    server decided from Content-Length alone (nothing read, nothing buffered)."""
    base, cookie, token = live_server.session("olga")
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    started = time.perf_counter()
    conn.putrequest("POST", "/processes/upload")
    conn.putheader("Content-Type", "multipart/form-data; boundary=xyz")
    conn.putheader("Content-Length", str(20 * 1024 * 1024))
    conn.putheader("Cookie", cookie)
    conn.putheader("X-CSRFToken", token)
    conn.endheaders()
    response = conn.getresponse()  # no byte of the body was sent
    assert response.status == 413 and time.perf_counter() - started < 1.0
    assert "413" in response.read().decode("utf-8")
    conn.close()


# ------------------------------------------------------------------------------ browser

def _watch(page) -> list[str]:
    problems: list[str] = []  # script errors, CSP violations, failing scripts/styles/data
    page.on("console", lambda m: problems.append(f"{page.url}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(f"{page.url}: {e}"))
    page.on("response", lambda r: problems.append(f"{r.url}: {r.status}")
            if r.status >= 400 and r.request.resource_type != "document"
            and not r.url.endswith("/deploy") else None)
    return problems


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_modeler_in_a_browser_changes_a_label_and_deploys(cf, live_server, browser):
    """Open the modeler on simple_review v1, select the intake task, rename it in the properties
    panel, save: the new version is in the version list and runs with the new name."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = context.new_page()
    problems = _watch(page)
    sign_in(page, live_server, "olga")

    page.goto(live_server + "/processes/simple_review/versions/1/edit")
    page.wait_for_selector("#canvas[data-ready=true]", timeout=15_000)
    page.click(".djs-element[data-element-id=intake]")
    name = page.locator("#prop-name")
    assert name.input_value() == "登记 / Intake"
    assert page.locator("#prop-lane option:checked").inner_text().startswith("customer_service")
    assert page.locator("#prop-form").input_value() == "intake.schema.json"
    assert page.input_value("#prop-dueIn") == "PT4H"
    name.fill("登记工单 / Register ticket")
    name.press("Enter")
    assert "登记工单" in page.locator(".djs-element[data-element-id=intake] .djs-visual text").text_content()
    page.fill("#comment", "clearer intake name")
    page.click("#save")
    page.locator(".modeler-status.ok").wait_for(timeout=15_000)
    assert "已部署版本 2" in page.locator(".modeler-status.ok").inner_text()
    assert page.locator("#base-version").inner_text() == "基于 v2" and page.url.endswith("/versions/2/edit")
    screenshot(page, "modeler.png")

    page.click("#saved-versions-link")
    page.wait_for_url(re.compile(r".*/processes/simple_review/versions$"))
    first = page.locator("#versions-table tbody tr").first
    assert first.get_attribute("data-version") == "2"
    assert "clearer intake name" in first.inner_text() and "olga" in first.inner_text()
    screenshot(page, "versions.png")
    started = cf.start("simple_review", {"customer": "ACME"}, actor="test")
    assert started.ready_tasks[0]["title"] == "登记工单 / Register ticket"

    page.goto(live_server + "/processes/simple_review/diff?a=1&b=2")  # the two versions side by side
    page.wait_for_selector("#diff-panes[data-rendered=true]", timeout=15_000)
    assert page.locator("#diagram-b .djs-element.cf-changed[data-element-id=intake]").count() == 1
    assert page.locator("#diagram-a .djs-element.cf-changed[data-element-id=intake]").count() == 1
    assert "Register ticket" in page.locator("#element-changes").inner_text()
    screenshot(page, "diff.png", full_page=True)
    assert not problems, problems
    context.close()


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_modeler_shows_problems_on_the_diagram_and_edits_forms(cf, live_server, browser):
    """An invalid save is marked on its elements and listed, nothing is deployed; the form editor
    validates the schema as it is typed and previews the form; with it fixed, the save deploys."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US")
    page = context.new_page()
    problems = _watch(page)
    sign_in(page, live_server, "olga")
    page.goto(live_server + "/processes/simple_review/versions/1/edit")
    page.wait_for_selector("#canvas[data-ready=true]", timeout=15_000)

    page.click(".djs-element[data-element-id=approve]")
    page.select_option("#prop-form", "")  # a user task without a form
    page.click(".djs-element[data-element-id=intake]")
    page.fill("#prop-dueIn", "tomorrow")
    page.press("#prop-dueIn", "Tab")
    assert "not an ISO 8601 duration" in page.locator("#prop-dueIn-error").inner_text()
    page.click("#save")
    page.locator(".modeler-status.error").wait_for(timeout=15_000)
    items = page.locator("#problems > li")
    assert items.count() == 2
    assert page.locator("#problems > li[data-element-id=approve]").inner_text().count("user task has no form") == 1
    assert "dueIn 'tomorrow'" in page.locator("#problems > li[data-element-id=intake]").inner_text()
    for element_id in ("approve", "intake"):
        assert page.locator(f".djs-element.cf-error[data-element-id={element_id}]").count() == 1
        assert page.locator(f".djs-overlay-container [data-container-id={element_id}] .cf-problem-badge").count() == 1
    page.locator("#problems > li[data-element-id=approve]").click()  # a problem selects its element
    assert page.locator("#props-body .props-head").inner_text().endswith("approve")
    screenshot(page, "modeler-problems.png")
    assert version_count(cf) == 1

    page.select_option("#prop-form", "__new__")  # a new form for the approval, edited in the browser
    page.fill("#prop-new-form", "approval-decision.schema.json")
    page.click("#prop-new-form-create")
    page.locator("#form-dialog[open]").wait_for()
    page.locator("#fd-preview [name=notes]").wait_for()
    page.fill("#fd-text", '{"type": "object", "properties": {"ok": {"type": "bool"}}}')
    page.locator("#fd-problems li").first.wait_for()
    assert "properties/ok/type" in page.locator("#fd-problems").inner_text()
    page.fill("#fd-text", json.dumps({"type": "object", "title": "Decision", "x-title-zh": "审批决定",
                                      "required": ["approved"], "properties": {
                                          "approved": {"type": "boolean", "title": "Approved", "x-title-zh": "批准"},
                                          "reason": {"type": "string", "title": "Reason", "x-title-zh": "理由"}}},
                                     indent=2, ensure_ascii=False))
    page.locator("#fd-preview input[name=reason]").wait_for()
    assert page.locator("#fd-status.ok").count() == 1 and page.locator("#fd-problems li").count() == 0
    assert "Approved" in page.locator("#fd-preview").inner_text()
    screenshot(page, "form-editor.png")
    page.click("#fd-apply")
    assert page.locator("#prop-form").input_value() == "approval-decision.schema.json"
    page.select_option("#prop-lane", "Lane_cs")  # the approval moves to customer service, its timer with it
    page.click(".djs-element[data-element-id=intake]")
    page.fill("#prop-dueIn", "PT8H")
    page.press("#prop-dueIn", "Tab")
    page.click("#save")
    page.locator(".modeler-status.ok").wait_for(timeout=15_000)
    assert page.locator(".djs-element.cf-error").count() == 0 and page.locator("#problems > li").count() == 0
    with cf.Session() as s:
        v2 = get_version_files(s, "simple_review", 2)
    assert v2["task_forms"]["approve"] == "approval-decision.schema.json"
    assert v2["forms"]["approval-decision.schema.json"]["title"] == "Decision"
    assert 'name="dueIn" value="PT8H"' in v2["bpmn"]["simple.bpmn"]
    lanes = {lane.get("id"): [ref.text for ref in lane.findall("bpmn:flowNodeRef", NS)]
             for lane in etree.fromstring(v2["bpmn"]["simple.bpmn"].encode()).iter(f"{{{BPMN}}}lane")}
    assert {"approve", "sla_timer"} <= set(lanes["Lane_cs"]) and "approve" not in lanes["Lane_sup"]
    assert "<spiffworkflow:instructionsForEndUser>Customer {{ customer }}" in v2["bpmn"]["simple.bpmn"]  # kept
    assert not problems, problems
    context.close()


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_migration_page_runs_batches_with_progress(cf, live_server, browser):
    deploy_fixture(cf, "mig_ticket_v1.bpmn")
    ahead, stuck = at_intake(cf), at_diagnose(cf)
    more = [cf.start("mig_ticket", {}, actor="cs1").instance_id for _ in range(3)]
    deploy_fixture(cf, "mig_ticket_v2_removed.bpmn")
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    page = context.new_page()
    problems = _watch(page)
    sign_in(page, live_server, "root")
    page.goto(live_server + "/processes/mig_ticket/migrate?from=1&to=2")
    assert page.locator("#plan-table tbody tr").count() == 5
    assert not page.locator(f"#sel-{stuck}").is_checked()
    screenshot(page, "migrate-dry-run.png", full_page=True)
    page.check("#select-all")
    assert page.locator(f"#sel-{stuck}").is_checked()
    page.click("#migrate-selected")
    page.wait_for_selector("#migrate-form[data-finished=true]", timeout=15_000)
    assert page.locator("#mig-bar").evaluate("b => [b.value, b.max]") == [5, 5]
    assert "4" in page.locator("#mig-done").inner_text() and "1" in page.locator("#mig-done").inner_text()
    assert page.locator(f"tr[data-instance='{stuck}'].done-failed").count() == 1
    assert "removes it" in page.locator(f"tr[data-instance='{stuck}'] .outcome").inner_text()
    assert page.locator("tr.done-ok").count() == 4
    screenshot(page, "migrate-done.png", full_page=True)
    assert {cf.show(i)["version"] for i in [ahead, *more]} == {2} and cf.show(stuck)["version"] == 1
    assert not problems, problems
    context.close()


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_upload_in_a_browser(cf, live_server, browser):
    """A Camunda 7 file through the upload form: every problem listed with where it is."""
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="en-US")
    page = context.new_page()
    problems = _watch(page)
    sign_in(page, live_server, "olga")
    page.goto(live_server + "/processes")
    assert "simple_review" in page.locator("#processes-table").inner_text()
    screenshot(page, "processes.png")
    page.click("#upload-link")
    page.set_input_files("#f-bpmn", str(OTHER / "camunda7_ticket.bpmn"))
    page.fill("#f-comment", "from Camunda 7")
    page.click("#upload-button")
    page.locator("#upload-problems").wait_for()
    listed = page.locator("#upload-problem-list > li")
    assert listed.count() >= 2
    assert "JUEL (Camunda 7)" in page.locator("#upload-problem-list").inner_text()
    assert page.input_value("#f-comment") == "from Camunda 7"
    screenshot(page, "upload.png", full_page=True)
    assert version_count(cf) == 1
    assert not problems, problems
    context.close()
