"""Step sessions (``engine.step_sessions``): kept per thread on SQLite, from the pool otherwise."""

from __future__ import annotations

import gc
import shutil
import threading

import pytest
from sqlalchemy import text

from engine.config import Settings
from engine.models import Incident
from engine.runtime import Careflow


@pytest.fixture
def lite(tmp_path, sqlite_template):
    """An engine on a fresh SQLite database (kept sessions are SQLite's)."""
    shutil.copy(sqlite_template, tmp_path / "careflow.db")
    engine = Careflow(Settings(database_url=f"sqlite:///{tmp_path / 'careflow.db'}", home=tmp_path))
    yield engine
    engine.close()


def test_sqlite_steps_of_a_thread_share_one_connection_and_forget_their_objects(lite):
    with lite.step_session() as first, first.begin():
        conn = first.connection().connection.driver_connection
        first.add(Incident(kind="test", source="test", message="kept", created_at=lite.now()))
    with lite.step_session() as second, second.begin():
        assert second is first
        assert second.connection().connection.driver_connection is conn
        assert not list(second.identity_map.values())  # the first step's incident is forgotten
        assert second.execute(text("SELECT count(*) FROM incidents")).scalar() == 1
        # a step inside a step (same thread) gets a session of its own from the pool
        with lite.step_session() as inner:
            assert inner is not second


def test_a_failed_step_rolls_back_and_the_next_one_runs(lite):
    with pytest.raises(RuntimeError), lite.step_session() as s, s.begin():
        s.execute(text("CREATE TABLE scratch (x INTEGER)"))
        raise RuntimeError("boom")
    with lite.step_session() as s, s.begin():
        assert s.execute(text("SELECT count(*) FROM sqlite_master WHERE name = 'scratch'")).scalar() == 0


def test_a_step_that_leaves_its_transaction_open_loses_its_connection(lite):
    with lite.step_session() as s:
        s.begin()
        s.execute(text("SELECT 1"))
    with lite.step_session() as again, again.begin():
        assert again is not s
        assert again.execute(text("SELECT 1")).scalar() == 1


def test_a_thread_that_ends_gives_its_connection_back(lite):
    seen = []

    def work():
        with lite.step_session() as s, s.begin():
            seen.append(s)
            s.execute(text("SELECT 1"))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    held = lite.step_session._held
    assert seen and any(h.session is seen[0] for h in held)
    del t
    gc.collect()
    assert not any(h.session is seen[0] for h in held)
    assert seen[0].bind.closed


def test_close_closes_the_kept_connections_and_later_steps_use_the_pool(cf, db_url):
    with cf.step_session() as s, s.begin():
        s.execute(text("SELECT 1"))
    kept = list(cf.step_session._held)
    cf.step_session.close()
    assert all(h.connection.closed for h in kept)
    with cf.step_session() as later, later.begin():
        assert later is not s and later.execute(text("SELECT 1")).scalar() == 1
    if db_url.startswith("postgresql"):
        assert not kept  # PostgreSQL steps always take their connection from the pool


def test_kept_connections_leave_the_shared_pool_alone(lite):
    n = 20  # more than the pool's 5 + 10 overflow
    barrier = threading.Barrier(n + 1)
    done = threading.Event()
    errors = []

    def hold():
        try:
            with lite.step_session() as s:
                s.execute(text("SELECT 1"))  # (a read: the writers' lock stays free)
                s.rollback()
                barrier.wait(timeout=10)
                done.wait(timeout=10)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for t in threads:
        t.start()
    barrier.wait(timeout=10)
    try:
        with lite.ReadSession() as s:  # the shared pool still has connections to give
            assert s.execute(text("SELECT 1")).scalar() == 1
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors
