"""Database engine and sessions: SQLite (WAL, synchronous=FULL) or PostgreSQL.

One step of a workflow is one transaction. On SQLite a step transaction starts with
``BEGIN IMMEDIATE`` so that two writers never both read and then both try to write
(SQLite would refuse the second with SQLITE_BUSY_SNAPSHOT mid-step); on PostgreSQL
the instance row is locked with ``SELECT ... FOR UPDATE`` inside the step.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
READ_ONLY_OPTION = "careflow_read_only"

# JSON columns as compact UTF-8 text: Chinese form data written as ASCII escapes (six bytes
# per character instead of three) would double what every step writes and fsyncs at commit.
_json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def is_sqlite(engine: Engine) -> bool:
    """True when the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, echo: bool = False, **kwargs) -> Engine:
    """Create a SQLAlchemy engine with Careflow's durability settings applied."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=_json_text, **kwargs)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, json_serializer=_json_text, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001 - DBAPI objects
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Read-only sessions (see make_read_session_factory) read a WAL snapshot without locking;
        # everything else takes the write lock up front. Sent to the driver directly: every step
        # begins, and a statement through SQLAlchemy costs several times what the BEGIN does.
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION)
        conn.connection.driver_connection.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reading only: on SQLite they neither wait for nor block the writer."""
    return sessionmaker(bind=engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False)


def alembic_config(url: str):
    """An Alembic configuration pointing at Careflow's migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str) -> None:
    """Apply every Alembic migration (all heads) to the database at ``url``."""
    from alembic import command

    command.upgrade(alembic_config(url), "heads")
