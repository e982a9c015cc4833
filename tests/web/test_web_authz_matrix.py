"""The authorization matrix: every route × every role, including other groups' ids.

Runs on SQLite only (authorization does not depend on the database). A route added to the
app without a row here fails ``test_every_route_is_in_the_matrix``; a state-changing route
added anywhere (pages or API) is tried by ``test_auditor_is_refused_every_state_changing_route``.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from engine import accounts, inbox
from web import authz

from webtools import USERS, AuthActions, start_simple

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

EVERYONE = [u[0] for u in USERS]


@pytest.fixture
def world(app, cf):
    """Objects of two groups: A (customer_service, open), B (held by cara), C (technical_support),
    D (at the supervisors' approval step)."""
    a = start_simple(cf, customer_id="101")
    b = start_simple(cf, customer_id="202")
    inbox.claim(cf, b["id"], "cara")
    c_res = cf.start("simple_review", {"customer": "Tech Co", "customer_id": "303"}, actor="test")
    c_task = c_res.ready_tasks[0]
    with cf.Session() as s, s.begin():  # move C into the other group
        from engine.models import HumanTask

        s.get(HumanTask, c_task["id"]).group_name = "technical_support"
    d = start_simple(cf)
    inbox.claim(cf, d["id"], "ann")
    res = cf.complete(d["id"], {"customer": "Big", "amount": 500}, user="ann")
    approve = res.ready_tasks[0]
    return {"A": a["id"], "B": b["id"], "C": c_task["id"], "D": approve["id"], "iA": a["instance_id"],
            "iB": b["instance_id"], "iC": c_res.instance_id, "iD": res.instance_id}


# GET routes: path template → {user: expected status}; users not listed get DEFAULT.
ALL_OK = {u: 200 for u in EVERYONE}
AUDIT_READERS = {u: 200 if u in ("root", "aud") else 403 for u in EVERYONE}  # auditors and admins
PROCESS_READERS = {u: 200 if u in ("olga", "aud", "root") else 403 for u in EVERYONE}  # process models
MODELERS = {u: 200 if u in ("olga", "root") else 403 for u in EVERYONE}  # edit, upload, deploy, migrate
GETS = {
    "/tasks": ALL_OK,
    "/tasks?view=team": ALL_OK,
    "/tasks?view=all": ALL_OK,
    "/tasks/{A}": {**ALL_OK, "tom": 404, "tess": 404},
    "/tasks/{B}": {**ALL_OK, "ann": 404, "tom": 404, "tess": 404},
    "/tasks/{C}": {**ALL_OK, "ann": 404, "cara": 404, "sam": 404},
    "/tasks/{D}": {**ALL_OK, "ann": 404, "cara": 404, "tom": 404},
    "/tasks/00000000-0000-0000-0000-000000000000": {u: 404 for u in EVERYONE},
    "/instances": ALL_OK,
    "/instances/{iA}": {**ALL_OK, "tom": 404, "tess": 404},
    "/instances/{iB}": {**ALL_OK, "ann": 404, "tom": 404, "tess": 404},
    "/instances/{iC}": {**ALL_OK, "ann": 404, "cara": 404, "sam": 404},
    "/instances/{iD}": {**ALL_OK, "cara": 404, "tom": 404},  # ann completed its intake
    "/instances/{iA}/diagram.json": {**ALL_OK, "tom": 404, "tess": 404},
    "/instances/{iC}/diagram.json": {**ALL_OK, "ann": 404, "cara": 404, "sam": 404},
    "/instances/999999": {u: 404 for u in EVERYONE},
    "/customers/303": {u: 404 if u in ("ann", "cara", "sam") else None for u in EVERYONE},
    "/customers/101": {u: 404 if u in ("tom", "tess") else None for u in EVERYONE},
    "/admin/users": {u: 200 if u in ("root", "aud") else 403 for u in EVERYONE},
    "/audit": AUDIT_READERS,
    "/audit?user=ann&from=2020-01-01": AUDIT_READERS,
    "/audit/instances/{iA}": AUDIT_READERS,
    "/audit/instances/{iC}": AUDIT_READERS,
    "/audit/instances/999999": {u: 404 if u in ("root", "aud") else 403 for u in EVERYONE},
    "/audit/versions/1/diagram.json": AUDIT_READERS,
    "/audit/export/csv": AUDIT_READERS,
    "/audit/export/json?user=ann": AUDIT_READERS,
    "/processes": PROCESS_READERS,
    "/processes/simple_review/versions": PROCESS_READERS,
    "/processes/simple_review/diff": PROCESS_READERS,
    "/processes/simple_review/diff.json": PROCESS_READERS,
    "/processes/simple_review/versions/1/model.json": PROCESS_READERS,
    "/processes/simple_review/versions/1/edit": MODELERS,
    "/processes/upload": MODELERS,
    "/processes/simple_review/migrate": MODELERS,
    # reports: supervisors and agents their own groups only, wide roles every team (test_web_reports.py)
    "/reports": ALL_OK,
    "/reports?team=technical_support": {**ALL_OK, "sam": 403, "ann": 403, "cara": 403},
    "/reports?team=": {**ALL_OK, "sam": 403, "tess": 403, "ann": 403, "cara": 403, "tom": 403},
    "/reports/sla_compliance.csv?month=2026-03": ALL_OK,
    "/reports/sla_compliance.csv?team=customer_service": {**ALL_OK, "tess": 403, "tom": 403},
    "/reports/drill?table=ticket_volume&row=opened&col=tickets": ALL_OK,
    "/reports/drill?table=ticket_volume&row=opened&col=tickets&team=customer_service": {**ALL_OK, "tess": 403,
                                                                                       "tom": 403},
    "/reports/drill?table=nope&row=x&col=y": {u: 404 for u in EVERYONE},
    "/survey/not-a-link": {u: 404 for u in EVERYONE},  # public: a signed link (test_web_survey.py), no roles
    "/login": {u: 302 for u in EVERYONE},  # signed in: straight to the inbox
    "/": {u: 302 for u in EVERYONE},
}
# the customer registry decides 200 (record) or 404 (no such customer record): both hide nothing
CUSTOMER_OK = (200, 404)


def _expand(path: str, world: dict) -> str:
    return path.format(**world)


@pytest.mark.parametrize("user", EVERYONE)
def test_get_routes(client, world, user):
    """Each signed-in user gets exactly the expected status on every page (no data when not allowed)."""
    auth = AuthActions(client)
    assert auth.login(user).status_code == 302
    wrong = []
    for template, expected in GETS.items():
        path = _expand(template, world)
        got = client.get(path)
        want = expected.get(user)
        ok = got.status_code in CUSTOMER_OK if want is None else got.status_code == want
        if not ok:
            wrong.append(f"{path}: {got.status_code}, expected {want or CUSTOMER_OK}")
        if got.status_code == 404 and template.startswith("/tasks/{"):
            body = got.get_data(as_text=True)
            assert "ACME" not in body and "Tech Co" not in body and "Big" not in body, path
    assert not wrong, "\n".join(wrong)


def test_anonymous_is_sent_to_sign_in(client, world):
    """Without signing in every page redirects to the sign-in form; POSTs answer 401."""
    for template in GETS:
        if template in ("/login", "/survey/not-a-link"):
            continue
        r = client.get(_expand(template, world))
        assert r.status_code == 302 and "/login" in r.headers["Location"], template
    auth = AuthActions(client)
    r = auth.post(f"/tasks/{world['A']}/claim")
    assert r.status_code == 401


POSTS = [
    # (path template, form data, {user: expected status})
    ("/tasks/{A}/claim", {}, {"ann": 302, "cara": 302, "sam": 302, "tom": 404, "tess": 404, "olga": 403,
                              "aud": 403, "root": 403}),
    ("/tasks/{C}/claim", {}, {"ann": 404, "cara": 404, "sam": 404, "tom": 302, "tess": 302, "olga": 403,
                              "aud": 403, "root": 403}),
    ("/tasks/{B}/release", {}, {"ann": 404, "cara": 302, "sam": 302, "tom": 404, "tess": 404, "olga": 403,
                                "aud": 403, "root": 302}),
    ("/tasks/{B}/reassign", {"to": "ann"}, {"ann": 404, "cara": 403, "sam": 302, "tom": 404, "tess": 404,
                                            "olga": 403, "aud": 403, "root": 302}),
    ("/tasks/{A}", {"customer": "X", "amount": "1"}, {"ann": 403, "cara": 403, "sam": 403, "tom": 404,
                                                      "tess": 404, "olga": 403, "aud": 403, "root": 403}),
    ("/tasks/{B}", {"customer": "X", "amount": "1"}, {"ann": 404, "cara": 302, "sam": 403, "tom": 404,
                                                      "tess": 404, "olga": 403, "aud": 403, "root": 403}),
    ("/tasks/{D}", {"approved": "true"}, {"ann": 404, "cara": 404, "sam": 403, "tom": 404, "tess": 403,
                                          "olga": 403, "aud": 403, "root": 403}),
    ("/admin/users", {"username": "new.one", "role": "agent", "password": "long enough 1"},
     {u: 302 if u == "root" else 403 for u in EVERYONE}),
    ("/admin/users/ann/active", {"active": "0"}, {u: 302 if u == "root" else 403 for u in EVERYONE}),
    # customer 101 has no registry record: allowed users get 404 from the registry, not a link
    ("/customers/101/survey-link", {}, {u: 404 if u in ("ann", "cara", "sam", "tom", "tess") else 403
                                        for u in EVERYONE}),
    ("/audit/verify", {"next": "/audit"}, {u: 302 if u in ("root", "aud") else 403 for u in EVERYONE}),
    ("/audit/entries/1/unmask", {"reason": "matrix"}, {u: 200 if u == "root" else 403 for u in EVERYONE}),
    ("/audit/export/csv", {"reason": "matrix"}, {u: 200 if u == "root" else 403 for u in EVERYONE}),
    # process owners and admins reach the handler (which refuses the empty body: 400); others 403
    ("/processes/simple_review/versions/1/deploy", {}, {u: 400 if u in ("olga", "root") else 403 for u in EVERYONE}),
    ("/processes/form-check", {}, {u: 400 if u in ("olga", "root") else 403 for u in EVERYONE}),
    ("/processes/upload", {}, {u: 400 if u in ("olga", "root") else 403 for u in EVERYONE}),
    ("/processes/simple_review/migrate", {}, {u: 400 if u in ("olga", "root") else 403 for u in EVERYONE}),
    ("/processes/simple_review/migrate/batch", {}, {u: 400 if u in ("olga", "root") else 403 for u in EVERYONE}),
    ("/language", {"lang": "en"}, {u: 302 for u in EVERYONE}),
    ("/logout", {}, {u: 302 for u in EVERYONE}),
]


@pytest.mark.parametrize("template,data,expected", POSTS, ids=[p[0] for p in POSTS])
def test_post_routes(app, world, template, data, expected):
    """Each state-changing route, for each user, on fresh state; denied requests change nothing."""
    for user in EVERYONE:
        client = app.test_client()
        auth = AuthActions(client)
        assert auth.login(user).status_code == 302
        path = _expand(template, world)
        before = inbox.get_task_row(app.config["CAREFLOW_ENGINE"], world["B"])
        r = auth.post(path, data)
        assert r.status_code == expected[user], f"{user} POST {path}: {r.status_code}"
        if r.status_code in (403, 404):
            after = inbox.get_task_row(app.config["CAREFLOW_ENGINE"], world["B"])
            assert after == before
        if r.status_code == 302 and template != "/logout" and template != "/language":
            _reset(app, world, template)


def _reset(app, world, template):
    """Undo a successful change so the next user meets the same state."""
    cf = app.config["CAREFLOW_ENGINE"]
    from engine.models import HumanTask, User

    with cf.Session() as s, s.begin():
        if template.endswith("/claim"):
            s.get(HumanTask, world["A"] if "{A}" in template else world["C"]).assignee = None
        if template.startswith("/tasks/{B}"):
            row = s.get(HumanTask, world["B"])
            if row.status == "ready":
                row.assignee = "cara"
        if template == "/admin/users":
            s.query(User).filter(User.username == "new.one").delete()
        if template.startswith("/admin/users/ann"):
            s.query(User).filter(User.username == "ann").update({"active": True})
    if template == "/tasks/{B}" and inbox.get_task_row(cf, world["B"])["status"] != "ready":
        res = cf.start("simple_review", {"customer": "ACME", "customer_id": "202"}, actor="test")
        inbox.claim(cf, res.ready_tasks[0]["id"], "cara")
        world["B"] = res.ready_tasks[0]["id"]


def test_every_route_is_in_the_matrix(app):
    """Every URL rule of the app is covered here or by the API matrix."""
    covered = {t.split("?")[0] for t in GETS} | {p[0] for p in POSTS}
    patterns = {
        "/tasks/<task_id>": "/tasks/{A}", "/tasks/<task_id>/claim": "/tasks/{A}/claim",
        "/tasks/<task_id>/release": "/tasks/{B}/release", "/tasks/<task_id>/reassign": "/tasks/{B}/reassign",
        "/instances/<int:instance_id>": "/instances/{iA}",
        "/instances/<int:instance_id>/diagram.json": "/instances/{iA}/diagram.json",
        "/customers/<customer_id>": "/customers/101", "/admin/users/<username>/active": "/admin/users/ann/active",
        "/customers/<customer_id>/survey-link": "/customers/101/survey-link", "/survey/<token>": "/survey/not-a-link",
        "/audit/instances/<int:instance_id>": "/audit/instances/{iA}",
        "/audit/versions/<int:version_id>/diagram.json": "/audit/versions/1/diagram.json",
        "/audit/export/<any(csv, json):fmt>": "/audit/export/csv",
        "/audit/entries/<int:seq>/unmask": "/audit/entries/1/unmask",
        "/processes/<process_id>/versions": "/processes/simple_review/versions",
        "/processes/<process_id>/diff": "/processes/simple_review/diff",
        "/processes/<process_id>/diff.json": "/processes/simple_review/diff.json",
        "/processes/<process_id>/versions/<int:version>/model.json": "/processes/simple_review/versions/1/model.json",
        "/processes/<process_id>/versions/<int:version>/edit": "/processes/simple_review/versions/1/edit",
        "/processes/<process_id>/versions/<int:version>/deploy": "/processes/simple_review/versions/1/deploy",
        "/processes/<process_id>/migrate": "/processes/simple_review/migrate",
        "/processes/<process_id>/migrate/batch": "/processes/simple_review/migrate/batch",
        "/reports/<table_id>.csv": "/reports/sla_compliance.csv",
    }
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "assets.vendor") or rule.rule.startswith("/api/"):
            continue
        if patterns.get(rule.rule, rule.rule) not in covered:
            missing.append(rule.rule)
    assert not missing, f"routes without authorization expectations: {missing}"


# -- the auditor changes nothing -------------------------------------------------------------------
# The only state-changing routes an auditor may use: their own session (sign in, sign out,
# language) and verifying the audit chain, which changes no business data and records the
# check itself (web/authz.py explains the choice). Everything else answers 403.
AUDITOR_MAY_POST = {"auth.login", "auth.logout", "auth.language", "audit.verify"}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# values for the URL variables of the routes (a variable not listed gets a generic value)
URL_VALUES = {"task_id": "{A}", "instance_id": "{iA}", "customer_id": "101", "username": "ann", "seq": "1",
              "fmt": "csv", "version_id": "1", "token": "no-such-survey-link"}
# a request body that a handler without the guard would act on
FORM = {"customer": "X", "amount": "1", "approved": "true", "to": "cara", "active": "0", "username": "new.one",
        "role": "agent", "password": "long enough 1", "reason": "matrix", "ticket_number": "SN1", "lang": "en"}
JSON_BODY = {"data": {"customer": "X", "amount": 1}, "to": "cara", "process_id": "simple_review"}
# what a request may touch without changing anything: the caller's own session bookkeeping
SESSION_TABLES = {"web_sessions", "login_failures", "api_tokens", "alembic_version"}


def _url_for_rule(rule, world: dict) -> str:
    """A concrete URL of ``rule``: known variables from the world, others a generic value."""
    path = rule.rule
    for arg in rule.arguments:
        generic = "1" if re.search(r"<(int|float):" + re.escape(arg) + ">", path) else "sample"
        path = re.sub(r"<(?:[^<>:]+:)?" + re.escape(arg) + ">", URL_VALUES.get(arg, generic), path)
    return path.format(**world)


def _snapshot(cf) -> dict:
    """Every row of every table except the caller's own session bookkeeping."""
    meta = sa.MetaData()
    meta.reflect(cf.db)
    with cf.db.connect() as c:
        return {name: sorted(tuple(map(str, row)) for row in c.execute(sa.select(table)))
                for name, table in meta.tables.items() if name not in SESSION_TABLES}


def test_auditor_is_refused_every_state_changing_route(app, world):
    """Every POST/PUT/PATCH/DELETE route of the app (pages and API, enumerated from the URL map, so
    new routes are covered automatically) answers 403 to the auditor and changes nothing."""
    assert AUDITOR_MAY_POST == authz.READ_ONLY_MAY_POST
    cf = app.config["CAREFLOW_ENGINE"]
    token = accounts.create_token(cf, "aud", "matrix")
    client = app.test_client()
    auth = AuthActions(client)
    assert auth.login("aud").status_code == 302
    tried, wrong = [], []
    for rule in app.url_map.iter_rules():
        methods = sorted((rule.methods or set()) & WRITE_METHODS)
        if not methods or rule.endpoint in AUDITOR_MAY_POST:
            continue
        path = _url_for_rule(rule, world)
        for method in methods:
            before = _snapshot(cf)
            if rule.rule.startswith("/api/"):
                r = client.open(path, method=method, json=JSON_BODY, headers={"Authorization": f"Bearer {token}"})
            else:
                r = client.open(path, method=method, data={"csrf_token": auth.token(), **FORM})
            tried.append(f"{method} {path}")
            if r.status_code != 403:
                wrong.append(f"{method} {path}: {r.status_code}")
            elif _snapshot(cf) != before:
                wrong.append(f"{method} {path}: refused, but the database changed")
    assert not wrong, "\n".join(wrong)
    assert len(tried) >= 15, tried
    for expected in ("POST /api/v1/instances", f"POST /tasks/{world['A']}/claim", "POST /admin/users",
                     "POST /audit/entries/1/unmask", "POST /audit/export/csv"):
        assert expected in tried


def test_auditor_may_still_sign_out_and_verify(app, world):
    """The routes the auditor may post do only what they say: the auditor's own session, or a
    recorded verification (no business data changes)."""
    cf = app.config["CAREFLOW_ENGINE"]
    client = app.test_client()
    auth = AuthActions(client)
    assert auth.login("aud").status_code == 302
    before = _snapshot(cf)
    assert auth.post("/language", {"lang": "en", "next": "/audit"}).status_code == 302
    assert auth.post("/audit/verify", {"next": "/audit"}).status_code == 302
    after = _snapshot(cf)
    changed = {name for name in after if after[name] != before[name]}
    assert changed <= {"audit_verifications", "users"}, changed  # users: aud's own language setting
    assert auth.logout().status_code == 302
