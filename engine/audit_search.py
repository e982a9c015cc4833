"""The auditor-search copy of the audit trail: ``audit_search``, filled in batches.

Auditors filter the trail by user, process, version and action over a million rows and
more, so each of those has an index shaped ``(filter, at, seq)``. On ``audit_log`` itself
those four indexes cost every step a page write per distinct value it appends (a step's
rows carry half a dozen actions and two or three actors): about a quarter of the pages a
step commit writes and fsyncs. Here they sit on a copy of the searchable columns that is
filled once per ``BATCH`` audit rows, in the transaction of the step whose rows cross a
multiple of ``BATCH`` (so under the chain-head lock, in sequence order): a batch touches
each hot index page once.

Invariant: ``audit_search`` holds exactly the ``audit_log`` rows with ``seq <= watermark()``,
every one of them. A search reads the indexed rows up to the watermark it read first and
the few rows after it (at most about ``BATCH`` plus one step's) straight from ``audit_log``
(see ``engine.audit_query``): never a row missed or shown twice, whenever batches run.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from engine.models import AuditSearchEntry

BATCH = 512

_COLUMNS = "seq, at, actor, action, process_id, process_version_id"
_BACKLOG = f"SELECT {_COLUMNS} FROM audit_log WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM audit_search)"
# a row already copied by a concurrent catch-up (a rebuild, a migration) is skipped, not an error
_INSERT = {
    "sqlite": f"INSERT OR IGNORE INTO audit_search ({_COLUMNS}) {_BACKLOG}",
    "postgresql": f"INSERT INTO audit_search ({_COLUMNS}) {_BACKLOG} ON CONFLICT (seq) DO NOTHING",
}


def index_backlog(conn: Connection) -> int:
    """Copy every audit row after the watermark into ``audit_search``; returns how many."""
    sql = _INSERT.get(conn.dialect.name, f"INSERT INTO audit_search ({_COLUMNS}) {_BACKLOG}")
    return conn.exec_driver_sql(sql).rowcount


def after_append(conn: Connection, first_seq: int, last_seq: int) -> None:
    """Index the backlog when the rows ``first_seq..last_seq`` just appended cross a multiple of
    ``BATCH`` (called by ``engine.audit.append_events`` in the appending transaction)."""
    if (first_seq - 1) // BATCH != last_seq // BATCH:
        index_backlog(conn)


def watermark(conn: Connection) -> int:
    """The last sequence number copied into ``audit_search`` (0 when none)."""
    return conn.execute(select(func.coalesce(func.max(AuditSearchEntry.seq), 0))).scalar_one()
