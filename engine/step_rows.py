"""The rows a step reads and writes, as prebuilt statements on the step's connection.

A step runs a dozen statements or more. Through the ORM each one costs 70–100 µs (a
select rebuilt per call, the unit of work, the identity map); a prebuilt Core statement
costs about 10 µs through ``Connection.execute`` and a few µs as ``engine.fastsql.Prepared``.
The step path of ``engine.runtime`` therefore reads and writes its own tables (instances,
human tasks, timers, outbox) here; everything off the step path keeps using the ORM
models, which map the very same tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal_column, select, update

from engine.fastsql import Prepared
from engine.models import HumanTask, Instance, InstanceStatePart, OutboxMessage, ProcessVersion, Timer

_instances = Instance.__table__
_tasks = HumanTask.__table__
_timers = Timer.__table__
_outbox = OutboxMessage.__table__
_versions = ProcessVersion.__table__
_parts = InstanceStatePart.__table__


@dataclass(slots=True)
class InstanceRow:
    """The side columns of an instance a step needs (the state only when it must be restored)."""

    id: int
    process_version_id: int
    process_id: str
    status: str
    revision: int
    business_key: str | None
    next_timer_due: datetime | None
    state: str | None = None


# ----------------------------------------------------------------------------- instances

_INSTANCE_COLUMNS = (_instances.c.id, _instances.c.process_version_id, _instances.c.process_id,
                     _instances.c.status, _instances.c.revision, _instances.c.business_key,
                     _instances.c.next_timer_due)
_select_instance = select(*_INSTANCE_COLUMNS).where(_instances.c.id == bindparam("instance_id"))
_SELECT_INSTANCE = Prepared(_select_instance)
_SELECT_INSTANCE_FOR_UPDATE = Prepared(_select_instance.with_for_update())
_SELECT_STATE = Prepared(select(_instances.c.state).where(_instances.c.id == bindparam("instance_id")))
_INSERT_INSTANCE = Prepared(insert(_instances).returning(_instances.c.id))
# the SET list is the keys given (one compiled plan per key set)
_UPDATE_INSTANCE = Prepared(
    update(_instances).where(_instances.c.id == bindparam("b_id"), _instances.c.revision == bindparam("b_revision")))
_SELECT_LATEST_VERSION = Prepared(select(_versions.c.id, _versions.c.process_id, _versions.c.version)
                                  .where(_versions.c.process_id == bindparam("process_id"))
                                  .order_by(_versions.c.version.desc()).limit(1))
_SELECT_VERSION = Prepared(select(_versions.c.id, _versions.c.process_id, _versions.c.version).where(
    _versions.c.process_id == bindparam("process_id"), _versions.c.version == bindparam("version")))


def lock_instance(conn: Connection, instance_id: int) -> InstanceRow | None:
    """The instance's side columns, its row locked for the step on PostgreSQL (``FOR UPDATE``).

    On SQLite the step's ``BEGIN IMMEDIATE`` already made this transaction the only writer.
    """
    stmt = _SELECT_INSTANCE_FOR_UPDATE if conn.dialect.name == "postgresql" else _SELECT_INSTANCE
    row = stmt.first(conn, {"instance_id": instance_id})
    return None if row is None else InstanceRow(*row)


def instance_state(conn: Connection, instance_id: int) -> str | None:
    """The stored workflow state of an instance (JSON), or None when there is no such instance."""
    row = _SELECT_STATE.first(conn, {"instance_id": instance_id})
    return None if row is None else row[0]


_INSERT_PART = Prepared(insert(_parts))


def insert_state_part(conn: Connection, instance_id: int, part: int, tasks: str) -> None:
    """Store a part of an instance's state (``engine.serialization.dump_state_parts``)."""
    _INSERT_PART.run(conn, {"instance_id": instance_id, "part": part, "tasks": tasks})


def state_parts(conn: Connection, instance_id: int, parts: list[int]) -> dict[int, str]:
    """The given parts of an instance's state: part number -> its text."""
    query = select(_parts.c.part, _parts.c.tasks).where(_parts.c.instance_id == instance_id,
                                                        _parts.c.part.in_(parts))
    return {part: tasks for part, tasks in conn.execute(query)}


def insert_instance(conn: Connection, values: dict[str, Any]) -> int:
    """Insert an instance row; returns its id."""
    (row,) = _INSERT_INSTANCE.all(conn, values)
    return row.id


def update_instance(conn: Connection, instance_id: int, expected_revision: int, values: dict[str, Any]) -> bool:
    """Write an instance's new state and side columns (the columns in ``values``) if its revision
    is still ``expected_revision``."""
    return _UPDATE_INSTANCE.run(conn, {**values, "b_id": instance_id, "b_revision": expected_revision}) == 1


def latest_version(conn: Connection, process_id: str, version: int | None = None):
    """``(id, process_id, version)`` of a process's newest (or given) version, or None."""
    if version is None:
        return _SELECT_LATEST_VERSION.first(conn, {"process_id": process_id})
    return _SELECT_VERSION.first(conn, {"process_id": process_id, "version": version})


# --------------------------------------------------------------------------- human tasks

_SELECT_TASK = Prepared(select(_tasks.c.id, _tasks.c.instance_id, _tasks.c.name, _tasks.c.title, _tasks.c.status,
                      _tasks.c.assignee, _tasks.c.form_name, _tasks.c.completed_at, _tasks.c.completed_by
                      ).where(_tasks.c.id == bindparam("task_id")))
_SELECT_READY_TASKS = Prepared(select(_tasks.c.id, _tasks.c.name, _tasks.c.title, _tasks.c.lane, _tasks.c.assignee,
                                      _tasks.c.due_at).where(_tasks.c.instance_id == bindparam("instance_id"),
                                                             _tasks.c.status == "ready"))
_CLOSE_TASK = Prepared(update(_tasks).where(_tasks.c.id == bindparam("b_id"))
                       .values(status=bindparam("status"), completed_at=bindparam("completed_at"),
                               completed_by=bindparam("completed_by")))
_INSERT_TASK = Prepared(insert(_tasks))


def task_row(conn: Connection, task_id: str):
    """A human task's row (id, instance_id, name, title, status, assignee, form_name, completed_at/_by), or None."""
    return _SELECT_TASK.first(conn, {"task_id": task_id})


def ready_tasks(conn: Connection, instance_id: int) -> list:
    """The instance's ready human-task rows (id, name, title, lane, assignee, due_at)."""
    return _SELECT_READY_TASKS.all(conn, {"instance_id": instance_id})


def close_tasks(conn: Connection, closed: list[dict[str, Any]]) -> None:
    """Mark tasks completed or cancelled: dicts of ``b_id``, ``status``, ``completed_at``, ``completed_by``."""
    if closed:
        _CLOSE_TASK.run_many(conn, closed)


def insert_tasks(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert new human-task rows (dicts with every column)."""
    if rows:
        _INSERT_TASK.run_many(conn, rows)


# -------------------------------------------------------------------------------- timers

# 'waiting' written out: compared with a bound value, the partial index on that condition makes
# SQLite prepare the statement again on every run
_SELECT_WAITING_TIMERS = Prepared(select(_timers.c.id, _timers.c.task_id, _timers.c.due_at).where(
    _timers.c.instance_id == bindparam("instance_id"), _timers.c.status == literal_column("'waiting'")))
_END_TIMER = Prepared(update(_timers).where(_timers.c.id == bindparam("b_id"))
                      .values(status=bindparam("status"), fired_at=bindparam("fired_at")))
_INSERT_TIMER = Prepared(insert(_timers))


def waiting_timers(conn: Connection, instance_id: int) -> list:
    """The instance's waiting timer rows (id, task_id, due_at)."""
    return _SELECT_WAITING_TIMERS.all(conn, {"instance_id": instance_id})


def end_timers(conn: Connection, ended: list[dict[str, Any]]) -> None:
    """Mark timers fired or cancelled: dicts of ``b_id``, ``status``, ``fired_at``."""
    if ended:
        _END_TIMER.run_many(conn, ended)


def insert_timers(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert waiting timer rows (dicts of instance_id, task_id, name, kind, due_at, status, fired_at)."""
    if rows:
        _INSERT_TIMER.run_many(conn, rows)


# -------------------------------------------------------------------------------- outbox

_INSERT_OUTBOX = Prepared(insert(_outbox))


def insert_outbox(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert outbox rows (dicts with every column the delivery worker reads)."""
    if rows:
        _INSERT_OUTBOX.run_many(conn, rows)
