"""BPMN from other modelers: Camunda Modeler 5 files (executable once forms are set, or a clear
problem list), a Signavio export (refused with every unsupported element), and hostile files
(entity expansion, external entities, oversize, deep nesting) refused fast and without memory
blow-up, both by ``engine.deploy`` (CLI path) and by ``engine.upload.deploy_upload`` (web path)."""

from __future__ import annotations

import resource
import socket
import time
import tracemalloc
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import func, select

from engine.deploy import Bundle
from engine.errors import DeployError
from engine.models import ProcessVersion
from engine.upload import check_upload, deploy_upload

OTHER = Path(__file__).parent / "fixtures" / "other_modelers"
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
NOTE_FORM = {"type": "object", "title": "Notes", "x-title-zh": "备注", "required": ["notes"],
             "properties": {"notes": {"type": "string", "minLength": 1, "title": "Notes", "x-title-zh": "备注"}}}


def read(name: str) -> dict[str, bytes]:
    return {name: (OTHER / name).read_bytes()}


def versions(cf) -> int:
    with cf.Session() as s:
        return s.scalar(select(func.count()).select_from(ProcessVersion))


def upload_problems(cf, files, forms=None) -> list:
    with pytest.raises(DeployError) as exc:
        deploy_upload(cf, files, forms, author="owner_li")
    return exc.value.problems


def set_forms(xml: bytes, forms: dict[str, str]) -> bytes:
    """What the modeler's properties panel does: a spiffworkflow form property on each user task."""
    root = etree.fromstring(xml)
    for task_id, form in forms.items():
        task = root.find(f".//{{{BPMN_NS}}}userTask[@id='{task_id}']")
        ext = task.find(f"{{{BPMN_NS}}}extensionElements")
        props = etree.SubElement(ext, f"{{{SPIFF_NS}}}properties", nsmap={"spiffworkflow": SPIFF_NS})
        etree.SubElement(props, f"{{{SPIFF_NS}}}property", name="formJsonSchemaFilename", value=form)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# ------------------------------------------------------------------------------ other modelers


def test_camunda8_file_lacks_forms_then_runs_once_they_are_set(cf):
    files = read("camunda8_revisit.bpmn")
    problems = upload_problems(cf, files)
    assert [(p.element_id, p.message) for p in problems] == [
        ("Activity_0x7m2pq", "user task has no form"), ("Activity_1h6r2ka", "user task has no form")]
    assert all(p.line and "formJsonSchemaFilename" in p.hint for p in problems)
    with pytest.raises(DeployError):  # the CLI path says the same
        cf.deploy(Bundle(bpmn=files))
    assert versions(cf) == 0

    fixed = {"camunda8_revisit.bpmn": set_forms(files["camunda8_revisit.bpmn"], {
        "Activity_0x7m2pq": "revisit-notes.schema.json", "Activity_1h6r2ka": "revisit-notes.schema.json"})}
    [result] = deploy_upload(cf, fixed, {"revisit-notes.schema.json": NOTE_FORM}, author="owner_li")

    assert (result.process_id, result.version, result.created) == ("camunda_revisit", 1, True)
    iid = cf.start("camunda_revisit", {}).instance_id
    [phone] = cf.tasks(instance_id=iid)
    assert (phone["name"], phone["lane"], phone["title"]) == ("Activity_0x7m2pq", "customer_service",
                                                               "电话回访 / Phone revisit")
    cf.complete(phone["id"], {"notes": "客户满意 / customer happy"}, user="cs1")
    ready = {t["name"]: t for t in cf.tasks(instance_id=iid)}
    assert set(ready) == {"Activity_1h6r2ka", "Activity_0n5s0bv"}
    assert ready["Activity_1h6r2ka"]["lane"] == "account_manager"
    cf.complete(ready["Activity_1h6r2ka"]["id"], {"notes": "续约意向 / wants to renew"}, user="am1")
    cf.complete(ready["Activity_0n5s0bv"]["id"], {}, user="am1")
    assert cf.show(iid)["status"] == "completed"


def test_camunda7_file_gets_every_problem_at_once(cf):
    problems = upload_problems(cf, read("camunda7_ticket.bpmn"))
    found = {(p.element_id, p.message.split(";")[0].split(" (")[0]) for p in problems}
    assert found == {
        ("Activity_number", "script is written in groovy"),
        ("Flow_urgent", "condition '${priority == 'urgent'}' is written in JUEL"),
        ("Activity_intake", "user task has no form"),
        ("Activity_handle", "user task has no form"),
        ("Activity_escalate", "user task has no form"),
        ("Event_sla", "timer timeDuration PT4H is not quoted"),
    }
    assert all(p.file == "camunda7_ticket.bpmn" and p.line and p.hint for p in problems)
    assert versions(cf) == 0


def test_signavio_export_is_refused_with_the_unsupported_elements(cf):
    files = read("signavio_complaint_export.bpmn")
    problems = upload_problems(cf, files)
    unsupported = {p.element_id: p.message for p in problems if "cannot be executed" in p.message}
    assert unsupported == {
        "sid-6E0B3E7C-4A0B-4F57-8D7C-0C7B0AF1E2D4": "<dataStore> cannot be executed by Careflow",
        "sid-BRT-0001": "<businessRuleTask> cannot be executed by Careflow",
        "sid-CPLX-0001": "<complexGateway> cannot be executed by Careflow",
        "sid-DSR-0001": "<dataStoreReference> cannot be executed by Careflow",
    }
    assert any("no executable process" in p.message for p in problems)
    assert check_upload(files, cf.settings.max_bpmn_bytes) == problems
    with pytest.raises(DeployError):
        cf.deploy(Bundle(bpmn=files))
    assert versions(cf) == 0


# ------------------------------------------------------------------------------ hostile files


def oversized(path: Path, size: int = 20 * 1024 * 1024) -> Path:
    """A Camunda-style export of ~20 MB: one process with tens of thousands of tasks."""
    head = (b'<?xml version="1.0" encoding="UTF-8"?>\n<bpmn:definitions xmlns:bpmn="' + BPMN_NS.encode()
            + b'" id="Definitions_big" targetNamespace="http://bpmn.io/schema/bpmn" exporter="Camunda Modeler" '
              b'exporterVersion="5.22.0">\n  <bpmn:process id="Process_big" isExecutable="true">\n'
              b'    <bpmn:startEvent id="StartEvent_1" />\n')
    parts, n, total = [head], 0, len(head)
    while total < size:
        chunk = (f'    <bpmn:task id="Activity_{n:07d}" name="回访步骤 {n} / Revisit step {n}">\n'
                 f'      <bpmn:documentation>Call the customer, confirm the fix, note the rating.</bpmn:documentation>\n'
                 f'    </bpmn:task>\n    <bpmn:sequenceFlow id="Flow_{n:07d}" sourceRef="Activity_{n:07d}" '
                 f'targetRef="Activity_{n + 1:07d}" />\n').encode()
        parts.append(chunk)
        total += len(chunk)
        n += 1
    parts.append(b"  </bpmn:process>\n</bpmn:definitions>\n")
    path.write_bytes(b"".join(parts))
    return path


def deeply_nested(path: Path, depth: int = 100_000) -> Path:
    """Well-formed XML nested 100k levels deep inside a task's extension elements."""
    path.write_bytes(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<bpmn:definitions xmlns:bpmn="' + BPMN_NS.encode()
        + b'" xmlns:x="http://example.com/x" id="D" targetNamespace="http://bpmn.io/schema/bpmn">\n'
          b'<bpmn:process id="Process_deep" isExecutable="true"><bpmn:task id="Activity_1">'
          b'<bpmn:extensionElements>' + b"<x:n>" * depth + b"</x:n>" * depth
        + b"</bpmn:extensionElements></bpmn:task></bpmn:process></bpmn:definitions>\n")
    return path


HOSTILE = {
    "billion_laughs": (lambda tmp: OTHER / "hostile_billion_laughs.bpmn", "DOCTYPE and ENTITY declarations"),
    "xxe_file": (lambda tmp: OTHER / "hostile_xxe_file.bpmn", "DOCTYPE and ENTITY declarations"),
    "xxe_http": (lambda tmp: OTHER / "hostile_xxe_http.bpmn", "DOCTYPE and ENTITY declarations"),
    "oversized_20mb": (lambda tmp: oversized(tmp / "big_export.bpmn"), "the limit is 5,242,880"),
    "nested_100k_levels": (lambda tmp: deeply_nested(tmp / "deep.bpmn"), "Excessive depth"),
}


@pytest.fixture
def no_network(monkeypatch):
    """Records (and blocks) any outgoing connection attempt."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.mark.parametrize("path_of, fragment", HOSTILE.values(), ids=list(HOSTILE))
@pytest.mark.parametrize("route", ["engine.deploy", "deploy_upload"])
def test_hostile_file_refused_fast_without_memory_blowup(cf, tmp_path, no_network, path_of, fragment, route):
    path = path_of(tmp_path)
    size = path.stat().st_size
    content = path.read_bytes() if route == "deploy_upload" else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    with pytest.raises(DeployError) as exc:
        if route == "engine.deploy":
            cf.deploy([path], author="owner_li")
        else:
            deploy_upload(cf, {path.name: content}, author="owner_li")
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024

    [problem] = exc.value.problems
    assert fragment in problem.message and problem.file == path.name and problem.hint
    assert "root:" not in str(exc.value)  # /etc/passwd never read
    assert elapsed < 1.0, f"{route} took {elapsed:.2f}s"
    read_once = size if route == "engine.deploy" else 0  # the CLI path reads the file itself
    assert peak < read_once + 8 * 1024 * 1024, f"Python allocations peaked at {peak:,} bytes"
    assert rss_growth < read_once + 64 * 1024 * 1024, f"resident memory grew by {rss_growth:,} bytes"
    assert no_network == []
    assert versions(cf) == 0
