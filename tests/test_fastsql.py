"""Prepared statements read and write exactly what ``Connection.execute`` does, on both backends."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, insert, select, update

from engine.fastsql import Prepared
from engine.models import HumanTask, OutboxMessage, ProcessVersion, Timer

NOW = datetime(2026, 11, 23, 8, 30, 15, 123456, tzinfo=UTC)


def _version(conn) -> int:
    return conn.execute(insert(ProcessVersion.__table__).values(
        process_id="p", process_name="P", version=1, checksum="c", bpmn_files={}, forms={}, form_checksums={},
        warnings=[], called_only=False, created_at=NOW)).inserted_primary_key[0]


def _instance(conn, version_id: int) -> int:
    from engine.models import Instance

    return conn.execute(insert(Instance.__table__).values(
        process_version_id=version_id, process_id="p", status="running", revision=0, state="{}",
        serializer_version="1", created_at=NOW, updated_at=NOW)).inserted_primary_key[0]


def _task(instance_id: int, version_id: int, n: int, **extra) -> dict:
    row = dict(id=f"t{n}", instance_id=instance_id, process_id="p", process_version_id=version_id, name=f"ut_{n}",
               title="处理 / Handle", lane="customer_service", group_name="customer_service", assignee=None,
               form_name=None, form_checksum=None, instructions=None, status="ready", created_at=NOW,
               due_at=NOW + timedelta(hours=n), completed_at=None, completed_by=None, priority=None,
               customer_id=None, customer_name=None)
    row.update(extra)
    return row


def test_rows_written_and_read_match_sqlalchemy(cf):
    table = HumanTask.__table__
    with cf.db.begin() as conn:
        version_id = _version(conn)
        instance_id = _instance(conn, version_id)
        Prepared(insert(table)).run_many(conn, [_task(instance_id, version_id, 1), _task(instance_id, version_id, 2)])
        conn.execute(insert(table), [_task(instance_id, version_id, 3)])

        query = (select(table.c.id, table.c.title, table.c.due_at, table.c.completed_at)
                 .where(table.c.instance_id == bindparam("i"), table.c.status == "ready").order_by(table.c.id))
        fast = Prepared(query).all(conn, {"i": instance_id})
        slow = conn.execute(query, {"i": instance_id}).all()
        assert [tuple(r) for r in fast] == [tuple(r) for r in slow]
        assert fast[0].due_at == NOW + timedelta(hours=1) and fast[0].due_at.tzinfo is not None
        assert fast[2]._asdict() == slow[2]._asdict()

        close = Prepared(update(table).where(table.c.id == bindparam("b_id"))
                         .values(status=bindparam("status"), completed_at=bindparam("at")))
        assert close.run(conn, {"b_id": "t1", "status": "completed", "at": NOW}) == 1
        assert close.run(conn, {"b_id": "nope", "status": "completed", "at": NOW}) == 0
        assert [r.id for r in Prepared(query).all(conn, {"i": instance_id})] == ["t2", "t3"]
        done = conn.execute(select(table.c.completed_at).where(table.c.id == "t1")).scalar_one()
        assert done == NOW


def test_json_and_defaults_of_the_statement(cf):
    outbox = OutboxMessage.__table__
    with cf.db.begin() as conn:
        payload = {"名字": "王磊", "n": [1, 2.5, None], "ok": True}
        Prepared(insert(outbox)).run_many(conn, [dict(
            idempotency_key="k1", instance_id=None, topic="t", channel=None, recipient="customer", payload=payload,
            status="pending", attempts=0, next_attempt_at=NOW, last_error=None, created_at=NOW, delivered_at=None)])
        query = select(outbox.c.payload, outbox.c.next_attempt_at).where(outbox.c.status == "pending")
        [row] = Prepared(query).all(conn)
        assert row.payload == payload and row.next_attempt_at == NOW
        assert tuple(row) == tuple(conn.execute(query).one())


def test_statements_that_need_sqlalchemy_are_refused(cf):
    timers = Timer.__table__
    with cf.db.begin() as conn, pytest.raises(ValueError, match="expanding"):
        Prepared(select(timers.c.id).where(timers.c.id.in_(bindparam("ids", expanding=True)))).all(
            conn, {"ids": [1, 2]})
