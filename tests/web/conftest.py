"""Fixtures of the web tests, in the Flask-tutorial style: ``app`` (the application on the
test database with users of every role and ``tests/fixtures/simple.bpmn`` deployed),
``client`` (its test client) and ``login`` (sign in/out and CSRF-protected posts).
Users and helpers: ``webtools.py``.
"""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from engine import accounts

from webtools import FIXTURES, AuthActions, add_users, make_app


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
