"""Helpers of the web tests (users, sign-in through the real forms, starting processes, the app on a
real HTTP server and the headless Chromium of the browser tests)."""

from __future__ import annotations

import re
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookiejar import CookieJar
from pathlib import Path

from werkzeug.serving import make_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
# This folder is also called "web": make sure ``import web`` finds the application package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import accounts  # noqa: E402
from web import create_app  # noqa: E402

PASSWORD = "correct horse 1"

CHROMIUM = "/usr/bin/chromium"  # Debian's package; scripts/test.sh installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = ROOT / "test-output"  # screenshots of the browser tests

USERS = [
    # username, role, groups, supervisor
    ("sam", "supervisor", ["customer_service", "supervisor"], None),
    ("tess", "supervisor", ["technical_support", "supervisor"], None),
    ("ann", "agent", ["customer_service"], "sam"),
    ("cara", "agent", ["customer_service"], "sam"),
    ("tom", "agent", ["technical_support"], "tess"),
    ("olga", "process_owner", [], None),
    ("aud", "auditor", [], None),
    ("root", "admin", [], None),
]
ROLE_USER = {"agent": "ann", "supervisor": "sam", "process_owner": "olga", "auditor": "aud", "admin": "root"}


def make_app(cf, **config):
    """The web app on ``cf`` with test settings."""
    return create_app({"TESTING": True, "CAREFLOW_ENGINE": cf, "SECRET_KEY": "test-secret",
                       "CAREFLOW_NODE_MODULES": str(ROOT / "node_modules"), **config})


def add_users(cf) -> None:
    """Create the test users."""
    for name, role, groups, sup in USERS:
        accounts.add_user(cf, name, role=role, password=PASSWORD, groups=groups, supervisor=sup,
                          display_name=name.title())


_TOKEN = re.compile(r'name="csrf-token" content="([^"]+)"')


class AuthActions:
    """Sign in and out through the real forms; post with the session's CSRF token."""

    def __init__(self, client):
        self._client = client
        self._token: str | None = None

    def token(self) -> str:
        """The CSRF token of the current session (read from a page)."""
        if self._token is None:
            page = self._client.get("/login")
            if page.status_code == 302:
                page = self._client.get("/tasks")
            self._token = _TOKEN.search(page.get_data(as_text=True)).group(1)
        return self._token

    def login(self, username: str = "ann", password: str = PASSWORD, **kwargs):
        """Post the sign-in form."""
        self._token = None
        response = self._client.post("/login", data={"username": username, "password": password,
                                                     "csrf_token": self.token(), **kwargs})
        self._token = None  # the session was rotated
        return response

    def logout(self):
        """Post the sign-out form."""
        response = self._client.post("/logout", data={"csrf_token": self.token()})
        self._token = None
        return response

    def post(self, url: str, data: dict | None = None, **kwargs):
        """POST with the CSRF token added."""
        return self._client.post(url, data={"csrf_token": self.token(), **(data or {})}, **kwargs)


def start_simple(cf, **data) -> dict:
    """Start the simple review process; returns its intake task (customer_service, unassigned)."""
    result = cf.start("simple_review", {"customer": "ACME", **data}, actor="test")
    task = dict(result.ready_tasks[0])
    task["instance_id"] = result.instance_id
    return task


class LiveServer(str):
    """The base URL of the app on a real HTTP server, with a helper to sign in over HTTP."""

    def session(self, user: str) -> tuple[str, str, str]:
        """Sign in through the real form; returns (base url, Cookie header, CSRF token)."""
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(self + "/login").read().decode("utf-8")
        token = _TOKEN.search(page).group(1)
        form = urllib.parse.urlencode({"username": user, "password": PASSWORD, "csrf_token": token}).encode()
        page = opener.open(self + "/login", data=form).read().decode("utf-8")
        token = _TOKEN.search(page).group(1)
        return str(self), "; ".join(f"{c.name}={c.value}" for c in jar), token


@contextmanager
def serve(app) -> Iterator[LiveServer]:
    """Serve ``app`` on a real HTTP server (127.0.0.1, a free port), errors handled as in production.
    Create the app with ``CAREFLOW_INSECURE_COOKIES=1`` set: the server speaks plain http."""
    app.config["TESTING"] = False
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(5)


def sign_in(page, base: str, user: str) -> None:
    """Sign in through the real form in a browser page and wait for the inbox."""
    page.goto(base + "/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("button.primary[type=submit]")
    page.wait_for_url(re.compile(r".*/tasks$"))


def screenshot(page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot to ``test-output/name`` and check it is not empty."""
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 20_000, f"{path} looks empty"
    return path
