"""Monthly after-sales analysis (engine/reports.py, ``careflow report``) against a hand-computed
month: March 2026, Beijing time. The rows of ``report_helpers.build_month`` plus one real ticket
(SN20260316001) run through the after-sales process; paused SLA time, a reopened ticket, tickets
at 23:30 on the last day of February / March and at 00:10 on the 1st of March / April.

Every expected number below is worked out by hand from those rows (hours = wall clock minus
paused time; p90/median interpolate linearly between neighbours, as percentile_cont)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from careflow.cli import cli
from engine import accounts, reports
from engine.clock import FrozenClock, use_clock
from engine.errors import ValidationFailed
from engine.runtime import Careflow
from engine.sla import SlaClockRow
from engine.tickets import Ticket

from report_helpers import NOW, add_team_users, build_month, sh
from ticket_helpers import CS, TICKET_BPMN, TS, Flow, diagnosis, intake, remote, revisit

MIN = timedelta(minutes=1)
ENGINE_TICKET = "SN20260316001"


@pytest.fixture
def month(settings):
    """The fixture month with the engine's ticket; the clock stands at ``NOW`` (2026-04-02 12:00)."""
    clock = FrozenClock(sh(3, 16, 8, 55))
    cf = Careflow(settings, clock=clock)
    with use_clock(clock):
        cf.deploy([TICKET_BPMN], author="test")
        add_team_users(cf)
        for name, group in (("zhang.wei", CS), ("liu.yang", TS), ("wang.fang", CS)):
            accounts.add_user(cf, name, role="agent", password=None, groups=[group])
        f = Flow(cf, clock).start(actor="zhang.wei")
        f.do("ut_intake", CS, intake(sh(3, 16, 9)), "zhang.wei", after=10 * MIN)  # received 09:00
        f.do("ut_diagnose", TS, diagnosis(sh(3, 16, 9, 40)), "liu.yang", after=35 * MIN)  # first response 40 min
        f.do("ut_remote", TS, remote(sh(3, 16, 11)), "liu.yang", after=80 * MIN)  # fixed at 11:00: 2 h
        f.do("ut_revisit", CS, revisit(sh(3, 17, 10)), "wang.fang", after=23 * 60 * MIN)  # closed, all 5
        assert f.ticket().number == ENGINE_TICKET and f.status() == "completed"
        ids = build_month(cf)
        clock.set(NOW)
        yield cf, ids
    cf.close()


def run(cf, fn=reports.month_report, month="2026-03", team=None, **kw):
    with cf.Session() as s:
        return fn(s, month, team, now=NOW, **kw)


def c(count: int, *tickets: str, **more) -> dict:
    """An expected cell."""
    return {"count": count, "tickets": list(tickets), **{k: list(v) for k, v in more.items()}}


T2, T3, T4, T5, T6, T8 = ("SN20260301001", "SN20260305001", "SN20260310001", "SN20260320001", "SN20260331001",
                          "SN20260325001")
T9 = ENGINE_TICKET


def test_engine_ticket_rows_are_what_the_fixture_assumes(month):
    cf, _ = month
    with cf.Session() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == T9))
        clocks = {r.name: r for r in s.scalars(select(SlaClockRow).where(SlaClockRow.subject_key == T9))}
    assert (t.type, t.priority, t.status, t.fault_category, t.overall_score) == \
        ("product_fault", "urgent", "closed", "hardware", 5)
    assert clocks["first_response"].started_at == sh(3, 16, 9) and clocks["first_response"].status == "met"
    assert clocks["first_response"].stopped_at == sh(3, 16, 9, 40)
    assert (clocks["solution"].status, clocks["solution"].stopped_at) == ("met", sh(3, 16, 11))


def test_ticket_volume(month):
    cf, _ = month
    v = run(cf, reports.ticket_volume)
    assert v["opened"] == c(7, T2, T3, T4, T9, T5, T8, T6)  # not SN20260228001 (Feb 28 23:30) nor SN20260401001
    assert v["resolved"] == c(4, T2, T3, T4, T9)
    assert v["open"] == c(3, T5, T8, T6)
    assert v["reopened"] == c(1, T4)
    assert [(r["type"], r["count"], r["share"], r["tickets"]) for r in v["by_type"]] == [
        ("product_fault", 4, 0.5714, [T2, T3, T4, T9]), ("usage_question", 1, 0.1429, [T5]),
        ("service_complaint", 1, 0.1429, [T6]), ("other", 1, 0.1429, [T8])]
    assert [(r["category"], r["count"], r["share"], r["tickets"]) for r in v["fault_categories"]] == [
        ("hardware", 3, 0.75, [T2, T4, T9]), ("software", 1, 0.25, [T3])]


def test_resolution_times(month):
    """First response: urgent 1 h, 0.5 h (T4 round 1), 3 h (round 2), 0.5 h (T8), 40 min (engine ticket);
    important 2 h and 50 min (respond of the complaint-type ticket); general 2 h.
    Resolution: urgent 3, 3, 6, 2 h (T8 is paused: not timed); important 34 h - 20 h paused = 14 h."""
    cf, _ = month
    t = run(cf, reports.resolution_times)
    fr = {r["priority"]: r for r in t["first_response"]}
    assert (fr["urgent"]["count"], fr["urgent"]["mean_hours"], fr["urgent"]["median_hours"],
            fr["urgent"]["p90_hours"], fr["urgent"]["tickets"]) == (5, 1.13, 0.67, 2.2, [T2, T4, T9, T8])
    assert (fr["important"]["count"], fr["important"]["mean_hours"], fr["important"]["median_hours"],
            fr["important"]["p90_hours"]) == (2, 1.42, 1.42, 1.88)
    assert (fr["general"]["count"], fr["general"]["mean_hours"], fr["general"]["p90_hours"]) == (1, 2.0, 2.0)
    assert (fr[None]["count"], fr[None]["mean_hours"], fr[None]["median_hours"], fr[None]["p90_hours"]) == \
        (8, 1.31, 0.92, 2.3)
    res = {r["priority"]: r for r in t["resolution"]}
    assert (res["urgent"]["count"], res["urgent"]["mean_hours"], res["urgent"]["median_hours"],
            res["urgent"]["p90_hours"], res["urgent"]["tickets"]) == (4, 3.5, 3.0, 5.1, [T2, T4, T9])
    assert (res["important"]["count"], res["important"]["mean_hours"], res["important"]["tickets"]) == (1, 14.0, [T3])
    assert (res["general"]["count"], res["general"]["mean_hours"], res["general"]["median_hours"]) == (0, None, None)
    assert (res[None]["count"], res[None]["mean_hours"], res[None]["median_hours"], res[None]["p90_hours"]) == \
        (5, 5.6, 3.0, 10.8)


def test_sla_compliance_excludes_paused_time(month):
    """T3 met its solution deadline only because 20 h waiting for parts moved it; T8 stands paused
    beyond its budget (breached); T6's resolve clock is paused within budget (pending); T5 runs overdue."""
    cf, _ = month
    s = run(cf, reports.sla_compliance)
    rows = {(r["priority"], r["clock"]): r for r in s["rows"]}
    assert list(rows) == [(p, k) for p in ("urgent", "important", "general") for k in ("first_response", "solution")]

    def outcome(r):
        return (r["total"]["count"], r["met"]["count"], r["breached"]["count"], r["pending"]["count"],
                r["compliance"], r["paused_hours"])

    assert outcome(rows[("urgent", "first_response")]) == (5, 4, 1, 0, 0.8, 0.0)
    assert rows[("urgent", "first_response")]["breached"] == c(1, T4)
    assert outcome(rows[("urgent", "solution")]) == (5, 3, 2, 0, 0.6, 190.0)  # T8 paused 03-25 14:00 → now
    assert rows[("urgent", "solution")]["breached"] == c(2, T4, T8)
    assert outcome(rows[("important", "first_response")]) == (2, 2, 0, 0, 1.0, 0.0)
    assert outcome(rows[("important", "solution")]) == (2, 1, 0, 1, 1.0, 46.0)  # 20 h (T3) + 26 h (T6)
    assert rows[("important", "solution")]["met"] == c(1, T3)
    assert rows[("important", "solution")]["pending"] == c(1, T6)
    assert outcome(rows[("general", "first_response")]) == (1, 1, 0, 0, 1.0, 0.0)
    assert outcome(rows[("general", "solution")]) == (1, 0, 1, 0, 0.0, 0.0)
    assert rows[("general", "solution")]["breached"] == c(1, T5)
    assert outcome(s["overall"]["first_response"]) == (8, 7, 1, 0, 0.875, 0.0)
    assert outcome(s["overall"]["solution"]) == (8, 4, 3, 1, 0.5714, 236.0)


def test_complaint_compliance(month):
    cf, _ = month
    cp = run(cf, reports.complaint_compliance)
    assert cp["total"] == c(3, T2, complaints=["CP20260303001", "CP20260312001", "CP20260331001"])
    assert cp["resolved"]["count"] == 1 and cp["resolution_rate"] == 0.3333 and cp["goal"] == 1.0
    clocks = {r["clock"]: r for r in cp["clocks"]}
    assert [(k, r["budget"], r["met"]["count"], r["breached"]["count"], r["pending"]["count"], r["compliance"])
            for k, r in clocks.items()] == [("respond", "PT1H", 2, 1, 0, 0.6667), ("plan", "PT24H", 2, 1, 0, 0.6667),
                                           ("resolve", "PT48H", 1, 1, 1, 0.5)]
    assert clocks["respond"]["breached"]["complaints"] == ["CP20260312001"]
    assert clocks["plan"]["breached"]["complaints"] == ["CP20260331001"]  # running past 04-01 23:30
    assert clocks["resolve"]["pending"]["complaints"] == ["CP20260331001"]
    causes = [(r["cause"], r["complaints"]["count"], r["resolved"]["count"], r["open"]["count"],
               r["resolved_in_48h"]["count"], r["late"]["count"], r["resolution_rate"]) for r in cp["causes"]]
    assert causes == [("service_attitude", 2, 0, 2, 0, 2, 0.0), ("response_delay", 1, 1, 0, 1, 0, 1.0)]
    assert cp["causes"][1]["label"] == {"en": "Slow response", "zh": "响应不及时"}


def test_satisfaction(month):
    """Ticket surveys T2 5/5/5/5, T3 4/3/4/4, T4 3/3/4/3, engine ticket 5/5/5/5; answers in March
    5/4/5/5 (link, about T3), 2/2/3/1 (follow-up done), 3/3/3/2 at 03-31 23:30 (follow-up running)."""
    cf, ids = month
    f = run(cf, reports.satisfaction)
    assert [(d["dimension"], d["answers"]["count"], d["average"]) for d in f["dimensions"]] == [
        ("response_speed", 7, 3.86), ("resolution_efficiency", 7, 3.57), ("engineer_expertise", 7, 4.14),
        ("overall", 7, 3.57)]
    assert f["answers"]["tickets"] == [T2, T3, T4, T9]
    assert f["satisfied"]["count"] == 4 and f["rate"] == 0.5714 and f["goal"] == 0.9
    assert f["satisfied"]["tickets"] == [T2, T3, T9]
    assert f["low_scores"]["count"] == 2 and f["followups_started"]["count"] == 2
    assert f["followups_done"]["count"] == 1 and len(f["followups_done"]["surveys"]) == 1


def test_revisit_coverage(month):
    cf, ids = month
    r = run(cf, reports.revisit_coverage)
    got = [(row["tier"], row["due"]["count"], row["on_time"]["count"], row["late"]["count"], row["missed"]["count"],
            row["pending"]["count"], row["on_time_rate"], row["overdue_now"]["count"]) for row in r["tiers"]]
    assert got == [("core", 1, 1, 0, 0, 0, 1.0, 0), ("important", 2, 0, 1, 1, 0, 0.0, 1),
                   ("basic", 1, 0, 0, 0, 1, None, 0), ("potential", 1, 0, 0, 1, 0, 0.0, 0),
                   ("A", 0, 0, 0, 0, 0, None, 1)]
    tiers = {row["tier"]: row for row in r["tiers"]}
    assert tiers["important"]["overdue_now"] == {"count": 1, "customers": [ids["c2"]]}  # open revisit past its limit
    assert tiers["A"]["overdue_now"] == {"count": 1, "customers": [ids["c5"]]}  # due 03-20, never started
    assert r["totals"] == {"due": 5, "on_time": 1, "late": 1, "missed": 2, "pending": 1, "on_time_rate": 0.25,
                           "overdue_now": 2}


def test_backlog_now(month):
    cf, _ = month
    b = run(cf, reports.backlog)
    groups = {g["group"]: g for g in b["groups"]}
    assert list(groups) == ["technical_support", "customer_service"]
    ts, cs = groups["technical_support"], groups["customer_service"]
    assert (ts["open_tasks"]["count"], ts["unassigned"]["count"], ts["overdue_tasks"]["count"],
            ts["overdue_clocks"]["count"]) == (2, 1, 1, 1)
    assert ts["open_tasks"]["tickets"] == [T5, T6] and ts["overdue_clocks"]["tickets"] == [T5]
    assert (cs["open_tasks"]["count"], cs["overdue_tasks"]["count"], cs["overdue_clocks"]["count"]) == (1, 0, 2)
    assert cs["overdue_clocks"]["complaints"] == ["CP20260312001", "CP20260331001"]
    agents = [(a["agent"], a["open_tasks"]["count"], a["overdue_tasks"]["count"], a["overdue_clocks"]["count"])
              for a in b["agents"]]
    assert agents == [("ann", 1, 0, 1), ("tom", 1, 1, 1), ("cara", 0, 0, 1)]


def test_team_filter(month):
    """technical_support: not T6 (owed by customer service, nobody of TS on it); customer_service: not T8."""
    cf, ids = month
    ts = run(cf, team="technical_support")
    assert ts["team"] == "technical_support"
    assert ts["ticket_volume"]["opened"]["tickets"] == [T2, T3, T4, T9, T5, T8]
    assert ts["complaints"]["total"]["count"] == 0
    assert ts["satisfaction"]["answers"]["count"] == 5  # T2, T3, T4, T9 and the link answer about T3
    assert [g["group"] for g in ts["backlog"]["groups"]] == ["technical_support"]
    assert [a["agent"] for a in ts["backlog"]["agents"]] == ["tom"]
    cs = run(cf, team="customer_service")
    assert cs["ticket_volume"]["opened"]["tickets"] == [T2, T3, T4, T9, T5, T6]
    assert cs["complaints"]["total"]["count"] == 3
    assert cs["sla_compliance"]["overall"]["solution"]["breached"]["tickets"] == [T4, T5]
    am = run(cf, reports.revisit_coverage, team="account_manager")
    assert [(r["tier"], r["due"]["count"], r["overdue_now"]["count"]) for r in am["tiers"]] == [
        ("core", 1, 0), ("important", 2, 1), ("potential", 1, 0), ("A", 0, 1)]  # not the basic customer
    with pytest.raises(ValidationFailed) as err:
        run(cf, team="no_such_team")
    assert err.value.problems[0].field == "team"


def test_month_boundaries(month):
    """23:30 on the last day belongs to that month; 00:10 on the 1st to the new one (Beijing time)."""
    cf, _ = month
    feb = run(cf, month="2026-02")
    assert feb["from"] == "2026-01-31T16:00:00+00:00" and feb["to"] == "2026-02-28T16:00:00+00:00"
    assert feb["ticket_volume"]["opened"] == c(1, "SN20260228001")
    assert feb["complaints"]["total"]["complaints"] == ["CP20260228001"]
    assert feb["satisfaction"]["answers"]["count"] == 2  # the ticket survey and the answer of 02-27
    assert [(r["tier"], r["due"]["count"]) for r in feb["revisit_coverage"]["tiers"]][0] == ("core", 1)
    apr = run(cf, month="2026-04")
    assert apr["ticket_volume"]["opened"] == c(1, "SN20260401001")
    assert apr["sla_compliance"]["overall"]["solution"]["met"] == c(1, "SN20260401001")
    mar = run(cf, month="2026-03")
    assert "SN20260228001" not in mar["ticket_volume"]["opened"]["tickets"]
    assert mar["backlog"] == apr["backlog"]  # "now": the month does not apply


@pytest.mark.parametrize("bad", ["2026-13", "26-03", "March", "2026-03-01", "1999-12"])
def test_bad_month(month, bad):
    cf, _ = month
    with pytest.raises(ValidationFailed) as err:
        run(cf, month=bad)
    assert err.value.problems[0].field == "month"


def test_percentile_is_percentile_cont():
    assert reports.percentile([], 0.9) is None
    assert reports.percentile([4.0], 0.9) == 4.0
    assert reports.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert reports.percentile([10.0, 20.0, 30.0, 40.0, 50.0], 0.9) == pytest.approx(46.0)


def test_tables_show_the_figures(month):
    cf, _ = month
    tables = {t["id"]: t for t in reports.report_tables(run(cf))}
    assert list(tables) == ["ticket_volume", "problem_types", "fault_categories", "resolution_times",
                            "sla_compliance", "complaint_clocks", "complaint_causes", "satisfaction",
                            "satisfaction_summary", "revisit_coverage", "backlog_groups", "backlog_agents"]
    assert set(tables) == set(reports.TABLE_GROUPS)
    headers, rows = reports.table_matrix(tables["sla_compliance"], "zh")
    assert headers == ["优先级", "时限", "计时数", "达标", "超时", "进行中", "达标率", "暂停（小时）"]
    assert rows[1] == ["紧急", "解决", "5", "3", "2", "0", "60.0%", "190.00"]
    assert rows[-1] == ["全部优先级", "解决", "8", "4", "3", "1", "57.1%", "236.00"]
    headers, rows = reports.table_matrix(tables["complaint_clocks"], "en")
    assert rows == [["Respond and record", "1 hour", "3", "2", "1", "0", "66.7%"],
                    ["Solution plan", "24 hours", "3", "2", "1", "0", "66.7%"],
                    ["Resolved and reported", "48 hours", "3", "1", "1", "1", "50.0%"]]
    _, rows = reports.table_matrix(tables["satisfaction_summary"], "en")
    assert rows[2] == ["Satisfaction (goal 90 %)", "57.1%"]
    found = reports.find_cell(list(tables.values()), "sla_compliance", "urgent/solution", "breached")
    assert found is not None and found[2]["refs"] == {"tickets": [T4, T8]}


def test_cli_json_is_the_report(month, runner):
    cf, _ = month
    out = runner.invoke(cli, ["report", "--month", "2026-03", "--json", "--now", NOW.isoformat()])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == json.loads(json.dumps(run(cf), default=str))
    team = runner.invoke(cli, ["report", "--month", "2026-03", "--team", "customer_service", "--json",
                               "--now", NOW.isoformat()])
    assert json.loads(team.output)["ticket_volume"]["opened"]["count"] == 6


def test_cli_tables(month, runner):
    out = runner.invoke(cli, ["report", "--month", "2026-03", "--zh", "--now", NOW.isoformat()])
    assert out.exit_code == 0, out.output
    assert "售后月度数据分析 2026-03 · 团队：全部团队 · 北京时间 · 截至 2026-04-02 12:00" in out.output
    assert "SLA 达标率（不计暂停时间）" in out.output
    line = next(x for x in out.output.splitlines() if x.startswith("紧急") and "解决" in x and "%" in x)
    assert line.split() == ["紧急", "解决", "5", "3", "2", "0", "60.0%", "190.00"]
    en = runner.invoke(cli, ["report", "--month", "2026-03", "--now", NOW.isoformat()])
    assert "Complaints by cause (weekly review list)" in en.output and "Service attitude" in en.output


@pytest.mark.parametrize("args,code,message", [
    (["--month", "2026-13"], 2, "is not a month"),
    (["--month", "2026-03", "--team", "nobody"], 2, "no team 'nobody'"),
    (["--month", "2026-03", "--now", "yesterday"], 2, "not an ISO 8601"),
])
def test_cli_bad_input(month, runner, args, code, message):
    out = runner.invoke(cli, ["report", *args])
    assert out.exit_code == code
    assert message in out.output
    assert "Traceback" not in out.output
