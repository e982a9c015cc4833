"""Helpers shared by the bench scripts: timing, a throwaway engine, planner statistics and a
signed-in web client. Import it after the script has put the project root first on ``sys.path``."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engine import accounts
from engine.config import Settings, normalize_database_url
from engine.runtime import Careflow


def timed(fn: Callable[[], object], runs: int = 15) -> float:
    """Median milliseconds of ``fn()`` (after one warm-up call)."""
    fn()  # warm up caches
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def temp_engine(database_url: str | None) -> tuple[Careflow, tempfile.TemporaryDirectory]:
    """An initialised engine on ``database_url``, else on SQLite in a temporary folder (also its home).
    The caller closes the engine and cleans the folder up."""
    tmp = tempfile.TemporaryDirectory()
    url = normalize_database_url(database_url) if database_url else f"sqlite:///{tmp.name}/bench.db"
    cf = Careflow(Settings(database_url=url, home=Path(tmp.name)))
    cf.init_db()
    return cf, tmp


def analyze(cf: Careflow, table: str | None = None) -> None:
    """Refresh the planner's statistics after bulk inserts (all tables on SQLite; ``table`` or all on PostgreSQL)."""
    if cf.db.dialect.name == "sqlite":
        with cf.db.connect() as c:
            c.exec_driver_sql("ANALYZE")
    else:
        with cf.db.begin() as c:
            c.exec_driver_sql(f"ANALYZE {table}" if table else "ANALYZE")


def signed_in_client(cf: Careflow, username: str):
    """A Flask test client of the web app on ``cf``, signed in as ``username`` (an existing user)."""
    from web import create_app

    app = create_app({"CAREFLOW_ENGINE": cf, "SECRET_KEY": "bench", "TESTING": True})
    sid = accounts.open_session(cf, username, "127.0.0.1")
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["sid"] = sid
    return client
