"""The authorization matrix: every route × every role, including other groups' ids.

Runs on SQLite only (authorization does not depend on the database). A route added to the
app without a row here fails ``test_every_route_is_in_the_matrix``.
"""

from __future__ import annotations

import pytest

from engine import inbox

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
    }
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "assets.vendor") or rule.rule.startswith("/api/"):
            continue
        if patterns.get(rule.rule, rule.rule) not in covered:
            missing.append(rule.rule)
    assert not missing, f"routes without authorization expectations: {missing}"
