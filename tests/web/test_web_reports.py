"""The reports page (web/reports.py) on the hand-computed fixture month of ``report_helpers``:
who sees which team, every CSV equals the table on the page, drill-down lists, bad input,
both languages, and a real browser (Chromium) drawing the charts — screenshot
``test-output/reports.png``."""

from __future__ import annotations

import csv
import io
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from webtools import FIXTURES, ROOT, USERS, AuthActions, add_users, make_app, serve, sign_in

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine import reports  # noqa: E402
from engine.clock import FrozenClock  # noqa: E402
from engine.runtime import Careflow  # noqa: E402

from report_helpers import NOW, add_team_users, build_month  # noqa: E402

MONTH = "month=2026-03"
T8 = "SN20260325001"  # technical support's only (registered by the web portal, engineer tina)
T6 = "SN20260331001"  # customer service's only (a complaint ticket owed by customer service)


@pytest.fixture
def rcf(settings):
    """An engine whose clock stands at the fixture's ``NOW``, with the web users and the fixture month."""
    engine = Careflow(settings, clock=FrozenClock(NOW))
    add_users(engine)
    engine.deploy([FIXTURES / "simple.bpmn"], author="test")
    add_team_users(engine, {u[0] for u in USERS})
    build_month(engine)
    yield engine
    engine.close()


@pytest.fixture
def rclient(rcf):
    """A test client of the app on ``rcf``."""
    return make_app(rcf).test_client()


def signed_in(client, user: str, lang: str = "zh"):
    """Sign ``user`` in with the page language ``lang``."""
    auth = AuthActions(client)
    assert auth.login(user).status_code == 302
    auth.post("/language", {"lang": lang})
    return client


class Tables(HTMLParser):
    """The ``<table data-table=...>`` tables of a page as {id: (headers, rows)} (the “nothing this month” row left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, tuple[list[str], list[list[str]]]] = {}
        self._table = self._row = self._cell = None
        self._skip = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("data-table"):
            self._table = a["data-table"]
            self.tables[self._table] = ([], [])
        elif self._table and tag == "tr":
            self._row, self._skip = [], "empty-row" in (a.get("class") or "")
        elif self._table and tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif self._table and tag in ("td", "th") and self._cell is not None:
            self._row.append(re.sub(r"\s+", " ", "".join(self._cell)).strip())
            self._cell = None
        elif self._table and tag == "tr" and self._row is not None:
            headers, rows = self.tables[self._table]
            if not self._skip:
                (rows if headers else headers).extend([self._row] if headers else self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def page_tables(html: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    parser = Tables()
    parser.feed(html)
    return parser.tables


def drill_links(html: str) -> dict[tuple[str, str, str], str]:
    """(table, row, column) -> drill-down URL of every linked number on the page."""
    out = {}
    for href in re.findall(r'href="(/reports/drill\?[^"]+)"', html):
        url = href.replace("&amp;", "&")
        args = dict(re.findall(r"[?&](\w+)=([^&]*)", url))
        out[(args["table"], args["row"].replace("%2F", "/"), args["col"])] = url
    return out


# ---------------------------------------------------------------------------------- authorization


@pytest.mark.parametrize("user,default,allowed,denied", [
    ("root", "", ["", "technical_support", "customer_service", "account_manager"], []),
    ("aud", "", ["", "technical_support", "customer_service"], []),
    ("olga", "", ["", "technical_support"], []),
    ("sam", "customer_service", ["customer_service", "supervisor"], ["", "technical_support"]),
    ("tess", "technical_support", ["technical_support"], ["", "customer_service"]),
    ("ann", "customer_service", ["customer_service"], ["", "technical_support", "account_manager"]),
    ("tom", "technical_support", ["technical_support"], ["", "customer_service"]),
])
def test_who_sees_which_team(rclient, user, default, allowed, denied):
    """Admins, auditors and process owners see every team; supervisors and agents only their own."""
    signed_in(rclient, user)
    page = rclient.get(f"/reports?{MONTH}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    options = re.findall(r'<option value="([^"]*)"[^>]*>', html.split('id="f-team"')[1].split("</select>")[0])
    assert options[0] == default and set(allowed) <= set(options) and not set(denied) & set(options)
    for team in allowed:
        assert rclient.get(f"/reports?{MONTH}&team={team}").status_code == 200, team
    for team in denied:
        for url in (f"/reports?{MONTH}&team={team}", f"/reports/sla_compliance.csv?{MONTH}&team={team}",
                    f"/reports/drill?{MONTH}&team={team}&table=ticket_volume&row=opened&col=tickets"):
            r = rclient.get(url)
            assert r.status_code == 403, url
            assert "SN2026" not in r.get_data(as_text=True)


def test_agents_see_their_own_teams_tickets_only(rclient):
    opened = f"/reports/drill?{MONTH}&table=ticket_volume&row=opened&col=tickets"
    signed_in(rclient, "ann")
    html = rclient.get(opened).get_data(as_text=True)
    assert T6 in html and T8 not in html and "SN20260301001" in html
    signed_in(rclient, "tom")
    html = rclient.get(opened).get_data(as_text=True)
    assert T8 in html and T6 not in html


def test_individual_customers_are_masked_for_roles_without_personal_data(rclient):
    url = f"/reports/drill?{MONTH}&team=&table=revisit_coverage&row=important&col=due"
    signed_in(rclient, "root")
    assert "李四" in rclient.get(url).get_data(as_text=True)
    signed_in(rclient, "aud")
    html = rclient.get(url).get_data(as_text=True)
    assert "李*" in html and "李四" not in html


# ----------------------------------------------------------------------------------- page and CSV


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_csv_equals_the_table_on_the_page(rclient, lang):
    signed_in(rclient, "root", lang)
    html = rclient.get(f"/reports?{MONTH}").get_data(as_text=True)
    tables = page_tables(html)
    assert set(tables) == set(reports.TABLE_GROUPS)
    for table_id, (headers, rows) in tables.items():
        assert f'href="/reports/{table_id}.csv?month=2026-03&amp;team="' in html, table_id
        r = rclient.get(f"/reports/{table_id}.csv?{MONTH}&team=")
        assert r.status_code == 200 and r.mimetype == "text/csv"
        assert f'filename="careflow-{table_id}-2026-03.csv"' in r.headers["Content-Disposition"]
        raw = r.get_data()
        assert raw.startswith("\ufeff".encode())  # Excel opens UTF-8 Chinese correctly
        csv_rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
        assert csv_rows[0] == headers, table_id
        assert csv_rows[1:] == rows, table_id
    sla_headers, sla_rows = tables["sla_compliance"]
    if lang == "zh":
        assert sla_headers[:4] == ["优先级", "时限", "计时数", "达标"]
        assert ["紧急", "解决", "4", "2", "2", "0", "50.0%", "190.00"] in sla_rows
        assert "售后月度数据分析" in html and "2026 年 3 月 · 全部团队 · 北京时间" in html
    else:
        assert ["Urgent", "Solution", "4", "2", "2", "0", "50.0%", "190.00"] in sla_rows
        assert "After-sales monthly analysis" in html and "March 2026 · All teams · Beijing time" in html


def test_team_csv_is_the_teams_table(rclient):
    signed_in(rclient, "tom")
    html = rclient.get(f"/reports?{MONTH}").get_data(as_text=True)
    _, rows = page_tables(html)["ticket_volume"]
    assert rows[0] == ["受理", "5"]  # T2, T3, T4, T5, T8
    r = rclient.get(f"/reports/ticket_volume.csv?{MONTH}&team=technical_support")
    assert list(csv.reader(io.StringIO(r.get_data().decode("utf-8-sig"))))[1] == ["受理", "5"]
    assert "careflow-ticket_volume-2026-03-technical_support.csv" in r.headers["Content-Disposition"]


def test_drill_down_lists_the_tickets_behind_a_number(rclient):
    signed_in(rclient, "root")
    html = rclient.get(f"/reports?{MONTH}&team=").get_data(as_text=True)
    links = drill_links(html)
    breached = rclient.get(links[("sla_compliance", "urgent/solution", "breached")])
    assert breached.status_code == 200
    body = breached.get_data(as_text=True)
    listed = re.findall(r'<td class="mono">(?:<a [^>]*>)?(SN\d+)', body)
    assert listed == ["SN20260310001", "SN20260325001"]
    assert 'id="drill-value">2<' in body and "紧急 · 解决" in body
    complaints = rclient.get(links[("complaint_causes", "service_attitude", "late")]).get_data(as_text=True)
    assert re.findall(r'<td class="mono">(CP\d+)', complaints) == ["CP20260312001", "CP20260331001"]
    backlog = rclient.get(links[("backlog_groups", "technical_support", "overdue_tasks")]).get_data(as_text=True)
    assert 'data-kind="tasks"' in backlog and "SN20260320001" in backlog
    overdue = rclient.get(links[("revisit_coverage", "A", "overdue_now")]).get_data(as_text=True)
    assert "战略客户乙" in overdue
    assert ("ticket_volume", "open", "tickets") in links and ("problem_types", "other", "tickets") in links
    assert ("revisit_coverage", "core", "late") not in links  # zero: nothing to drill into


@pytest.mark.parametrize("url,status,text", [
    ("/reports?month=2026-13", 400, "月份请写成 YYYY-MM"),
    ("/reports?month=March", 400, "月份请写成 YYYY-MM"),
    ("/reports/sla_compliance.csv?month=2026-3x", 400, None),
    (f"/reports/nope.csv?{MONTH}", 404, None),
    (f"/reports/drill?{MONTH}&table=sla_compliance&row=urgent/solution&col=nope", 404, None),
    (f"/reports/drill?{MONTH}&table=sla_compliance&row=nope&col=met", 404, None),
    (f"/reports?{MONTH}&team=no_such_team", 403, None),
])
def test_bad_input_is_a_clear_error(rclient, url, status, text):
    signed_in(rclient, "root")
    r = rclient.get(url)
    assert r.status_code == status
    body = r.get_data(as_text=True)
    assert "Traceback" not in body
    if text:
        assert text in body and 'id="f-month"' in body  # the filters stay usable


def test_signed_out_goes_to_sign_in(rclient):
    r = rclient.get(f"/reports?{MONTH}")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


# ---------------------------------------------------------------------------------------- browser

@pytest.fixture
def live_server(rcf, monkeypatch):
    """The reports app on a real HTTP server (127.0.0.1, a free port)."""
    monkeypatch.setenv("CAREFLOW_INSECURE_COOKIES", "1")
    with serve(make_app(rcf)) as base:
        yield base


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reports_page_in_a_browser(live_server, browser):
    """Chinese page with every chart drawn by Chart.js, no script error or CSP violation; drill-down
    and the team filter work; screenshot test-output/reports.png."""
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"{page.url}: {e}"))
    page.on("response", lambda r: problems.append(f"{r.url}: {r.status}") if r.status >= 400 else None)
    sign_in(page, live_server, "root")
    page.get_by_role("link", name="统计报表").click()
    page.wait_for_url(re.compile(r".*/reports$"))
    page.select_option("#f-month", "2026-03")
    page.click(".report-filters button[type=submit]")
    page.wait_for_url(re.compile(r".*/reports\?month=2026-03.*"))
    for name in ("types", "times", "sla", "complaints", "satisfaction", "revisits", "backlog"):
        page.wait_for_selector(f"#chart-{name}[data-rendered=true]", timeout=15_000)
    assert page.locator(".chart-msg:visible").count() == 0
    kpis = page.locator(".kpis").inner_text()
    assert "本月受理工单" in kpis and "满意度" in kpis and "目标 90%" in kpis
    assert "2026 年 3 月 · 全部团队 · 北京时间" in page.locator("#report-scope").inner_text()
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    shot = out / "reports.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 100_000, "the screenshot looks empty"

    page.locator("#t-sla_compliance tbody tr").nth(1).locator("td").nth(4).locator("a").click()
    page.wait_for_url(re.compile(r".*/reports/drill\?.*"))
    assert page.locator("#drill-tickets tbody tr").count() == 2
    assert "SN20260325001" in page.locator("#drill-tickets").inner_text()
    page.go_back()
    page.select_option("#f-team", "technical_support")
    page.click(".report-filters button[type=submit]")
    page.wait_for_selector("#chart-types[data-rendered=true]")
    assert "技术支持" in page.locator("#report-scope").inner_text()
    assert not problems, problems
    context.close()
