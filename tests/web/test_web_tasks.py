"""Inbox and task page: forms from JSON Schema, validation next to the fields, stale tasks,
claims and reassignment, filters and paging, SLA highlighting, escaping of hostile data."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from werkzeug.datastructures import MultiDict

from engine import inbox
from engine.clock import FrozenClock
from engine.runtime import Careflow
from web.forms import build_fields, parse_submission, to_form_paths

from webtools import FIXTURES, AuthActions, add_users, make_app, start_simple

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _widgets(cf) -> dict:
    cf.deploy([FIXTURES / "web_widgets.bpmn"], author="test")
    result = cf.start("web_widgets", {}, actor="test")
    task = result.ready_tasks[0]
    inbox.claim(cf, task["id"], "ann")
    return task


def test_form_rendered_from_schema(client, login, cf):
    """Titles in the user's language, enums, required marks, formats as input types, nested
    objects as fieldsets, arrays of objects as rows (spare rows without JavaScript)."""
    task = _widgets(cf)
    login.login("ann")
    html = client.get(f"/tasks/{task['id']}").get_data(as_text=True)
    for text in ("全部控件", "优先级", "紧急", "一般", "数量", "上门日期", "备件", "城市", "维修"):
        assert text in html, text
    assert re.search(r'<select id="f-priority" name="priority" required', html)
    assert 'type="number" inputmode="numeric" id="f-count" name="count" required' in html
    assert 'min="1"' in html and 'max="10"' in html
    assert 'type="date" id="f-visit_date"' in html
    assert 'type="datetime-local" id="f-called_at"' in html
    assert 'type="email" id="f-email"' in html
    assert '<textarea id="f-notes" name="notes"' in html  # maxLength > 200
    assert 'type="checkbox" name="needs" value="repair"' in html
    assert 'type="radio" name="solved" value="true"' in html
    assert '<legend>地址</legend>' in html and 'name="address/city"' in html
    assert 'name="parts/0/name"' in html and 'name="parts/2/qty"' in html  # 1 row + 2 spare rows
    assert 'name="parts/__index__/name"' in html  # the template row for JavaScript
    html_en = client.get(f"/tasks/{task['id']}", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Every widget" in html_en and "Spare parts" in html_en and "Urgent" in html_en


def test_server_side_errors_next_to_fields_with_input_kept(client, login, cf):
    """Invalid input comes back with translated messages on the right fields and nothing lost."""
    task = _widgets(cf)
    login.login("ann")
    form = {"priority": "urgent", "count": "12", "ratio": "abc", "visit_date": "2026-13-45", "email": "nope",
            "address/street": "长安街 1 号", "parts/0/name": "", "parts/0/qty": "",
            "parts/1/name": "滤芯", "parts/1/qty": "0", "notes": XSS}
    r = login.post(f"/tasks/{task['id']}", form)
    assert r.status_code == 400
    html = r.get_data(as_text=True)

    def error_of(field_id):
        m = re.search(rf'id="{field_id}-error"><li>([^<]+)</li>', html)
        return m.group(1) if m else None

    assert error_of("f-count") == "不能大于 10。"
    assert error_of("f-ratio") == "请输入数字。"
    assert error_of("f-visit_date") == "请输入有效日期（YYYY-MM-DD）。"
    assert error_of("f-email") == "请输入有效的邮箱地址。"
    assert error_of("f-address-city") == "此项为必填项。"
    assert error_of("f-parts-1-qty") == "不能小于 1。"  # the empty row 0 was dropped, errors stay on row 1
    assert 'value="长安街 1 号"' in html and 'value="滤芯"' in html and 'value="12"' in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html and XSS not in html
    assert cf.task(task["id"])["status"] == "ready"


def test_valid_submission_is_typed_and_completes(client, login, cf):
    """Posted strings become the schema's types in the instance data."""
    task = _widgets(cf)
    login.login("ann")
    form = MultiDict([("priority", "general"), ("count", "3"), ("ratio", "0.5"), ("solved", "true"),
                      ("visit_date", "2026-03-02"), ("called_at", "2026-03-02T09:30"), ("needs", "repair"),
                      ("needs", "advice"), ("address/city", "上海"), ("parts/0/name", "滤芯"), ("parts/0/qty", "2"),
                      ("parts/1/name", ""), ("parts/1/qty", "")])
    form.add("csrf_token", login.token())
    r = client.post(f"/tasks/{task['id']}", data=form)
    assert r.status_code == 302
    data = cf.show(task["instance_id"] if "instance_id" in task else 1)["data"]
    assert data["count"] == 3 and data["ratio"] == 0.5 and data["solved"] is True
    assert data["needs"] == ["repair", "advice"] and data["address"] == {"city": "上海"}
    assert data["parts"] == [{"name": "滤芯", "qty": 2}]
    assert data["called_at"] == "2026-03-02T09:30:00+08:00"


def test_parse_submission_units():
    """Form → JSON conversion keeps row positions mappable back to the form fields."""
    schema = {"type": "object", "properties": {
        "n": {"type": "integer"}, "rows": {"type": "array", "items": {"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "integer"}}}}}}
    form = MultiDict({"n": "x", "rows/3/a": "", "rows/3/b": "", "rows/5/a": "hi", "rows/5/b": "2.5"})
    data, errors, positions = parse_submission(schema, form)
    assert data == {"rows": [{"a": "hi"}]}
    assert errors == {"n": ["Enter a whole number."], "rows/5/b": ["Enter a whole number."]}
    assert positions == {"rows/0": "rows/5"}
    assert to_form_paths({"rows/0/a": ["bad"], "n": ["x"]}, positions) == {"rows/5/a": ["bad"], "n": ["x"]}
    fields = build_fields(schema, {"n": 4, "rows": [{"a": "z", "b": 1}]})
    assert fields[0].value == "4" and fields[1].rows[0][0].value == "z" and len(fields[1].rows) == 3


def test_stale_task_is_explained(client, login, cf):
    """Completing a task someone else completed meanwhile explains who and when (409), no crash."""
    task = start_simple(cf)
    inbox.claim(cf, task["id"], "ann")
    login.login("ann")
    assert client.get(f"/tasks/{task['id']}").status_code == 200
    cf.complete(task["id"], {"customer": "ACME", "amount": 5}, user="ann")
    r = login.post(f"/tasks/{task['id']}", {"customer": "ACME", "amount": "7"})
    assert r.status_code == 409
    body = r.get_data(as_text=True)
    assert "此任务已不可处理" in body and "已由 ann 于" in body and "您填写的内容未被保存" in body
    assert client.get(f"/tasks/{task['id']}").status_code == 200  # reading it later is fine
    assert login.post(f"/tasks/{task['id']}/claim").status_code == 409


def test_claim_race_and_release(app, cf):
    """Two agents claim the same task: one wins, the other is told; release puts it back."""
    task = start_simple(cf)
    ann, cara = app.test_client(), app.test_client()
    a, c = AuthActions(ann), AuthActions(cara)
    a.login("ann")
    c.login("cara")
    assert "领取" in cara.get("/tasks").get_data(as_text=True)
    assert a.post(f"/tasks/{task['id']}/claim").status_code == 302
    r = c.post(f"/tasks/{task['id']}/claim")
    assert r.status_code == 404  # now ann's: cara no longer sees it
    assert a.post(f"/tasks/{task['id']}/release").status_code == 302
    assert inbox.get_task_row(cf, task["id"])["assignee"] is None
    assert c.post(f"/tasks/{task['id']}/claim").status_code == 302


def test_supervisor_reassigns_within_team_only(client, login, cf):
    """Supervisors give tasks to people of the group or their team; others are refused."""
    task = start_simple(cf)
    inbox.claim(cf, task["id"], "ann")
    login.login("sam")
    html = client.get(f"/tasks/{task['id']}").get_data(as_text=True)
    assert '<option value="cara">' in html and '<option value="tom">' not in html
    r = login.post(f"/tasks/{task['id']}/reassign", {"to": "tom"})
    assert r.status_code == 302 and inbox.get_task_row(cf, task["id"])["assignee"] == "ann"
    r = login.post(f"/tasks/{task['id']}/reassign", {"to": "cara"})
    assert r.status_code == 302 and inbox.get_task_row(cf, task["id"])["assignee"] == "cara"
    assert cf.audit(task["instance_id"])[-1]["action"] == "task_reassigned"


def test_inbox_filters_paging_and_views(app, client, login, cf):
    """Filters by priority, type, customer and process; pages of 50; views per role."""
    for i in range(55):
        start_simple(cf, priority="urgent" if i % 5 == 0 else "general", customer_id=f"C{i:03d}",
                     customer=f"客户{i:03d}")
    login.login("ann")

    def rows(**q):
        html = client.get("/tasks", query_string=q).get_data(as_text=True)
        return re.findall(r'data-task-id="([^"]+)"', html), html

    ids, html = rows()
    assert len(ids) == 50 and "共 55 条" in html and "第 1 / 2 页" in html
    ids2, _ = rows(page=2)
    assert len(ids2) == 5 and not set(ids) & set(ids2)
    assert len(rows(priority="urgent")[0]) == 11
    assert len(rows(customer="C007")[0]) == 1
    assert len(rows(customer="客户01")[0]) == 10
    assert len(rows(type="intake")[0]) == 50 and len(rows(type="approve")[0]) == 0
    assert len(rows(process="nope")[0]) == 0
    inbox.claim(cf, ids[0], "cara")
    assert len(rows(view="mine")[0]) == 0
    login.logout()
    login.login("sam")
    team_ids, html = rows(view="team")
    assert ids[0] in team_ids  # supervisors see tasks their reports hold
    assert "cara" in html


def test_sla_highlighting(settings):
    """Near due (< 25 % left or < 2 h) and overdue tasks are marked; the text counts down."""
    clock = FrozenClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    cf = Careflow(settings, clock=clock)
    try:
        add_users(cf)
        cf.deploy([FIXTURES / "simple.bpmn"], author="test")
        start_simple(cf)  # intake due in 4 h
        client = make_app(cf).test_client()
        auth = AuthActions(client)

        def state():
            auth.login("ann")  # hours pass between the looks: sign in again each time
            html = client.get("/tasks").get_data(as_text=True)
            return re.search(r'<tr class="sla-(\w+)"', html).group(1), html

        assert state()[0] == "ok"
        clock.advance(timedelta(hours=2, minutes=30))
        s, html = state()
        assert s == "near" and "剩余 1 小时 30 分" in html
        clock.advance(timedelta(hours=2))
        s, html = state()
        assert s == "overdue" and "已超时 30 分钟" in html
    finally:
        cf.close()


def test_hostile_names_are_escaped(client, login, cf):
    """Customer names and task data with markup are shown as text everywhere."""
    task = start_simple(cf, customer=XSS, customer_id="1")
    inbox.claim(cf, task["id"], "ann")
    login.login("ann")
    for path in ("/tasks", f"/tasks/{task['id']}", f"/instances/{task['instance_id']}"):
        html = client.get(path).get_data(as_text=True)
        assert XSS not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;" in html, path


def test_no_form_task_and_read_only_view(client, login, cf):
    """An auditor sees the form disabled, without a submit button."""
    task = start_simple(cf)
    login.login("aud")
    html = client.get(f"/tasks/{task['id']}").get_data(as_text=True)
    assert 'id="complete-button"' not in html and "disabled" in html
