"""Sign-in and session security: hashing, rotation, sign-out, timeouts, rate limit, CSRF,
cookie flags, headers, no state change over GET, safe redirects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine import accounts
from engine.clock import FrozenClock
from engine.models import User
from engine.runtime import Careflow

from webtools import PASSWORD, AuthActions, add_users, make_app, start_simple


def test_password_is_stored_as_argon2_hash(app, cf):
    """Passwords are argon2id hashes, never the clear text."""
    with cf.Session() as s:
        stored = s.query(User).filter_by(username="ann").one().password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_sign_in_and_out(client, login):
    """A good password signs in (redirect to the inbox); sign-out ends the session."""
    r = login.login("ann")
    assert r.status_code == 302 and r.headers["Location"].endswith("/tasks")
    assert client.get("/tasks").status_code == 200
    r = login.logout()
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert client.get("/tasks").status_code == 302


def test_wrong_password(client, login):
    """A wrong password or unknown user: 401, the same message, the username kept."""
    for user in ("ann", "nobody"):
        r = login.login(user, "wrong password")
        assert r.status_code == 401
        body = r.get_data(as_text=True)
        assert "用户名或密码错误" in body and f'value="{user}"' in body
    assert client.get("/tasks").status_code == 302


def test_session_is_rotated_and_invalidated(app, client, login):
    """A new session id at sign-in; after sign-out a copied cookie no longer works."""
    cookie_name = app.config["SESSION_COOKIE_NAME"]
    client.get("/login")
    before = client.get_cookie(cookie_name).value
    login.login("ann")
    signed_in = client.get_cookie(cookie_name).value
    assert signed_in != before
    stolen = app.test_client()
    stolen.set_cookie(cookie_name, signed_in)
    assert stolen.get("/tasks").status_code == 200
    login.logout()
    assert stolen.get("/tasks").status_code == 302  # the server-side session is gone
    login.login("ann")
    assert client.get_cookie(cookie_name).value != signed_in


def test_cookie_flags(app, client, login):
    """Secure, HttpOnly, SameSite=Lax and the __Host- prefix by default."""
    r = login.login("ann")
    header = r.headers["Set-Cookie"]
    assert header.startswith("__Host-careflow_session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert flag in header
    assert "Domain=" not in header


def test_insecure_cookies_for_local_http(cf, monkeypatch):
    """CAREFLOW_INSECURE_COOKIES=1 (the run command on http://127.0.0.1) drops Secure only."""
    monkeypatch.setenv("CAREFLOW_INSECURE_COOKIES", "1")
    add_users(cf)
    client = make_app(cf).test_client()
    r = AuthActions(client).login("ann")
    header = r.headers["Set-Cookie"]
    assert header.startswith("careflow_session=") and "Secure" not in header and "HttpOnly" in header


def test_csrf_required_on_every_post(client, login, cf):
    """Missing or foreign CSRF tokens are refused with 400 (nothing changes)."""
    task = start_simple(cf)
    r = client.post("/login", data={"username": "ann", "password": PASSWORD})
    assert r.status_code == 400
    login.login("ann")
    for data in ({}, {"csrf_token": "forged"}):
        r = client.post(f"/tasks/{task['id']}/claim", data=data)
        assert r.status_code == 400
        assert "表单已过期" in r.get_data(as_text=True)
    assert cf.task(task["id"])["assignee"] is None
    r = client.post("/logout")
    assert r.status_code == 400


def test_no_state_change_over_get(client, login, cf):
    """Claiming, releasing, completing and signing out only accept POST."""
    task = start_simple(cf)
    login.login("ann")
    for path in (f"/tasks/{task['id']}/claim", f"/tasks/{task['id']}/release", f"/tasks/{task['id']}/reassign",
                 "/logout", "/language"):
        r = client.get(path)
        assert r.status_code == 405, path
        assert "POST" in r.headers["Allow"]
    assert cf.task(task["id"])["assignee"] is None


def test_security_headers(client, login):
    """CSP without inline scripts, nosniff, no framing, referrer policy, no caching of pages."""
    for r in (client.get("/login"), client.get("/static/css/app.css")):
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Referrer-Policy"] == "same-origin"
    assert client.get("/login").headers["Cache-Control"] == "no-store"
    assert "<script>" not in client.get("/login").get_data(as_text=True)


def test_sign_in_rate_limit(app, client, login):
    """5 failures per username and address within 15 minutes → 429, even with the right password;
    another user from the same address may still sign in."""
    for _ in range(5):
        assert login.login("ann", "bad").status_code == 401
    r = login.login("ann")
    assert r.status_code == 429
    assert "登录失败次数过多" in r.get_data(as_text=True)
    assert int(r.headers["Retry-After"]) == 900
    assert client.get("/tasks").status_code == 302
    assert login.login("cara").status_code == 302


def test_rate_limit_window_and_reset(settings):
    """Failures older than the window no longer count; a success clears them."""
    clock = FrozenClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    cf = Careflow(settings, clock=clock)
    try:
        add_users(cf)
        client = make_app(cf).test_client()
        auth = AuthActions(client)
        for _ in range(5):
            auth.login("ann", "bad")
        assert auth.login("ann").status_code == 429
        clock.advance(timedelta(minutes=16))
        assert auth.login("ann").status_code == 302
        assert accounts.recent_failures(cf, "ann|127.0.0.1", "127.0.0.1", timedelta(hours=1)) == (0, 0)
    finally:
        cf.close()


def test_idle_and_absolute_timeouts(settings):
    """30 minutes idle or 12 hours in all end the session (with a message), configurable."""
    clock = FrozenClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    cf = Careflow(settings, clock=clock)
    try:
        add_users(cf)
        client = make_app(cf).test_client()
        auth = AuthActions(client)
        auth.login("ann")
        clock.advance(timedelta(minutes=29))
        assert client.get("/tasks").status_code == 200
        clock.advance(timedelta(minutes=29))
        assert client.get("/tasks").status_code == 200  # activity keeps it alive
        clock.advance(timedelta(minutes=31))
        r = client.get("/tasks")
        assert r.status_code == 302 and "/login" in r.headers["Location"]
        assert "会话已过期" in client.get(r.headers["Location"]).get_data(as_text=True)

        auth.login("ann")
        for _ in range(25):  # active every 29 minutes for 12 h 05 min
            clock.advance(timedelta(minutes=29))
            if client.get("/tasks").status_code != 200:
                break
        assert clock.now() - datetime(2026, 3, 2, 9, 0, tzinfo=UTC) > timedelta(hours=12)
        assert client.get("/tasks").status_code == 302
    finally:
        cf.close()


@pytest.mark.parametrize("target,expected", [("/tasks?view=mine", "/tasks?view=mine"),
                                             ("//evil.example/x", "/tasks"),
                                             ("https://evil.example/", "/tasks"),
                                             ("/\\evil.example", "/tasks")])
def test_next_is_never_an_open_redirect(client, login, target, expected):
    """After sign-in only paths on this site are followed."""
    r = login.login("ann", next=target)
    assert r.status_code == 302 and r.headers["Location"] == expected


def test_inactive_user_cannot_sign_in_and_is_signed_out(app, client, login, cf):
    """Deactivation ends existing sessions and blocks new ones."""
    login.login("ann")
    assert client.get("/tasks").status_code == 200
    accounts.set_active(cf, "ann", False, actor="root")
    assert client.get("/tasks").status_code == 302
    assert login.login("ann").status_code == 401
