"""Fixtures of the web tests, in the Flask-tutorial style: ``app`` (the application on the
test database with users of every role and ``tests/fixtures/simple.bpmn`` deployed),
``client`` (its test client) and ``login`` (sign in/out and CSRF-protected posts); for the
browser tests ``live_server`` (that app on a real HTTP server) and ``browser`` (headless Chromium).
Users and helpers: ``webtools.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from engine import accounts

from webtools import CHROMIUM, CHROMIUM_ARGS, FIXTURES, AuthActions, add_users, make_app, serve


@pytest.fixture(autouse=True)
def _quick_argon2(monkeypatch):
    """Real argon2id with small cost parameters: the tests hash dozens of passwords."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def app(cf):
    """The web app on the test engine, with the users and the simple review process."""
    add_users(cf)
    cf.deploy([FIXTURES / "simple.bpmn"], author="test")
    yield make_app(cf)


@pytest.fixture
def client(app):
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def login(client) -> AuthActions:
    """Sign-in helper bound to ``client``."""
    return AuthActions(client)


@pytest.fixture
def live_server(cf, monkeypatch):
    """The app of ``app`` on a real HTTP server (127.0.0.1, a free port, plain http like the run
    command): a ``webtools.LiveServer``, the base URL."""
    monkeypatch.setenv("CAREFLOW_INSECURE_COOKIES", "1")
    add_users(cf)
    cf.deploy([FIXTURES / "simple.bpmn"], author="test")
    with serve(make_app(cf)) as base:
        yield base


@pytest.fixture
def browser():
    """Headless Chromium (the Debian package the test command installs)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
