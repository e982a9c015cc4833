"""SLA clocks persisted per subject: deadlines across weekends, holidays, pauses,
priority changes and renegotiations; explanations; the CLI."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.clock import utcnow
from engine.errors import Conflict, NotFound
from engine.sla import (
    SlaClockRow,
    SlaError,
    change_priority,
    clocks_for,
    explain,
    extend_deadline,
    open_clocks,
    pause_clocks,
    resume_clocks,
    set_owner,
    stop_clock,
)
from plugins.hookspecs import hookimpl

from sla_helpers import iso, sh


def _open(cf, key="SN20261120001", start=None, priority="general", subject_type="ticket", tier="important",
          owner="alice"):
    with cf.Session() as s, s.begin():
        return open_clocks(s, subject_type=subject_type, subject_key=key, instance_id=None, priority=priority,
                           ticket_type="product_fault" if subject_type == "ticket" else "service_complaint",
                           tier=tier, owner=owner, group="technical_support",
                           started_at=start or sh(2026, 11, 20, 15), pm=cf.pm)


def _do(cf, fn, *args, **kwargs):
    with cf.Session() as s, s.begin():
        return fn(s, *args, **kwargs)


def _clock(cf, key, name) -> dict:
    with cf.Session() as s:
        return next(c for c in clocks_for(s, key) if c["name"] == name)


def _explain(cf, key, name, now=None) -> dict:
    with cf.Session() as s:
        (info,) = explain(s, key, name, now=now)
        return info


# ------------------------------------------------------------------------ deadlines


def test_general_ticket_on_friday_skips_the_weekend(cf):
    dues = _open(cf)
    assert dues["first_response"] == sh(2026, 11, 21, 15)  # 24 h wall clock
    assert dues["solution"] == sh(2026, 11, 25, 15)  # Fri 3 h + Mon 9 h + Tue 9 h + Wed 6 h
    row = _clock(cf, "SN20261120001", "solution")
    assert (row["budget"], row["policy"], row["tier"], row["calendar"], row["status"]) == \
        ("3WD", "default", "important", "CN", "running")
    assert row["owner"] == "alice" and row["group"] == "technical_support"
    assert [r["name"] for r in row["ladder"]] == ["remind_owner", "alert_supervisor", "alert_manager"]
    assert row["next_rung_at"] is not None


def test_three_working_days_skip_national_day_and_count_the_adjusted_saturday(cf):
    dues = _open(cf, "SN20260930001", start=sh(2026, 9, 30, 15))
    # Wed 30 Sep 3 h; 1-7 Oct are holidays; Thu 8 and Fri 9 Oct 18 h; Sat 10 Oct is a 调休 working day: 6 h
    assert dues["solution"] == sh(2026, 10, 10, 15)
    assert dues["first_response"] == sh(2026, 10, 1, 15)


def test_company_override_file_adds_a_holiday(cf, tmp_path, monkeypatch):
    path = tmp_path / "acme.toml"
    path.write_text('name = "ACME"\nlabel_zh = "顶点公司"\n[extra_holidays]\n"2026-11-24" = "Company anniversary"\n',
                    encoding="utf-8")
    monkeypatch.setenv("CAREFLOW_CALENDAR_FILE", str(path))
    dues = _open(cf)
    # Fri 3 h, Mon 9 h, Tue 24 is the company's holiday, Wed 9 h, Thu 6 h
    assert dues["solution"] == sh(2026, 11, 26, 15)
    info = _explain(cf, "SN20261120001", "solution")
    assert info["calendar"]["name"] == "ACME"
    assert "ACME (Asia/Shanghai)" in info["sentence"]["en"] and "顶点公司" in info["sentence"]["zh"]


def test_a_broken_calendar_file_is_a_clear_error(cf, tmp_path, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text('working_weekdays = ["mon", "funday"]\n', encoding="utf-8")
    monkeypatch.setenv("CAREFLOW_CALENDAR_FILE", str(path))
    with pytest.raises(Exception, match="funday"):
        _open(cf)
    with cf.Session() as s:
        assert s.scalar(select(func.count()).select_from(SlaClockRow)) == 0


def test_complaint_gets_the_1_24_48_clocks(cf):
    dues = _open(cf, "CP001", start=sh(2026, 11, 20, 15), priority=None, subject_type="complaint")
    assert dues == {"respond": sh(2026, 11, 20, 16), "plan": sh(2026, 11, 21, 15), "resolve": sh(2026, 11, 22, 15)}


# --------------------------------------------------------------------------- pauses


def test_pause_ledger_moves_the_solution_deadline_by_working_time_only(cf):
    key = "SN20261120001"
    _open(cf, key)
    _do(cf, pause_clocks, key, "waiting_for_customer", sh(2026, 11, 23, 10), names=["solution"])
    paused = _clock(cf, key, "solution")
    assert paused["status"] == "paused" and paused["due_at"] is None and paused["next_rung_at"] is None
    assert _clock(cf, key, "first_response")["status"] == "running"  # only the named clock pauses

    _do(cf, resume_clocks, key, sh(2026, 11, 24, 10))  # Mon 10-18 and Tue 9-10: 9 working hours
    assert _clock(cf, key, "solution")["due_at"] == iso(sh(2026, 11, 26, 15))

    _do(cf, pause_clocks, key, "waiting_for_parts", sh(2026, 11, 25, 16), names=["solution"])
    _do(cf, resume_clocks, key, sh(2026, 11, 26, 11), names=["solution"])  # Wed 16-18 + Thu 9-11: 4 h
    row = _clock(cf, key, "solution")
    assert row["due_at"] == iso(sh(2026, 11, 27, 10))
    assert [p["reason"] for p in row["pauses"]] == ["waiting_for_customer", "waiting_for_parts"]

    info = _explain(cf, key, "solution", now=sh(2026, 11, 26, 12))
    assert info["paused_total"]["seconds"] == 13 * 3600
    assert "waiting for customer" in info["sentence"]["en"] and "waiting for parts" in info["sentence"]["en"]
    assert "等待客户" in info["sentence"]["zh"] and "等待配件" in info["sentence"]["zh"]
    assert "hence due at 2026-11-27 10:00 Asia/Shanghai" in info["sentence"]["en"]


def test_pause_all_clocks_and_out_of_order_times(cf):
    key = "SN20261120001"
    _open(cf, key)
    _do(cf, pause_clocks, key, "customer_unreachable", sh(2026, 11, 20, 16))
    assert {c["status"] for c in clocks_for_all(cf, key)} == {"paused"}
    _do(cf, pause_clocks, key, "again", sh(2026, 11, 20, 17))  # already paused: left alone
    assert len(_clock(cf, key, "solution")["pauses"]) == 1
    with pytest.raises(SlaError, match="before"):
        _do(cf, resume_clocks, key, sh(2026, 11, 20, 15, 30))
    _do(cf, resume_clocks, key, sh(2026, 11, 20, 17))
    with pytest.raises(SlaError, match="before"):
        _do(cf, pause_clocks, key, "late entry", sh(2026, 11, 20, 16, 30))


def clocks_for_all(cf, key):
    with cf.Session() as s:
        return clocks_for(s, key)


# ------------------------------------------------------------------ priority changes


def test_priority_change_mid_ticket_recomputes_from_the_ledger(cf):
    key = "SN20261123001"
    _open(cf, key, start=sh(2026, 11, 23, 9))
    _do(cf, pause_clocks, key, "waiting_for_parts", sh(2026, 11, 23, 10), names=["solution"])
    _do(cf, resume_clocks, key, sh(2026, 11, 23, 14), names=["solution"])

    dues = _do(cf, change_priority, key, "urgent", sh(2026, 11, 23, 14, 30), cf.pm)
    assert dues["solution"] == sh(2026, 11, 23, 17)  # 09:00 + PT4H + the 4 h pause
    assert dues["first_response"] == sh(2026, 11, 23, 11)  # PT2H, never paused
    row = _clock(cf, key, "solution")
    assert (row["budget"], row["policy"]) == ("PT4H", "default")
    assert len(row["pauses"]) == 1  # the ledger survives

    dues = _do(cf, change_priority, key, "general", sh(2026, 11, 23, 15), cf.pm)
    # 3WD = 27 working hours: Mon 9 h - 4 h paused, Tue 9, Wed 9, Thu 4 -> Thu 13:00
    assert dues["solution"] == sh(2026, 11, 26, 13)
    info = _explain(cf, key, "solution", now=sh(2026, 11, 23, 16))
    assert len(info["priority_changes"]) == 2
    assert "Priority changed from general to urgent" in info["sentence"]["en"]
    assert "优先级" in info["sentence"]["zh"]


def test_priority_change_while_paused_keeps_the_clock_paused(cf):
    key = "SN20261123002"
    _open(cf, key, start=sh(2026, 11, 23, 9))
    _do(cf, pause_clocks, key, "waiting_for_customer", sh(2026, 11, 23, 10), names=["solution"])
    dues = _do(cf, change_priority, key, "urgent", sh(2026, 11, 23, 11), cf.pm)
    assert dues["solution"] is None
    assert _clock(cf, key, "solution")["budget"] == "PT4H"
    _do(cf, resume_clocks, key, sh(2026, 11, 23, 12))
    assert _clock(cf, key, "solution")["due_at"] == iso(sh(2026, 11, 23, 15))  # 09:00 + 4 h + 2 h paused


def test_priority_change_leaves_stopped_clocks_alone(cf):
    key = "SN20261123003"
    _open(cf, key, start=sh(2026, 11, 23, 9))
    _do(cf, stop_clock, key, "first_response", sh(2026, 11, 23, 10))
    dues = _do(cf, change_priority, key, "urgent", sh(2026, 11, 23, 11), cf.pm)
    fr = _clock(cf, key, "first_response")
    assert (fr["status"], fr["budget"]) == ("met", "PT24H")
    assert dues["first_response"] == sh(2026, 11, 24, 9)


# ------------------------------------------------------------------------- stopping


def test_stop_records_met_or_breached(cf):
    key = "SN20261123004"
    _open(cf, key, start=sh(2026, 11, 23, 9), priority="urgent")
    _do(cf, stop_clock, key, "first_response", sh(2026, 11, 23, 10, 30))
    _do(cf, stop_clock, key, "solution", sh(2026, 11, 23, 14))
    fr, sol = _clock(cf, key, "first_response"), _clock(cf, key, "solution")
    assert (fr["status"], fr["stopped_at"]) == ("met", iso(sh(2026, 11, 23, 10, 30)))
    assert (sol["status"], sol["due_at"]) == ("breached", iso(sh(2026, 11, 23, 13)))
    assert sol["next_rung_at"] is None
    _do(cf, stop_clock, key, "solution", sh(2026, 11, 23, 15))  # stopping again changes nothing
    assert _clock(cf, key, "solution")["stopped_at"] == iso(sh(2026, 11, 23, 14))
    info = _explain(cf, key, "solution", now=sh(2026, 11, 30))
    assert "Stopped at 2026-11-23 14:00: breached" in info["sentence"]["en"]
    assert info["remaining"]["seconds"] == -3600  # as it stood when it stopped


def test_stop_while_paused_closes_the_pause(cf):
    key = "SN20261123005"
    _open(cf, key, start=sh(2026, 11, 23, 9), priority="urgent")
    _do(cf, pause_clocks, key, "waiting_for_customer", sh(2026, 11, 23, 12), names=["solution"])
    _do(cf, stop_clock, key, "solution", sh(2026, 11, 23, 13, 30))
    sol = _clock(cf, key, "solution")
    assert sol["status"] == "met"
    assert sol["pauses"][0]["resumed_at"] == iso(sh(2026, 11, 23, 13, 30))
    assert sol["due_at"] == iso(sh(2026, 11, 23, 14, 30))


# -------------------------------------------------------------------- renegotiation


def test_renegotiated_deadline_is_recorded_explained_and_moved_by_later_pauses(cf):
    key = "SN20261120001"
    _open(cf, key)
    _do(cf, extend_deadline, key, "solution", sh(2026, 11, 27, 12), "spare part arrives Thursday", "alice",
        sh(2026, 11, 24, 10))
    assert _clock(cf, key, "solution")["due_at"] == iso(sh(2026, 11, 27, 12))
    info = _explain(cf, key, "solution", now=sh(2026, 11, 24, 11))
    assert info["due_at"] == iso(sh(2026, 11, 27, 12))
    assert "spare part arrives Thursday" in info["sentence"]["en"]
    assert "renegotiated by alice" in info["sentence"]["en"] and "2026-11-25 15:00" in info["sentence"]["en"]

    _do(cf, pause_clocks, key, "waiting_for_customer", sh(2026, 11, 26, 10), names=["solution"])
    _do(cf, resume_clocks, key, sh(2026, 11, 26, 11), names=["solution"])
    assert _clock(cf, key, "solution")["due_at"] == iso(sh(2026, 11, 27, 13))

    dues = _do(cf, change_priority, key, "important", sh(2026, 11, 26, 12), cf.pm)
    assert dues["solution"] == sh(2026, 11, 21, 15)  # PT24H from the start: the renegotiation is superseded
    info = _explain(cf, key, "solution", now=sh(2026, 11, 26, 12))
    assert "superseded by a later priority change" in info["sentence"]["en"]


def test_renegotiated_deadline_outside_working_hours_is_kept_as_agreed(cf):
    key = "SN20261120001"
    _open(cf, key)
    _do(cf, extend_deadline, key, "solution", sh(2026, 11, 28, 10), "customer only free on Saturday", "bob",
        sh(2026, 11, 24, 10))
    assert _clock(cf, key, "solution")["due_at"] == iso(sh(2026, 11, 28, 10))


def test_renegotiation_errors(cf):
    key = "SN20261120001"
    _open(cf, key)
    with pytest.raises(SlaError, match="must be after"):
        _do(cf, extend_deadline, key, "solution", sh(2026, 11, 24, 9), "why", "alice", sh(2026, 11, 24, 10))
    with pytest.raises(SlaError, match="reason"):
        _do(cf, extend_deadline, key, "solution", sh(2026, 11, 27, 9), " ", "alice", sh(2026, 11, 24, 10))
    _do(cf, pause_clocks, key, "waiting_for_customer", sh(2026, 11, 24, 10), names=["solution"])
    with pytest.raises(Conflict, match="paused"):
        _do(cf, extend_deadline, key, "solution", sh(2026, 11, 27, 9), "why", "alice", sh(2026, 11, 24, 11))
    _do(cf, stop_clock, key, "first_response", sh(2026, 11, 20, 16))
    with pytest.raises(Conflict, match="stopped"):
        _do(cf, extend_deadline, key, "first_response", sh(2026, 11, 27, 9), "why", "alice", sh(2026, 11, 24, 11))


# ---------------------------------------------------------------- contract details


def test_open_is_idempotent_and_uses_only_the_given_session(cf):
    key = "SN20261120001"
    with cf.Session() as s:
        with s.begin():
            open_clocks(s, subject_type="ticket", subject_key=key, instance_id=None, priority="general",
                        ticket_type=None, tier=None, owner=None, group=None, started_at=sh(2026, 11, 20, 15), pm=cf.pm)
            s.rollback()  # the caller's transaction decides: nothing was committed behind its back
    with cf.Session() as s:
        assert clocks_for(s, key) == []
    first = _open(cf, key)
    again = _open(cf, key, start=sh(2026, 11, 23, 9), priority="urgent")
    assert again == first
    assert len(clocks_for_all(cf, key)) == 2


def test_policy_and_budgets_come_from_the_hook(cf):
    class GoldPolicy:
        @hookimpl(tryfirst=True)
        def careflow_sla_policy(self, kind, priority, ticket_type, tier):
            if tier == "core":
                return {"policy": "gold", "clocks": {"first_response": "PT30M", "solution": "8BH"}}
            return None

    cf.pm.register(GoldPolicy(), name="gold-policy")
    dues = _open(cf, "SN-GOLD", tier="core")
    assert dues == {"first_response": sh(2026, 11, 20, 15, 30), "solution": sh(2026, 11, 23, 14)}
    info = _explain(cf, "SN-GOLD", "solution")
    assert (info["policy"], info["budget"], info["tier"]) == ("gold", "8BH", "core")
    assert "8 business hours" in info["sentence"]["en"]
    assert _open(cf, "SN-PLAIN", tier="basic")["solution"] == sh(2026, 11, 25, 15)  # default policy


def test_a_bad_budget_from_a_plugin_names_the_policy(cf):
    class Broken:
        @hookimpl(tryfirst=True)
        def careflow_sla_policy(self, kind, priority, ticket_type, tier):
            return {"policy": "broken-policy", "clocks": {"solution": "three days"}}

    cf.pm.register(Broken(), name="broken-policy")
    with pytest.raises(SlaError, match="broken-policy.*solution"):
        _open(cf)


def test_errors_are_clear(cf):
    with pytest.raises(NotFound, match="no SLA clocks"):
        _do(cf, stop_clock, "NOPE", "solution", sh(2026, 11, 20, 15))
    _open(cf, "SN1")
    with pytest.raises(NotFound, match="has no SLA clock 'resolve'"):
        _do(cf, stop_clock, "SN1", "resolve", sh(2026, 11, 20, 16))
    with pytest.raises(SlaError, match="timezone-aware"):
        _do(cf, pause_clocks, "SN1", "x", sh(2026, 11, 20, 16).replace(tzinfo=None))
    with pytest.raises(SlaError, match="subject_key"):
        _open(cf, "")


def test_set_owner_changes_every_clock(cf):
    _open(cf, "SN1")
    _do(cf, set_owner, "SN1", "dave", "customer_service")
    assert {(c["owner"], c["group"]) for c in clocks_for_all(cf, "SN1")} == {("dave", "customer_service")}
    _do(cf, set_owner, "SN1", "erin")
    assert {(c["owner"], c["group"]) for c in clocks_for_all(cf, "SN1")} == {("erin", "customer_service")}


def test_explain_tells_budget_policy_tier_calendar_pauses_and_due(cf):
    _open(cf, "SN1")
    _do(cf, pause_clocks, "SN1", "waiting_for_customer", sh(2026, 11, 23, 10), names=["solution"])
    with cf.Session() as s:
        infos = {i["clock"]: i for i in explain(s, "SN1", now=sh(2026, 11, 23, 12))}
    sol = infos["solution"]
    assert (sol["budget"], sol["policy"], sol["tier"], sol["calendar"]["name"]) == ("3WD", "default", "important", "CN")
    assert sol["is_paused"] and sol["due_at"] is None and sol["status"] == "paused"
    assert sol["pauses"][0]["reason_text"] == {"en": "waiting for customer", "zh": "等待客户"}
    assert "no due time while paused" in sol["sentence"]["en"]
    fr = infos["first_response"]
    assert fr["overdue"] and fr["calendar"]["kind"] == "24x7"
    assert fr["escalations"] == [] and fr["next_rung"]["rung"] == "remind_owner"


# ----------------------------------------------------------------------------- CLI


def test_cli_clocks_explains_and_reports_unknown_subjects(cf, runner):
    start = utcnow() - timedelta(days=1)
    _open(cf, "SN-CLI", start=start, priority="urgent")
    res = runner.invoke(cli, ["clocks", "SN-CLI", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [d["clock"] for d in data] == ["first_response", "solution"]
    assert data[1]["due_at"] == iso(start + timedelta(hours=4))
    assert data[1]["overdue"] is True
    res = runner.invoke(cli, ["clocks", "SN-CLI", "--clock", "solution"])
    assert res.exit_code == 0 and "Budget 4 hours wall-clock (policy default" in res.output
    assert "OVERDUE" in res.output
    res = runner.invoke(cli, ["clocks", "SN-CLI", "--zh"])
    assert "时限" in res.output
    res = runner.invoke(cli, ["clocks", "NOPE", "--json"])
    assert res.exit_code == 4 and json.loads(res.output)["error"] == "not_found"


def test_cli_overdue_lists_overdue_clocks_with_their_rung(cf, runner):
    from engine.escalation import fire_due_rungs

    start = utcnow() - timedelta(hours=2, minutes=30)
    _open(cf, "SN-LATE", start=start, priority="urgent", owner="alice")  # PT2H / PT4H
    _open(cf, "SN-FINE", start=utcnow(), priority="general")
    assert fire_due_rungs(cf) == 3  # first response: owner 50 %, supervisor 100 %; solution: owner 50 %
    res = runner.invoke(cli, ["overdue", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [(r["subject_key"], r["clock"]) for r in rows] == [("SN-LATE", "first_response")]
    assert rows[0]["rung"] == "alert_supervisor" and rows[0]["next_rung"] == "alert_manager"
    assert 1790 <= rows[0]["overdue_by_seconds"] <= 1900
    res = runner.invoke(cli, ["overdue"])
    assert "SN-LATE  first_response" in res.output and "rung: alert_supervisor" in res.output


def test_cli_org_set_and_show(cf, runner):
    res = runner.invoke(cli, ["org", "set", "alice", "--supervisor", "bob"])
    assert res.exit_code == 0, res.output
    assert "Created user alice" in res.output and "Created user bob" in res.output
    assert runner.invoke(cli, ["org", "set", "bob", "--supervisor", "carol"]).exit_code == 0
    res = runner.invoke(cli, ["org", "show", "--json"])
    rows = {r["user"]: r for r in json.loads(res.output)}
    assert rows["alice"]["supervisor"] == "bob" and rows["alice"]["manager"] == "carol"
    assert rows["bob"]["role"] == "supervisor"
    res = runner.invoke(cli, ["org", "set", "carol", "--supervisor", "alice"])
    assert res.exit_code == 2 and "loop" in res.output
    res = runner.invoke(cli, ["org", "set", "alice"])
    assert res.exit_code == 2
    assert runner.invoke(cli, ["org", "set", "alice", "--clear"]).exit_code == 0
    res = runner.invoke(cli, ["org", "show"])
    assert "alice" in res.output and "supervisor -" in res.output.splitlines()[0]
