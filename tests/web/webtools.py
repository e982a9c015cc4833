"""Helpers of the web tests (users, sign-in through the real forms, starting processes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
# This folder is also called "web": make sure ``import web`` finds the application package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import accounts  # noqa: E402
from web import create_app  # noqa: E402

PASSWORD = "correct horse 1"

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
