"""Ticket numbers: SN + Asia/Shanghai date + daily serial, unique under concurrent intakes;
and the ticket tables as migrated match the ORM models."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from engine.models import Base
from engine.tickets import Ticket, TicketSerial, format_number, local_day

from ticket_helpers import CS, T0, Flow, intake, sh, ticket_engine

TABLES = {"tickets", "ticket_events", "ticket_serials"}


@pytest.fixture
def tcf(settings):
    """``(engine, clock)`` with the after-sales process deployed (see ``ticket_helpers.ticket_engine``)."""
    yield from ticket_engine(settings)


def open_ticket(f: Flow) -> str:
    """Start an instance and complete its intake (received a minute ago); the ticket number."""
    f.start()
    f.do("ut_intake", CS, intake(f.now() - timedelta(minutes=1)), "zhang.wei")
    return f.ticket().number


def test_numbers_are_unique_and_consecutive_under_concurrent_intake(tcf):
    cf, clock = tcf
    flows = [Flow(cf, clock).start() for _ in range(20)]
    tasks = [f.task("ut_intake")["id"] for f in flows]
    barrier = threading.Barrier(len(tasks))
    errors: list[BaseException] = []

    def intake_one(task_id: str) -> None:
        try:
            barrier.wait(timeout=30)
            cf.complete(task_id, intake(T0 - timedelta(minutes=30)), user="zhang.wei")
        except BaseException as err:  # reported below with the others
            errors.append(err)

    threads = [threading.Thread(target=intake_one, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with cf.Session() as s:
        rows = s.scalars(select(Ticket)).all()
        serial = s.get(TicketSerial, "20261123")
    assert sorted(r.number for r in rows) == [f"SN20261123{i:03d}" for i in range(1, 21)]
    assert sorted(r.instance_id for r in rows) == sorted(f.instance_id for f in flows)
    assert serial.last == 20
    for f in flows:  # every instance carries the number of its own ticket
        assert f.data()["ticket"]["number"] == f.ticket().number


def test_daily_serial_follows_the_shanghai_date(tcf):
    cf, clock = tcf
    clock.set(sh(2026, 11, 23, 23, 59))
    assert open_ticket(Flow(cf, clock)) == "SN20261123001"
    clock.set(sh(2026, 11, 24, 0, 1))  # 16:01 UTC on the 23rd: already the 24th in Beijing
    assert open_ticket(Flow(cf, clock)) == "SN20261124001"
    clock.set(sh(2026, 11, 24, 7, 59))  # 23:59 UTC on the 23rd
    assert open_ticket(Flow(cf, clock)) == "SN20261124002"
    with cf.Session() as s:
        assert {r.day: r.last for r in s.scalars(select(TicketSerial))} == {"20261123": 1, "20261124": 2}


def test_the_thousandth_ticket_of_a_day_widens_the_serial(tcf):
    cf, clock = tcf
    with cf.Session() as s, s.begin():
        s.add(TicketSerial(day="20261123", last=998))
    assert open_ticket(Flow(cf, clock)) == "SN20261123999"
    assert open_ticket(Flow(cf, clock)) == "SN202611231000"
    assert format_number("20240315", 1) == "SN20240315001" and local_day(sh(2024, 3, 15, 0, 30)) == "20240315"


def test_migrated_ticket_tables_match_the_models(db_url):
    from engine.db import make_engine

    eng = make_engine(db_url)
    try:
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(ctx, Base.metadata)
    finally:
        eng.dispose()

    def table_of(diff) -> str | None:
        item = diff[0] if isinstance(diff, list) else diff
        for part in item[1:]:
            name = getattr(part, "name", None) if not isinstance(part, str) else None
            table = getattr(part, "table", None)
            if table is not None and getattr(table, "name", None):
                return table.name
            if name in TABLES:
                return name
            if isinstance(part, str) and part in TABLES:
                return part
        return None

    mine = [d for d in diffs if table_of(d) in TABLES]
    assert mine == []
