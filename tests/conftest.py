"""Shared fixtures.

``cf``: a Careflow engine on a fresh database. Tests using it run on SQLite always and
also on PostgreSQL when ``CAREFLOW_TEST_POSTGRES_URL`` points at a server (the test
command starts one; CI requires it). ``runner``: invokes the CLI against the same database.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from engine.config import Settings, normalize_database_url
from engine.db import make_engine, upgrade_database
from engine.runtime import Careflow

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
PG_URL = os.environ.get("CAREFLOW_TEST_POSTGRES_URL")

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite database, copied for each test (migrations run once)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_database(f"sqlite:///{path}")  # its last connection closing checkpoints the WAL
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


@pytest.fixture(scope="session")
def pg_migrated() -> str | None:
    """The PostgreSQL test database, migrated once per session (None when not configured)."""
    if not PG_URL:
        return None
    url = _worker_database(normalize_database_url(PG_URL))
    eng = make_engine(url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        c.execute(text("CREATE SCHEMA public"))
    eng.dispose()
    upgrade_database(url)
    return url


def _worker_database(url: str) -> str:
    """Each pytest-xdist worker gets its own database next to the configured one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{worker}"
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if not c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def _reset_pg(url: str) -> None:
    eng = make_engine(url)
    with eng.begin() as c:
        names = ", ".join(c.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )).scalars())
        # the audit tables refuse TRUNCATE by trigger (migration 0007): lift that for the reset only
        guarded = list(c.execute(text("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger "
                                      "WHERE NOT tgisinternal")).scalars())
        for table in guarded:
            c.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        c.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        c.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)"), {"h": "0" * 64})
        for table in guarded:
            c.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
    eng.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path, sqlite_template, pg_migrated) -> str:
    """A fresh, migrated database URL on each backend."""
    if request.param == "postgres":
        if not pg_migrated:
            pytest.skip("PostgreSQL not configured (set CAREFLOW_TEST_POSTGRES_URL)")
        _reset_pg(pg_migrated)
        return pg_migrated
    path = tmp_path / "careflow.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    """Settings for a test deployment."""
    return Settings(database_url=db_url, home=tmp_path)


@pytest.fixture
def cf(settings):
    """A Careflow engine on a fresh database."""
    engine = Careflow(settings)
    yield engine
    engine.close()


@pytest.fixture
def runner(settings, monkeypatch) -> CliRunner:
    """A CLI runner whose commands use the test database."""
    monkeypatch.setenv("CAREFLOW_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CAREFLOW_HOME", str(settings.home))
    return CliRunner()
