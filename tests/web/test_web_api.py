"""The JSON API: token authentication, the same authorization as the pages, JSON errors,
and an OpenAPI document that matches the routes."""

from __future__ import annotations

import pytest

from engine import accounts, inbox

from webtools import USERS, start_simple


def _tokens(cf) -> dict[str, dict]:
    return {u[0]: {"Authorization": f"Bearer {accounts.create_token(cf, u[0], 'test')}"} for u in USERS}


@pytest.fixture
def api(app, cf):
    """Tokens per user and a task in customer_service and one in technical_support."""
    a = start_simple(cf, customer_id="101", priority="urgent")
    c = start_simple(cf, customer="Tech Co")
    with cf.Session() as s, s.begin():
        from engine.models import HumanTask

        s.get(HumanTask, c["id"]).group_name = "technical_support"
    return {"h": _tokens(cf), "A": a, "C": c, "client": app.test_client()}


def test_token_required(api):
    """No token, a wrong token, or a revoked user's token: 401 JSON with a message."""
    client = api["client"]
    for headers in ({}, {"Authorization": "Bearer cft_nope"}, {"Authorization": "Basic abc"}):
        r = client.get("/api/v1/tasks", headers=headers)
        assert r.status_code == 401
        assert r.is_json and r.get_json()["error"] == "unauthorized" and r.get_json()["message"]
        assert "Bearer" in r.headers["WWW-Authenticate"]


def test_deactivated_users_token_stops_working(api, cf):
    """A token acts as its user: deactivate the user and the token is refused."""
    client = api["client"]
    assert client.get("/api/v1/me", headers=api["h"]["ann"]).status_code == 200
    accounts.set_active(cf, "ann", False, actor="root")
    assert client.get("/api/v1/me", headers=api["h"]["ann"]).status_code == 401


def test_tasks_listing_follows_authorization(api):
    """Each user lists exactly the tasks the pages would show them."""
    client, h, a, c = api["client"], api["h"], api["A"], api["C"]

    def ids(user, **q):
        r = client.get("/api/v1/tasks", headers=h[user], query_string=q)
        assert r.status_code == 200, r.get_json()
        return {t["id"] for t in r.get_json()["items"]}

    assert ids("ann") == {a["id"]}
    assert ids("tom") == {c["id"]}
    assert ids("sam") == {a["id"]}
    assert ids("aud") == {a["id"], c["id"]}
    assert ids("ann", priority="urgent") == {a["id"]}
    assert ids("ann", priority="general") == set()
    r = client.get("/api/v1/tasks", headers=h["ann"], query_string={"view": "all"})
    assert r.status_code == 400 and "view" in r.get_json()["field_errors"]


@pytest.mark.parametrize("user,expected", [("ann", 200), ("cara", 200), ("sam", 200), ("tom", 404), ("tess", 404),
                                           ("olga", 200), ("aud", 200), ("root", 200)])
def test_foreign_ids_are_not_found(api, user, expected):
    """Task, instance and history of another group: 404 with no data."""
    client, h, a = api["client"], api["h"], api["A"]
    for path in (f"/api/v1/tasks/{a['id']}", f"/api/v1/instances/{a['instance_id']}",
                 f"/api/v1/instances/{a['instance_id']}/history"):
        r = client.get(path, headers=h[user])
        assert r.status_code == expected, (user, path)
        if expected == 404:
            assert "ACME" not in r.get_data(as_text=True)


def test_claim_complete_and_errors(api, cf):
    """Claim, a field error as JSON, completion, then 409 for the stale task."""
    client, h, a = api["client"], api["h"], api["A"]
    url = f"/api/v1/tasks/{a['id']}"
    assert client.post(url + "/complete", headers=h["ann"], json={"data": {}}).status_code == 403
    r = client.post(url + "/claim", headers=h["ann"])
    assert r.status_code == 200 and r.get_json()["assignee"] == "ann"
    assert client.post(url + "/claim", headers=h["cara"]).status_code == 404  # held by ann: no longer hers to see
    r = client.post(url + "/complete", headers=h["ann"], json={"data": {"customer": "ACME", "amount": -1}})
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] == "invalid" and list(body["field_errors"]) == ["amount"]
    r = client.post(url + "/complete", headers=h["ann"], json={"data": {"customer": "ACME", "amount": 80}})
    assert r.status_code == 200 and r.get_json()["status"] == "running"
    assert r.get_json()["ready_tasks"][0]["name"] == "approve"
    r = client.post(url + "/complete", headers=h["ann"], json={"data": {"customer": "ACME", "amount": 80}})
    assert r.status_code == 409 and r.get_json()["error"] == "conflict"
    assert "completed" in r.get_json()["message"]


def test_auditor_reads_but_changes_nothing(api):
    """Auditors get 403 on every state change."""
    client, h, a = api["client"], api["h"], api["A"]
    for action in ("claim", "release", "complete"):
        r = client.post(f"/api/v1/tasks/{a['id']}/{action}", headers=h["aud"], json={"data": {}})
        assert r.status_code == 403, action
    r = client.post("/api/v1/instances", headers=h["aud"], json={"process_id": "simple_review"})
    assert r.status_code == 403


def test_start_and_reassign(api, cf):
    """Agents start instances; supervisors reassign within their team (audited)."""
    client, h = api["client"], api["h"]
    r = client.post("/api/v1/instances", headers=h["ann"], json={"process_id": "simple_review",
                                                                 "data": {"customer": "Neu"}})
    assert r.status_code == 201
    task_id = r.get_json()["ready_tasks"][0]["id"]
    r = client.post(f"/api/v1/tasks/{task_id}/reassign", headers=h["sam"], json={"to": "tom"})
    assert r.status_code == 400 and "to" in r.get_json()["field_errors"]
    r = client.post(f"/api/v1/tasks/{task_id}/reassign", headers=h["sam"], json={"to": "cara"})
    assert r.status_code == 200 and r.get_json()["assignee"] == "cara"
    assert [e["action"] for e in cf.audit(r.get_json()["instance_id"])][-1] == "task_reassigned"
    r = client.post("/api/v1/instances", headers=h["ann"], json={"process_id": "nope"})
    assert r.status_code == 404 and r.is_json
    r = client.post("/api/v1/instances", headers=h["ann"], data="not json", content_type="application/json")
    assert r.status_code == 400 and r.is_json


def test_unknown_api_path_and_method_are_json(api):
    """404 and 405 under /api are JSON too."""
    client, h = api["client"], api["h"]
    r = client.get("/api/v1/nothing", headers=h["ann"])
    assert r.status_code == 404 and r.is_json
    r = client.delete("/api/v1/tasks", headers=h["ann"])
    assert r.status_code == 405 and r.is_json


def test_openapi_document_matches_the_routes(api, app):
    """Every API route is documented and every documented path exists."""
    r = api["client"].get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    actual = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint == "api.openapi":
            continue
        path = rule.rule[len("/api/v1"):].replace("<int:", "{").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            actual.add((path, method))
    assert documented == actual
    for ops in doc["paths"].values():
        for op in ops.values():
            for code, resp in op["responses"].items():
                assert "$ref" in resp or "description" in resp, code


def test_reassign_and_release_audited_in_engine(cf, app):
    """Every assignment change is an audit row with who, from and to."""
    t = start_simple(cf)
    inbox.claim(cf, t["id"], "ann")
    inbox.reassign(cf, t["id"], "cara", by="sam")
    inbox.release(cf, t["id"], by="cara")
    rows = [r for r in cf.audit(t["instance_id"]) if r["action"].startswith("task_") and r["action"] not in
            ("task_ready",)]
    assert [(r["action"], r["actor"], r["details"]["from"], r["details"]["to"]) for r in rows] == [
        ("task_claimed", "ann", None, "ann"), ("task_reassigned", "sam", "ann", "cara"),
        ("task_released", "cara", "cara", None)]


def test_tickets_from_the_ticket_table_with_authorization(api, cf):
    """A real after-sales ticket: listed and shown to those who see its instance, 404 to others."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cf.deploy([root / "workflows" / "after_sales_ticket.bpmn"], author="test")
    started = cf.start("after_sales_ticket", {}, actor="ann")
    [intake] = cf.tasks(instance_id=started.instance_id)
    form = {"intake": {
        "channel": "phone", "received_at": cf.now().isoformat(), "occurred_at": cf.now().isoformat(),
        "customer": {"customer_type": "enterprise", "name": "杭州星河制造有限公司", "phone": "13812345678"},
        "contact": {"name": "王磊"}, "problem": {"symptom": "MES 服务器无法启动"},
        "type": "product_fault", "priority": "urgent", "complex": False}}
    cf.complete(intake["id"], form, user="ann")
    client, h = api["client"], api["h"]

    listed = client.get("/api/v1/tickets", headers=h["ann"]).get_json()
    [ticket] = [t for t in listed["items"] if t["instance_id"] == started.instance_id]
    assert ticket["number"].startswith("SN") and ticket["priority"] == "urgent"
    assert ticket["customer"]["phone"] == "138****5678"
    shown = client.get(f"/api/v1/tickets/{ticket['number']}", headers=h["tom"]).get_json()
    assert shown["number"] == ticket["number"] and {c["name"] for c in shown["deadlines"]} >= {"solution"}
    # an agent of another group, with no task of this ticket: not found, in the list or by number
    assert client.get(f"/api/v1/tickets/{ticket['number']}", headers=h["cara"]).status_code == 404
    assert all(t["number"] != ticket["number"]
               for t in client.get("/api/v1/tickets", headers=h["cara"]).get_json()["items"])
    assert client.get("/api/v1/tickets/SN19990101001", headers=h["root"]).status_code == 404
    bad = client.get("/api/v1/tickets?status=nonsense", headers=h["root"])
    assert bad.status_code == 400 and "status" in bad.get_json()["field_errors"]
    assert client.get("/api/v1/tickets?status=diagnosing", headers=h["root"]).get_json()["items"]
