"""The ticket host functions write with Core statements on the caller's session: ORM objects the
same session holds stay true to the rows, pending ORM changes are written first, and the
ticket the functions return is the stored row's ``ticket_view``."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from engine.sla import SlaClockRow
from engine.tickets import Ticket, TicketEvent, register_ticket_in, ticket_view, update_ticket_in

from ticket_helpers import T0, intake, utc


def _register(cf, s, **over) -> dict:
    return register_ticket_in(s, intake(T0 - timedelta(minutes=5), **over), pm=cf.pm, now=T0, actor="zhang.wei")


def _stored_view(cf, number: str) -> dict:
    with cf.Session() as s:
        return ticket_view(s.scalar(select(Ticket).where(Ticket.number == number)))


def test_returned_views_are_the_stored_rows_views(cf):
    with cf.Session() as s, s.begin():
        opened = _register(cf, s)
    number = opened["number"]
    assert opened == _stored_view(cf, number)
    steps = [dict(status="diagnosing", round=1),
             dict(status="remote", round=1, first_response_at=(T0 + timedelta(minutes=20)).isoformat()),
             dict(status="resolved", round=1, resolved_by="remote", spare_parts=[]),
             dict(status="reopened", round=1, reason="又坏了 / broke again"),
             dict(status="diagnosing", round=2),
             dict(status="closed", satisfaction={"overall": {"score": 2}})]
    for i, facts in enumerate(steps, start=1):
        with cf.Session() as s, s.begin():
            view = update_ticket_in(s, number, pm=cf.pm, now=T0 + timedelta(hours=i), actor="li.lei", **facts)
        assert view == _stored_view(cf, number), facts
    assert view["round"] == 2 and view["reopen_count"] == 1 and view["status"] == "closed"


def test_orm_objects_in_the_session_see_what_the_host_functions_wrote(cf):
    responded = T0 + timedelta(minutes=20)
    with cf.Session() as s, s.begin():
        number = _register(cf, s)["number"]
        ticket = s.scalar(select(Ticket).where(Ticket.number == number))
        clocks = {c.name: c for c in s.scalars(select(SlaClockRow).where(SlaClockRow.subject_key == number))}
        assert ticket.status == "open" and clocks["first_response"].status == "running"
        update_ticket_in(s, number, pm=cf.pm, now=T0 + timedelta(minutes=30), actor="li.lei", status="remote",
                         round=1, first_response_at=responded.isoformat(), fault_category="hardware")
        # the objects loaded before the update read the rows as the update left them
        assert (ticket.status, ticket.engineer, ticket.fault_category) == ("remote", "li.lei", "hardware")
        assert ticket.first_response_at == utc(responded)
        assert clocks["first_response"].status == "met" and clocks["first_response"].stopped_at == utc(responded)
        assert {c.owner for c in clocks.values()} == {"li.lei"}
        assert clocks["solution"].status == "running"
        ticket.symptom = "changed by ORM after the update"  # a later ORM change keeps the update's values
    with cf.Session() as s:
        row = s.scalar(select(Ticket).where(Ticket.number == number))
        assert (row.status, row.engineer, row.symptom) == ("remote", "li.lei", "changed by ORM after the update")
        assert [e.status for e in s.scalars(select(TicketEvent).where(TicketEvent.number == number)
                                            .order_by(TicketEvent.id))] == ["open", "remote"]


def test_pending_orm_changes_are_written_before_the_host_functions_read(cf):
    with cf.Session() as s, s.begin():
        number = _register(cf, s)["number"]
    with cf.Session() as s, s.begin():
        ticket = s.scalar(select(Ticket).where(Ticket.number == number))
        ticket.facts = {**ticket.facts, "note": "kept"}  # not flushed yet
        ticket.engineer = "wang.fang"
        update_ticket_in(s, number, pm=cf.pm, now=T0 + timedelta(minutes=30), actor="li.lei", status="diagnosing",
                         round=1, channel_note="回电 / called back")
        assert ticket.facts == {"note": "kept", "channel_note": "回电 / called back"}
        assert (ticket.engineer, ticket.status) == ("wang.fang", "diagnosing")
    with cf.Session() as s:
        row = s.scalar(select(Ticket).where(Ticket.number == number))
        assert row.facts == {"note": "kept", "channel_note": "回电 / called back"}
        assert (row.engineer, row.status) == ("wang.fang", "diagnosing")


def test_a_registered_ticket_without_a_survey_stores_sql_null(cf):
    with cf.Session() as s, s.begin():
        number = _register(cf, s)["number"]
    with cf.Session() as s:
        assert s.scalar(select(Ticket.satisfaction.is_(None)).where(Ticket.number == number))
