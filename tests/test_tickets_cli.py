"""``careflow tickets`` / ``careflow ticket NUMBER`` and the demo tickets (every stage, overdue
ones, idempotent), read from the ticket tables without deserializing any instance."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

import engine.runtime
import engine.serialization
from careflow.cli import cli
from careflow.demo import tickets as demo_tickets
from careflow.demo import workflows as demo_workflows
from engine.models import HumanTask, Instance
from engine.tickets import Ticket


@pytest.fixture
def seeded(cf):
    """The shipped workflows deployed (demo step 1) and the demo tickets seeded (real clock)."""
    lines: list[str] = []
    demo_workflows.seed(cf, lines.append)
    demo_tickets.seed(cf, lines.append)
    return cf, lines


def _no_deserializing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a ticket list must not deserialize instances")

    monkeypatch.setattr(engine.runtime, "load_state", refuse)
    monkeypatch.setattr(engine.serialization, "load_state", refuse)


def test_demo_tickets_cover_every_stage_and_are_idempotent(seeded):
    cf, lines = seeded
    assert any(line.startswith("Workflow after_sales_ticket") for line in lines)
    with cf.Session() as s:
        instances = s.scalar(select(func.count()).select_from(Instance)
                             .where(Instance.process_id == "after_sales_ticket"))
        tickets = s.scalars(select(Ticket)).all()
        ready = set(s.scalars(select(HumanTask.name).where(HumanTask.status == "ready",
                                                           HumanTask.process_id == "after_sales_ticket")))
    assert instances == len(demo_tickets.SCENARIOS)
    assert {"ut_intake", "ut_classify", "ut_diagnose", "ut_remote", "ut_onsite_schedule", "ut_onsite",
            "ut_revisit", "ut_supervisor_revisit", "ut_deadline_risk"} <= ready
    statuses = {t.status for t in tickets}
    assert {"diagnosing", "remote", "on_site", "revisit", "closed"} <= statuses
    assert any(t.reopen_count == 1 and t.round == 2 for t in tickets)
    assert any(t.type == "service_complaint" for t in tickets)
    closed = [t for t in tickets if t.status == "closed"]
    assert closed and all(t.satisfaction and t.overall_score for t in closed)
    assert any(t.spare_parts for t in closed)
    now = cf.now()
    overdue = [t for t in tickets if t.status != "closed" and t.solution_due < now]
    assert len(overdue) >= 2
    assert all(t.customer_name for t in tickets)

    again: list[str] = []
    demo_tickets.seed(cf, again.append)
    assert "none added" in again[0]
    with cf.Session() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == len(tickets)


def test_tickets_list_and_filter(seeded, runner, monkeypatch):
    cf, _ = seeded
    _no_deserializing(monkeypatch)
    r = runner.invoke(cli, ["tickets", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    with cf.Session() as s:
        assert len(rows) == s.scalar(select(func.count()).select_from(Ticket))
    assert [row["created_at"] for row in rows] == sorted((row["created_at"] for row in rows), reverse=True)
    first = rows[0]
    assert {"number", "instance_id", "status", "priority", "type", "customer", "first_response_due",
            "solution_due", "resolved_at", "satisfaction", "overdue"} <= set(first)
    assert "****" in (first["customer"]["phone"] or "****")  # personal data masked
    assert any(row["overdue"] for row in rows)

    r = runner.invoke(cli, ["tickets", "--status", "closed", "--json"])
    closed = json.loads(r.output)
    assert closed and {row["status"] for row in closed} == {"closed"}
    assert all(row["satisfaction"]["overall"]["score"] == row["overall_score"] for row in closed)

    r = runner.invoke(cli, ["tickets"])
    assert r.exit_code == 0 and "OVERDUE" in r.output and rows[0]["number"] in r.output

    r = runner.invoke(cli, ["tickets", "--status", "lost"])
    assert r.exit_code == 2 and "lost" in r.output


def test_one_ticket_with_deadlines_and_history(seeded, runner, monkeypatch):
    cf, _ = seeded
    _no_deserializing(monkeypatch)
    with cf.Session() as s:
        reopened = s.scalar(select(Ticket).where(Ticket.reopen_count == 1))
    r = runner.invoke(cli, ["ticket", reopened.number, "--json"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    assert (t["number"], t["instance_id"], t["round"], t["status"]) == (reopened.number, reopened.instance_id, 2,
                                                                        "diagnosing")
    assert [(d["round"], d["name"], d["status"]) for d in t["deadlines"]] == [
        (1, "first_response", "met"), (1, "solution", "met"), (2, "first_response", "running"),
        (2, "solution", "running")]
    assert t["deadlines"][3]["overdue"] is True and t["overdue"] is True
    assert [(h["status"], h["round"]) for h in t["history"]][-2:] == [("reopened", 1), ("diagnosing", 2)]
    assert t["history"][-2]["reason"] == "low_rating"

    r = runner.invoke(cli, ["ticket", reopened.number.lower()])
    assert r.exit_code == 0 and "round 2 solution" in r.output and "low_rating" in r.output

    r = runner.invoke(cli, ["ticket", "SN19990101001", "--json"])
    assert r.exit_code == 4 and json.loads(r.output)["error"] == "not_found"
