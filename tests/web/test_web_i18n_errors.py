"""Languages (user setting, browser, default Chinese; every text translated) and friendly
error pages in both languages — never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from engine import accounts

from webtools import ROOT, AuthActions, make_app

PO = ROOT / "web" / "translations" / "zh" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")


def test_every_text_is_translated(tmp_path):
    """Every message in web/ (Python and templates) has a Chinese translation in the catalog."""
    pot = tmp_path / "messages.pot"
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "extract", "-F", str(ROOT / "web" / "babel.cfg"),
                    "-o", str(pot), "--no-location", "-k", "lazy_gettext", "."], cwd=ROOT, check=True,
                   capture_output=True)
    with pot.open("rb") as f:
        wanted = {m.id for m in read_po(f) if m.id}
    with PO.open("rb") as f:
        catalog = read_po(f)
    translated = {m.id for m in catalog if m.id and m.string}
    assert len(wanted) > 150
    assert not sorted(wanted - translated), "untranslated: see web/translations/README.md"


def test_compiled_catalog_matches_the_po():
    """The committed .mo is the compiled .po (a fresh clone shows Chinese)."""
    with PO.open("rb") as f:
        po = {m.id: m.string for m in read_po(f) if m.id}
    with MO.open("rb") as f:
        mo = {m.id: m.string for m in read_mo(io.BytesIO(f.read())) if m.id}
    assert po == mo


@pytest.mark.parametrize("accept,expected,absent", [
    ("zh-CN,zh;q=0.9", "用户名", "Username"),
    ("en-US,en;q=0.9", "Username", "用户名"),
    ("fr-FR", "用户名", "Username"),  # default: Chinese
    (None, "用户名", "Username"),
])
def test_language_from_the_browser(client, accept, expected, absent):
    """Without a user setting the browser's Accept-Language decides; Chinese by default."""
    headers = {"Accept-Language": accept} if accept else {}
    body = client.get("/login", headers=headers).get_data(as_text=True)
    assert expected in body and absent not in body


def test_user_setting_wins_and_switching(client, login, cf):
    """A user's stored language overrides the browser; the switcher stores it."""
    accounts.set_locale(cf, "ann", "en")
    login.login("ann")
    assert "My inbox" in client.get("/tasks", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    r = login.post("/language", {"lang": "zh", "next": "/tasks?view=mine"})
    assert r.status_code == 302 and r.headers["Location"] == "/tasks?view=mine"
    assert accounts.get_account(cf, "ann").locale == "zh"
    assert "我的待办" in client.get("/tasks", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert login.post("/language", {"lang": "xx"}).status_code == 400


@pytest.mark.parametrize("lang,title", [("zh", "未找到"), ("en", "Not found")])
def test_not_found_page(client, login, lang, title):
    """404 is a page in the user's language with a way back."""
    login.login("ann")
    r = client.get("/no/such/page", headers={"Accept-Language": lang})
    assert r.status_code == 404
    body = r.get_data(as_text=True)
    assert title in body and 'href="/tasks"' in body and "Traceback" not in body


def test_unexpected_error_never_shows_a_traceback(cf, caplog):
    """A crash inside a view is a friendly 500 page (and JSON under /api); the traceback is logged only."""
    from webtools import add_users

    add_users(cf)
    app = make_app(cf)

    @app.route("/boom")
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    @app.route("/api/v1/boom")
    def api_boom():
        raise RuntimeError("secret internals")

    client = app.test_client()
    AuthActions(client).login("ann")
    for lang, text in (("zh", "出错了"), ("en", "Something went wrong")):
        r = client.get("/boom", headers={"Accept-Language": lang})
        body = r.get_data(as_text=True)
        assert r.status_code == 500 and text in body
        assert "Traceback" not in body and "secret internals" not in body and "RuntimeError" not in body
    r = client.get("/api/v1/boom")
    assert r.status_code in (401, 500) and r.is_json and "secret" not in r.get_data(as_text=True)
    assert "secret internals" in caplog.text


@pytest.mark.parametrize("code,path,method", [(404, "/tasks/none", "GET"), (405, "/logout", "GET"),
                                              (400, "/language", "POST")])
def test_error_pages_in_english(client, login, code, path, method):
    """Each error status renders the friendly page, translated."""
    login.login("ann")
    r = client.open(path, method=method, headers={"Accept-Language": "en"})
    assert r.status_code == code
    assert "Careflow" in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)


def test_json_errors_for_json_clients(client, login):
    """A client asking for JSON gets JSON errors with a message."""
    login.login("ann")
    r = client.get("/instances/424242", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.get_json()["message"]
