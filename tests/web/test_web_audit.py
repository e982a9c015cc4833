"""The auditor's pages (issue #9): search with every filter and keyset paging, per-instance
history, CSV / JSON exports that hold exactly the page's filtered set, personal data masked
on the pages and in both exports, audited unmasking, the verification status, and a real
browser selecting steps of the history on the BPMN diagram.

The auditor being refused on every state-changing route is ``test_web_authz_matrix.py``
(``test_auditor_is_refused_every_state_changing_route``)."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from sqlalchemy import select, text

from engine import inbox
from engine.audit_verify import AuditVerification
from engine.clock import FrozenClock
from engine.deploy import Bundle
from engine.models import HumanTask, Incident, ProcessVersion
from engine.runtime import Careflow

from webtools import FIXTURES, OUT, AuthActions, add_users, make_app, serve, sign_in

T0 = datetime(2024, 3, 14, 9, 0, tzinfo=UTC)  # 17:00 in Shanghai
LATE = datetime(2024, 3, 15, 17, 30, tzinfo=UTC)  # 2024-03-16 01:30 in Shanghai: the next local day
PHONE, EMAIL, ID_NUMBER = "13800000000", "zhang@example.com", "110101199003071234"
MASKED = ("138****0000", "z***@example.com", "110***********1234")
CLEAR = (PHONE, EMAIL, ID_NUMBER)


def build_world(settings, tmp_path) -> tuple[Careflow, FrozenClock, dict]:
    """Three instances over three (Shanghai) days on two versions of the simple process:
    A (ann, ACME, with a phone, an e-mail and an ID number), B (cara, v2), C (tom, v1, just
    after midnight Shanghai time = the previous day in UTC)."""
    clock = FrozenClock(T0)
    cf = Careflow(settings, clock=clock)
    add_users(cf)
    cf.deploy([FIXTURES / "simple.bpmn"], author="olga")
    a = cf.start("simple_review", {"customer": "ACME", "customer_id": "C001", "contact_phone": PHONE,
                                   "contact_email": EMAIL}, actor="ann")
    clock.advance(timedelta(hours=2))
    [task] = cf.tasks(instance_id=a.instance_id)
    inbox.claim(cf, task["id"], "ann")
    cf.complete(task["id"], {"customer": "ACME Ltd", "amount": 80, "id_number": ID_NUMBER}, user="ann")

    clock.set(T0 + timedelta(days=1))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "simple.bpmn").write_text((FIXTURES / "simple.bpmn").read_text().replace("Simple review", "Simple v2"))
    shutil.copytree(FIXTURES / "forms", v2 / "forms")
    cf.deploy(Bundle.from_paths([v2 / "simple.bpmn"]), author="olga", comment="v2")
    b = cf.start("simple_review", {"customer": "Beta", "customer_id": "C002"}, actor="cara")
    clock.advance(timedelta(minutes=30))
    [task] = cf.tasks(instance_id=b.instance_id)
    inbox.claim(cf, task["id"], "cara")
    cf.complete(task["id"], {"customer": "Beta", "amount": 5}, user="cara")

    clock.set(LATE)
    c = cf.start("simple_review", {"customer": "Gamma", "customer_id": "C003"}, actor="tom", version=1)
    with cf.db.begin() as conn:
        conn.execute(text("UPDATE instances SET business_key = 'SN20240314001' WHERE id = :i"), {"i": a.instance_id})
        conn.execute(text("UPDATE instances SET business_key = 'SN20240315001' WHERE id = :i"), {"i": b.instance_id})
    with cf.Session() as s:
        versions = {pv.version: pv.id for pv in s.scalars(select(ProcessVersion))}
    return cf, clock, {"A": a.instance_id, "B": b.instance_id, "C": c.instance_id, "versions": versions}


@pytest.fixture
def world(settings, tmp_path):
    """The engine with the three instances, the app (5 rows a page) and its ids."""
    cf, clock, ids = build_world(settings, tmp_path)
    app = make_app(cf, CAREFLOW_PAGE_SIZE=5)
    yield {"cf": cf, "clock": clock, "app": app, **ids}
    cf.close()


def signed_in(app, user: str) -> tuple:
    """A test client signed in as ``user`` and its CSRF helper."""
    client = app.test_client()
    auth = AuthActions(client)
    assert auth.login(user).status_code == 302
    return client, auth


def page_seqs(body: str) -> list[int]:
    """The audit rows listed on a search page, in order."""
    return [int(s) for s in re.findall(r'<tr data-seq="(\d+)"', body)]


def all_pages(client, query: str) -> list[int]:
    """Follow the 'older' links from the first page to the last; every row, newest first."""
    r = client.get("/audit?" + query)
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    seqs, pages = [], 0
    while True:
        body = r.get_data(as_text=True)
        seqs += page_seqs(body)
        pages += 1
        m = re.search(r'id="page-older" href="([^"]+)"', body)
        if not m:
            return seqs
        r = client.get(html.unescape(m.group(1)))
        assert r.status_code == 200 and pages < 100


def expected(cf, pred) -> list[int]:
    """The rows a filter must find, newest first, computed the slow, obvious way."""
    rows = [r for r in cf.audit() if pred(r)]
    rows.sort(key=lambda r: (datetime.fromisoformat(r["at"]), r["seq"]), reverse=True)
    return [r["seq"] for r in rows]


def customer_instances(cf, customer: str) -> set[int]:
    """Instances with a task of this customer (by id or name)."""
    with cf.Session() as s:
        return {t.instance_id for t in s.scalars(select(HumanTask))
                if customer in (t.customer_id, t.customer_name)}


def at(r: dict) -> datetime:
    """An audit row's time."""
    return datetime.fromisoformat(r["at"])


def test_each_filter_narrows_exactly(world):
    """Each filter (and a combination) lists exactly the matching rows, across pages."""
    cf, v = world["cf"], world["versions"]
    client, _auth = signed_in(world["app"], "aud")
    local_16 = datetime(2024, 3, 15, 16, 0, tzinfo=UTC)  # 2024-03-16 00:00 in Shanghai
    cases = {
        "": lambda r: True,
        "user=ann": lambda r: r["actor"] == "ann",
        "process=simple_review": lambda r: r["process_id"] == "simple_review",
        "process=simple_review&version=2": lambda r: r["process_version_id"] == v[2],
        "process=simple_review&version=1": lambda r: r["process_version_id"] == v[1],
        "action=task_completed": lambda r: r["action"] == "task_completed",
        "cause=user": lambda r: r["cause"] == "user",
        "customer=C002": lambda r: r["instance_id"] in customer_instances(cf, "C002"),
        "customer=ACME+Ltd": lambda r: r["instance_id"] in customer_instances(cf, "ACME Ltd"),
        "ticket=SN20240314001": lambda r: r["instance_id"] == world["A"],
        f"instance={world['C']}": lambda r: r["instance_id"] == world["C"],
        # dates are whole days in Shanghai time: C (01:30 on the 16th there) is not on the 15th
        "from=2024-03-16": lambda r: at(r) >= local_16,
        "to=2024-03-15": lambda r: at(r) < local_16,
        "from=2024-03-15&to=2024-03-15": lambda r: local_16 - timedelta(days=1) <= at(r) < local_16,
        "user=ann&action=task_completed": lambda r: r["actor"] == "ann" and r["action"] == "task_completed",
        "user=nobody": lambda r: False,
    }
    sizes = set()
    for query, pred in cases.items():
        want = expected(cf, pred)
        got = all_pages(client, query)
        assert got == want, query
        sizes.add(len(got))
    total = len(expected(cf, lambda r: True))
    assert total > 20 and len(sizes) > 8  # the filters really narrow, to different sets
    assert expected(cf, lambda r: at(r) >= local_16) == expected(cf, lambda r: r["instance_id"] == world["C"])


def test_keyset_paging_both_ways(world):
    """Older pages to the end, then newer pages back: every row once, in order, stable."""
    cf = world["cf"]
    client, _auth = signed_in(world["app"], "aud")
    everything = expected(cf, lambda r: True)
    pages, r = [], client.get("/audit")
    while True:
        body = r.get_data(as_text=True)
        pages.append(page_seqs(body))
        assert len(pages[-1]) <= 5
        m = re.search(r'id="page-older" href="([^"]+)"', body)
        if not m:
            break
        r = client.get(html.unescape(m.group(1)))
    assert [s for p in pages for s in p] == everything and len(pages) >= 5
    assert 'id="page-newer"' in body and 'id="page-older"' not in body
    back = [page_seqs(body)]
    while (m := re.search(r'id="page-newer" href="([^"]+)"', body)):
        body = client.get(html.unescape(m.group(1))).get_data(as_text=True)
        back.append(page_seqs(body))
    assert [s for p in reversed(back) for s in p] == everything
    assert 'id="page-newer"' not in body  # back on the first page


def test_bad_filters_are_explained(world):
    """Wrong dates, numbers and cursors answer 400 with the fields named, in the user's language."""
    client, _auth = signed_in(world["app"], "aud")
    r = client.get("/audit?from=2024-13-01&to=2024-03-01&version=x&process=p", headers={"Accept-Language": "en"})
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and "Traceback" not in body
    assert 'id="flt-from-error"' in body and 'id="flt-version-error"' in body
    assert "Enter a date (YYYY-MM-DD)." in body and 'value="2024-13-01"' in body  # input kept
    assert client.get("/audit?from=2024-03-16&to=2024-03-15").status_code == 400
    assert client.get("/audit?version=2").status_code == 400  # a version needs its process
    r = client.get("/audit?older=garbage")
    assert r.status_code == 400 and "此页面链接已失效" in r.get_data(as_text=True)
    assert client.get("/audit/export/csv?from=yesterday").status_code == 400


def _export(client, fmt: str, query: str = ""):
    r = client.get(f"/audit/export/{fmt}?{query}")
    assert r.status_code == 200
    assert "attachment" in r.headers["Content-Disposition"] and r.headers["Content-Disposition"].endswith(f'.{fmt}"')
    return r.get_data(as_text=True)


def _csv_rows(body: str) -> list[dict]:
    assert body.startswith("\ufeff")  # spreadsheets read the Chinese names correctly
    return list(csv.DictReader(io.StringIO(body[1:])))


@pytest.mark.parametrize("query", ["", "user=ann", "process=simple_review&version=1&from=2024-03-15",
                                   "action=task_completed&to=2024-03-15", "customer=C001", "ticket=SN20240315001"])
def test_exports_hold_exactly_the_filtered_set(world, query):
    """CSV and JSON exports of the page's filter hold exactly the rows the page lists (all pages)."""
    client, _auth = signed_in(world["app"], "aud")
    on_page = all_pages(client, query)
    assert on_page or query.startswith("action")
    body = client.get("/audit?" + query).get_data(as_text=True)
    hrefs = {}
    for fmt in ("csv", "json"):  # the page's export buttons carry its filter
        hrefs[fmt] = html.unescape(re.search(rf'id="export-{fmt}" href="([^"]+)"', body).group(1))
        path, _sep, qs = hrefs[fmt].partition("?")
        assert path == f"/audit/export/{fmt}" and parse_qs(qs) == parse_qs(query)
    rows = _csv_rows(_export(client, "csv", hrefs["csv"].partition("?")[2]))
    assert [int(r["seq"]) for r in rows] == sorted(on_page)  # oldest first
    doc = json.loads(_export(client, "json", hrefs["json"].partition("?")[2]))
    assert [r["seq"] for r in doc["rows"]] == sorted(on_page)
    assert doc["masked"] is True and doc["exported_by"] == "aud"
    assert doc["head"]["seq"] >= max(on_page, default=0)
    by_seq = {r["seq"]: r for r in doc["rows"]}
    for row in rows:  # both formats say the same
        j = by_seq[int(row["seq"])]
        assert (row["actor"], row["action"], row["hash"]) == (j["actor"], j["action"], j["hash"])
    if "from=2024-03-15" in query:  # the day starts at midnight Shanghai time, as on the page
        assert doc["filter"]["date_from"] == "2024-03-14T16:00:00+00:00"


def test_personal_data_masked_on_pages_and_in_exports(world):
    """Auditors (no unmask permission) and admins (until they unmask) see personal data masked:
    on the search page, the instance history and in both exports."""
    for user in ("aud", "root"):
        client, _auth = signed_in(world["app"], user)
        bodies = {
            "search": "".join(client.get(f"/audit?instance={world['A']}&action={a}").get_data(as_text=True)
                              for a in ("instance_started", "task_completed")),
            "history": client.get(f"/audit/instances/{world['A']}").get_data(as_text=True),
            "csv": _export(client, "csv"),
            "json": _export(client, "json"),
        }
        for name, body in bodies.items():
            for clear in CLEAR:
                assert clear not in body, (user, name, clear)
        for name in ("search", "history", "csv", "json"):
            for masked in MASKED:
                assert masked in bodies[name], (user, name, masked)
        history = bodies["history"]
        assert ("Show personal data" in history or "显示个人信息" in history) is (user == "root")


def _pii_seq(world) -> int:
    """The row of instance A's start (it holds the phone and the e-mail)."""
    rows = [r for r in world["cf"].audit(world["A"]) if r["action"] == "instance_started"]
    return rows[0]["seq"]


def _unmask_rows(cf) -> list[dict]:
    return [r for r in cf.audit() if r["action"] == "pii_unmasked"]


def test_unmask_is_deliberate_and_audited(world):
    """An admin unmasks one row with a reason: the clear values are shown once, and a
    pii_unmasked row (who, which row, why) is in the trail before; no reason, no reveal;
    auditors are refused."""
    cf, app = world["cf"], world["app"]
    seq = _pii_seq(world)
    client, auth = signed_in(app, "root")
    history = client.get(f"/audit/instances/{world['A']}").get_data(as_text=True)
    assert f'action="/audit/entries/{seq}/unmask"' in history

    r = auth.post(f"/audit/entries/{seq}/unmask", {"reason": " ", "next": f"/audit/instances/{world['A']}"})
    assert r.status_code == 302 and r.headers["Location"] == f"/audit/instances/{world['A']}"
    assert _unmask_rows(cf) == []

    r = auth.post(f"/audit/entries/{seq}/unmask", {"reason": "complaint 2024-031: check the callback number",
                                                   "next": "https://evil.example/"})
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and PHONE in body and EMAIL in body
    assert r.headers["Cache-Control"] == "no-store"
    [row] = _unmask_rows(cf)
    assert row["actor"] == "root" and row["cause"] == "user" and row["instance_id"] == world["A"]
    assert row["details"]["seq"] == seq and row["details"]["reason"] == "complaint 2024-031: check the callback number"
    assert sorted(row["details"]["paths"]) == ["data_diff/added/contact_email", "data_diff/added/contact_phone"]
    assert f"#{row['seq']}" in body and 'href="/audit"' in body  # names its record; no open redirect
    # the reveal happened once: the history is masked again and lists the unmasking
    history = client.get(f"/audit/instances/{world['A']}").get_data(as_text=True)
    assert PHONE not in history and f'id="step-{row["seq"]}"' in history
    assert "complaint 2024-031" in history
    found = all_pages(client, "action=pii_unmasked&user=root")
    assert found == [row["seq"]]

    aud_client, aud = signed_in(app, "aud")
    assert aud.post(f"/audit/entries/{seq}/unmask", {"reason": "curious"}).status_code == 403
    assert 'action="/audit/entries/' not in aud_client.get(f"/audit/instances/{world['A']}").get_data(as_text=True)
    assert auth.post("/audit/entries/999999/unmask", {"reason": "x"}).status_code == 404
    assert len(_unmask_rows(cf)) == 1


def test_unmasked_export_is_audited(world):
    """An admin's export in clear names its filter and reason in the trail first; auditors get 403."""
    cf, app = world["cf"], world["app"]
    _client, auth = signed_in(app, "root")
    r = auth.post("/audit/export/json", {"user": "ann", "reason": " "})
    assert r.status_code == 302 and r.headers["Location"] == "/audit?user=ann" and _unmask_rows(cf) == []
    r = auth.post("/audit/export/csv", {"instance": str(world["A"]), "reason": "PIPL access request"})
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and r.headers["X-Careflow-Masked"] == "false"
    assert PHONE in body and ID_NUMBER in body
    [row] = _unmask_rows(cf)
    assert row["details"] == {"export": "csv", "filter": {"instance_id": world["A"]}, "reason": "PIPL access request"}
    _aud_client, aud = signed_in(app, "aud")
    assert aud.post("/audit/export/csv", {"reason": "x"}).status_code == 403
    assert len(_unmask_rows(cf)) == 1


def test_instance_history_shows_every_step(world):
    """Every step of the instance in order with time (Shanghai), actor, cause, task, the data
    diff as before/after, process and form version; the diagram of its versions."""
    cf, app = world["cf"], world["app"]
    client, _auth = signed_in(app, "aud")
    r = client.get(f"/audit/instances/{world['A']}", headers={"Accept-Language": "en"})
    body = r.get_data(as_text=True)
    assert r.status_code == 200
    rows = cf.audit(world["A"])
    steps = [int(s) for s in re.findall(r'<li class="step" id="step-(\d+)"', body)]
    assert steps == [x["seq"] for x in rows] and len(steps) >= 8
    assert "2024-03-14 17:00:00" in body and "2024-03-14 19:00:00" in body  # UTC+8
    completed = next(x for x in rows if x["action"] == "task_completed")
    item = body[body.index(f'id="step-{completed["seq"]}"'):]
    item = item[:item.index("</li>")]
    assert 'data-element="intake"' in item and "Task completed" in item and "Intake" in item
    assert '<span class="who" title="Actor">ann</span>' in item and "cause-user" in item
    assert "process v1" in item and f"form {completed['form_version'][:8]}" in item
    # before / after: the customer changed, the amount and the ID number were added (masked)
    assert re.search(r'<td class="mono">customer</td>\s*<td><span class="v before">ACME</span></td>\s*'
                     r'<td><span class="v after">ACME Ltd</span></td>', item)
    assert re.search(r'<td class="mono">amount</td>\s*<td><span class="muted">—</span></td>\s*'
                     r'<td><span class="v after">80</span></td>', item)
    assert MASKED[2] in item and ID_NUMBER not in item
    timer_or_engine = next(x for x in rows if x["action"] == "engine_task" and x["task_name"] == "compute")
    assert f'id="step-{timer_or_engine["seq"]}"' in body and "cause-system" in body
    sources = json.loads(html.unescape(re.search(r"data-sources='([^']+)'", body).group(1)))
    v1 = world["versions"][1]
    assert sources == {str(v1): f"/audit/versions/{v1}/diagram.json"}
    diagram = client.get(sources[str(v1)]).get_json()
    assert diagram["version"] == 1 and 'id="intake"' in diagram["xml"] and 'id="compute"' in diagram["xml"]
    assert client.get(f"/audit/instances/{world['B']}").status_code == 200
    assert client.get("/audit/instances/999999").status_code == 404
    assert client.get("/audit/versions/999999/diagram.json").status_code == 404
    # linked from the instance page and the navigation, for the roles that may read the trail
    page = client.get(f"/instances/{world['A']}").get_data(as_text=True)
    assert f'href="/audit/instances/{world["A"]}"' in page and 'href="/audit"' in page
    agent_client, _ = signed_in(app, "ann")
    page = agent_client.get(f"/instances/{world['A']}").get_data(as_text=True)
    assert "/audit" not in page
    assert agent_client.get(f"/audit/instances/{world['A']}").status_code == 403


def test_history_outlives_the_instance(world):
    """Audit rows have no foreign key: the history still shows when the instance row is gone."""
    cf, app = world["cf"], world["app"]
    with cf.db.begin() as conn:
        for table in ("timers", "human_tasks"):
            conn.execute(text(f"DELETE FROM {table} WHERE instance_id = :i"), {"i": world["C"]})
        conn.execute(text("DELETE FROM instances WHERE id = :i"), {"i": world["C"]})
    client, _auth = signed_in(app, "aud")
    r = client.get(f"/audit/instances/{world['C']}", headers={"Accept-Language": "en"})
    assert r.status_code == 200 and "no longer exists" in r.get_data(as_text=True)


def test_verification_status_and_verify_now(world):
    """The page shows the chain's state; 'verify now' records a verification (auditors may);
    rows appended since are re-checked on view; a tampered row shows as broken with an incident."""
    cf, app = world["cf"], world["app"]
    client, auth = signed_in(app, "aud")
    body = client.get("/audit", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'class="audit-status never_verified"' in body and 'id="verify-now"' in body
    r = auth.post("/audit/verify", {"next": "/audit?user=ann"}, headers={"Accept-Language": "en"})
    assert r.status_code == 302 and r.headers["Location"] == "/audit?user=ann"
    with cf.Session() as s:
        [v] = s.scalars(select(AuditVerification)).all()
        assert v.ok and v.by == "aud" and v.from_seq == 0 and v.rows_checked > 20
    body = client.get("/audit", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'class="audit-status verified"' in body and "The audit trail is intact" in body

    res = cf.start("simple_review", {"customer": "Delta"}, actor="ann")  # appended after the verification
    body = client.get(f"/audit/instances/{res.instance_id}", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'class="audit-status verified"' in body and "appended since were checked just now" in body

    # a row appended since the last full verification is re-checked on every view
    started = next(r for r in cf.audit(res.instance_id) if r["action"] == "instance_started")
    _tamper(cf, "UPDATE audit_log SET actor = 'mallory' WHERE seq = :s", s=started["seq"])
    body = client.get("/audit", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'class="audit-status broken"' in body
    assert f"First problem at row {started['seq']}: a row was edited" in body
    r = auth.post("/audit/verify", {"next": "/audit"}, headers={"Accept-Language": "en"})
    flashed = client.get("/audit", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert r.status_code == 302 and f"broken at row {started['seq']}" in flashed
    assert 'class="audit-status broken"' in flashed  # the last full verification failed
    with cf.Session() as s:
        assert [i.kind for i in s.scalars(select(Incident))] == ["audit"]
        assert s.scalars(select(AuditVerification).order_by(AuditVerification.id.desc())).first().ok is False


def test_many_rows_since_the_last_verification_are_not_rechecked_on_view(world, monkeypatch):
    """Beyond a bound the page does not re-check appended rows on every view: it says how many
    wait for the next verification instead."""
    from web import audit

    cf, app = world["cf"], world["app"]
    client, auth = signed_in(app, "root")
    auth.post("/audit/verify", {"next": "/audit"})
    monkeypatch.setattr(audit, "INLINE_VERIFY_MAX_ROWS", 1)
    cf.start("simple_review", {"customer": "Delta"}, actor="ann")
    body = client.get("/audit", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'class="audit-status unchecked"' in body and "rows appended since are not checked yet" in body


def _tamper(cf, sql: str, **params) -> None:
    """Edit the log behind the application's back, as the tables' owner could."""
    with cf.db.begin() as c:
        if cf.db.dialect.name == "sqlite":
            c.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update")
        else:
            c.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        c.execute(text(sql), params)
        if cf.db.dialect.name != "sqlite":
            c.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER USER")


def test_only_auditors_and_admins_read_the_trail(world):
    """Agents, supervisors and process owners get 403 and no navigation link."""
    app = world["app"]
    for user, allowed in (("ann", False), ("sam", False), ("olga", False), ("aud", True), ("root", True)):
        client, _auth = signed_in(app, user)
        assert client.get("/audit").status_code == (200 if allowed else 403), user
        assert client.get("/audit/export/json").status_code == (200 if allowed else 403), user
        assert ('href="/audit"' in client.get("/tasks").get_data(as_text=True)) is allowed, user


def test_export_streams_without_blocking_writers(world):
    """A download in progress does not stop the application from working (SQLite keeps a
    snapshot, not the write lock)."""
    cf = world["cf"]
    client, _auth = signed_in(world["app"], "aud")
    r = client.get("/audit/export/csv", buffered=False)
    chunks = iter(r.response)
    first = next(chunks)
    assert "seq" in (first.decode() if isinstance(first, bytes) else first)
    cf.start("simple_review", {"customer": "While exporting"}, actor="ann")  # a write while the export is open
    rest = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks)
    r.close()
    assert rest.count(b"\n") > 20


# -- the browser -----------------------------------------------------------------------------------
@pytest.fixture
def live_world(settings, tmp_path, monkeypatch):
    """The world served over real HTTP (127.0.0.1, a free port)."""
    monkeypatch.setenv("CAREFLOW_INSECURE_COOKIES", "1")
    cf, _clock, ids = build_world(settings, tmp_path)
    with serve(make_app(cf)) as base:
        yield {"url": base, "cf": cf, **ids}
    cf.close()


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_browser_history_step_moves_the_diagram_marker(live_world, browser):
    """The admin opens an instance's audit history from the search page; selecting a step marks
    its element on the diagram, selecting another moves the marker; no script or CSP errors."""
    base, cf = live_world["url"], live_world["cf"]
    rows = cf.audit(live_world["A"])
    intake = next(r for r in rows if r["action"] == "task_completed")
    compute = next(r for r in rows if r["action"] == "engine_task" and r["task_name"] == "compute")
    started = next(r for r in rows if r["action"] == "instance_started")
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, locale="zh-CN")
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"{page.url}: {e}"))
    page.on("response", lambda r: problems.append(f"{r.url}: {r.status}")
            if r.status >= 400 and r.request.resource_type != "document" else None)

    sign_in(page, base, "root")
    page.get_by_role("link", name="审计").click()
    page.wait_for_url(re.compile(r".*/audit$"))
    assert "尚未校验" in page.locator("#verification").inner_text()
    page.click("#verify-now")
    page.wait_for_url(re.compile(r".*/audit$"))
    assert "审计日志完整" in page.locator(".flashes").inner_text()
    assert "审计日志已校验" in page.locator("#verification").inner_text()
    page.fill("#flt-ticket", "SN20240314001")
    page.click("#audit-search-button")
    page.wait_for_url(re.compile(r".*ticket=SN20240314001.*"))
    assert page.locator("#audit-results > tbody > tr").count() == len(rows)
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / "audit-search.png"), full_page=True)
    page.locator(f'#audit-results tr[data-seq="{intake["seq"]}"] a').first.click()
    page.wait_for_url(re.compile(rf".*/audit/instances/{live_world['A']}#step-{intake['seq']}$"))
    page.wait_for_selector("#audit-diagram[data-rendered=true]", timeout=15_000)

    marker = "#audit-diagram .djs-element.cf-selected"
    page.wait_for_function(f"document.querySelector('{marker}') && "
                           "document.querySelector('#audit-diagram').dataset.selected === 'intake'")
    assert page.locator(marker).count() == 1
    assert page.locator(marker).get_attribute("data-element-id") == "intake"
    assert page.locator(f"#step-{intake['seq']}").get_attribute("class") == "step selected"
    assert page.locator("#audit-diagram .djs-element.cf-done").count() >= 3

    page.locator(f"#step-{compute['seq']} .step-select").click()
    page.wait_for_function("document.querySelector('#audit-diagram').dataset.selected === 'compute'")
    assert page.locator(marker).count() == 1
    assert page.locator(marker).get_attribute("data-element-id") == "compute"
    assert "selected" not in page.locator(f"#step-{intake['seq']}").get_attribute("class")
    assert page.url.endswith(f"#step-{compute['seq']}")
    page.keyboard.press("ArrowUp")  # keyboard: the previous step
    page.wait_for_function("document.querySelector('#audit-diagram').dataset.selected !== 'compute'")

    page.locator(f"#step-{intake['seq']} .step-select").click()
    page.wait_for_function("document.querySelector('#audit-diagram').dataset.selected === 'intake'")
    assert "登记" in page.locator("#selected-step").inner_text()
    page.locator(f"#step-{started['seq']} .step-select").click()  # no element: the marker goes
    page.wait_for_function("document.querySelector('#audit-diagram').dataset.selected === ''")
    assert page.locator(marker).count() == 0
    assert "图中没有" in page.locator("#selected-step").inner_text()
    page.locator(f"#step-{intake['seq']} .step-select").click()
    page.wait_for_function("document.querySelector('#audit-diagram').dataset.selected === 'intake'")
    shot = OUT / "audit-history.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 30_000
    assert PHONE not in page.content() and MASKED[0] in page.content()
    assert not problems, problems
    context.close()
