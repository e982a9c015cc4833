"""The monthly after-sales analysis page (售后月度数据分析): figures of ``engine.reports`` with
charts (Chart.js from npm, drawn by ``static/js/reports.js``), the month and the team as
filters, a CSV export of every table and drill-down lists of the tickets (complaints,
customers, tasks, surveys) behind each number.

Who sees which team is ``web.authz.report_teams``: process owners, auditors and admins every
team (and all together), supervisors and agents their own groups. Asking for another team
answers 403. The page, its CSV and its drill-down lists are all built from
``engine.reports.report_tables`` and ``table_matrix``, so a CSV is exactly the table shown.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from typing import Any

from flask import Blueprint, Response, abort, render_template, request, url_for
from flask_babel import gettext as _

from engine import reports
from engine.customers import mask_name
from engine.errors import ValidationFailed
from engine.tickets import STATUS_LABELS
from web import authz
from web.assets import chart_installed
from web.auth import current, engine, require_login
from web.i18n import lang

bp = Blueprint("reports", __name__)
bp.before_request(require_login)

PAGE_SIZE = 200
MONTHS_SHOWN = 36


class _Filters:
    """The month and team asked for, checked against what the user may see."""

    def __init__(self) -> None:
        p = current()
        with engine().Session() as session:
            self.teams = reports.known_teams(session)
        self.allowed = authz.report_teams(p, self.teams)
        if not self.allowed:
            abort(403)
        self.month = (request.args.get("month") or "").strip()[:20] or None
        if "team" in request.args:
            self.team = (request.args.get("team") or "").strip()[:200] or None
            if self.team not in self.allowed:
                abort(403)
        else:
            self.team = self.allowed[0]

    def args(self, period: str | None = None) -> dict[str, str]:
        """Query arguments that keep this month and team."""
        return {"month": period or self.month or "", "team": self.team or ""}


def _report(f: _Filters, groups: list[str] | None = None) -> dict[str, Any]:
    cf = engine()
    with cf.Session() as session:
        return reports.month_report(session, f.month, f.team, now=cf.now(), groups=groups)


def _tables(report: dict[str, Any], f: _Filters) -> list[dict[str, Any]]:
    """The report's tables as the page shows them: headers, text cells and drill-down links."""
    language = lang()
    out = []
    for table in reports.report_tables(report):
        headers, rows = reports.table_matrix(table, language)
        columns = table["columns"]
        shown = []
        for raw, texts in zip(table["rows"], rows, strict=True):
            cells = []
            for col, text in zip(columns, texts, strict=True):
                c = raw["cells"][col["key"]]
                link = None
                if c["refs"] and c["value"]:
                    link = url_for("reports.drill", table=table["id"], row=raw["key"], col=col["key"],
                                   **f.args(report["month"]))
                cells.append({"text": text, "link": link, "numeric": col["kind"] != "text"})
            shown.append(cells)
        out.append({"id": table["id"], "group": table["group"], "title": table["title"][language],
                    "headers": headers, "numeric": [c["kind"] != "text" for c in columns], "rows": shown,
                    "csv": url_for("reports.csv_export", table_id=table["id"], **f.args(report["month"]))})
    return out


def _t(label: dict[str, str]) -> str:
    return label.get(lang()) or label.get("en") or ""


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 1)


def _charts(report: dict[str, Any]) -> dict[str, str]:
    """Chart.js configurations (JSON) of the report, labels in the user's language."""
    v, t, s = report["ticket_volume"], report["resolution_times"], report["sla_compliance"]
    cp, sat, rv, bl = report["complaints"], report["satisfaction"], report["revisit_coverage"], report["backlog"]
    types = [r for r in v["by_type"] if r["count"]]
    priorities = [r for r in t["first_response"] if r["priority"]]
    sla_rows = {(r["priority"], r["clock"]): r for r in s["rows"]}
    sla_priorities = list(dict.fromkeys(r["priority"] for r in s["rows"]))
    charts = {
        "types": {"type": "doughnut", "labels": [_t(r["label"]) for r in types],
                  "datasets": [{"data": [r["count"] for r in types],
                                "colors": ["blue", "amber", "red", "grey", "purple", "teal"][:len(types)]}],
                  "empty": not types},
        "times": {"type": "bar", "labels": [_t(r["label"]) for r in priorities], "unit": _("h"),
                  "datasets": [
                      {"label": _("First response (mean)"), "color": "sky",
                       "data": [r["mean_hours"] for r in priorities]},
                      {"label": _("Resolution (mean)"), "color": "blue",
                       "data": [r["mean_hours"] for r in t["resolution"] if r["priority"]]},
                      {"label": _("Resolution (P90)"), "color": "purple",
                       "data": [r["p90_hours"] for r in t["resolution"] if r["priority"]]}],
                  "empty": not any(r["count"] for r in t["first_response"] + t["resolution"])},
        "sla": {"type": "bar", "labels": [_t(reports.label_of(reports.PRIORITY_LABELS, p)) for p in sla_priorities],
                "unit": "%", "max": 100,
                "datasets": [{"label": _t(reports.label_of(reports.ROLE_LABELS, role)),
                              "color": "sky" if role == "first_response" else "blue",
                              "data": [_pct(sla_rows[(p, role)]["compliance"]) for p in sla_priorities]}
                             for role in reports.ROLES],
                "empty": not any(r["total"]["count"] for r in s["rows"])},
        "complaints": {"type": "bar", "stacked": True, "horizontal": True,
                       "labels": [_t(r["label"]) for r in cp["clocks"]],
                       "datasets": [{"label": label, "color": color, "data": [r[key]["count"] for r in cp["clocks"]]}
                                    for key, label, color in (("met", _("Met"), "green"),
                                                              ("breached", _("Breached"), "red"),
                                                              ("pending", _("Pending"), "grey"))],
                       "empty": not cp["total"]["count"]},
        "satisfaction": {"type": "bar", "labels": [_t(d["label"]) for d in sat["dimensions"]], "max": 5,
                         "datasets": [{"label": _("Average score"), "color": "teal",
                                       "data": [d["average"] for d in sat["dimensions"]]}],
                         "empty": not sat["answers"]["count"]},
        "revisits": {"type": "bar", "stacked": True, "labels": [_t(r["label"]) for r in rv["tiers"]],
                     "datasets": [{"label": label, "color": color, "data": [r[key]["count"] for r in rv["tiers"]]}
                                  for key, label, color in (("on_time", _("On time"), "green"),
                                                            ("late", _("Late"), "amber"),
                                                            ("missed", _("Missed"), "red"),
                                                            ("pending", _("Pending"), "grey"))],
                     "empty": not rv["totals"]["due"]},
        "backlog": {"type": "bar", "stacked": True, "labels": [_t(g["label"]) for g in bl["groups"]],
                    "datasets": [
                        {"label": _("Open, on time"), "color": "blue",
                         "data": [g["open_tasks"]["count"] - g["overdue_tasks"]["count"] for g in bl["groups"]]},
                        {"label": _("Open, overdue"), "color": "red",
                         "data": [g["overdue_tasks"]["count"] for g in bl["groups"]]}],
                    "empty": not bl["groups"]},
    }
    return {k: json.dumps(v, ensure_ascii=False) for k, v in charts.items()}


def _kpis(report: dict[str, Any]) -> list[dict[str, Any]]:
    def fmt(value: Any, kind: str) -> str:
        return reports.format_value(value, kind, lang())

    v, s, cp = report["ticket_volume"], report["sla_compliance"]["overall"], report["complaints"]
    sat, rv = report["satisfaction"], report["revisit_coverage"]["totals"]
    rate = sat["rate"]
    return [
        {"label": _("Tickets opened"), "value": fmt(v["opened"]["count"], "count"),
         "note": _("%(n)d still open", n=v["open"]["count"])},
        {"label": _("Resolved"), "value": fmt(v["resolved"]["count"], "count"),
         "note": _("%(n)d reopened", n=v["reopened"]["count"])},
        {"label": _("First response in time"), "value": fmt(s["first_response"]["compliance"], "percent"),
         "note": _("%(n)d breached", n=s["first_response"]["breached"]["count"])},
        {"label": _("Solved in time"), "value": fmt(s["solution"]["compliance"], "percent"),
         "note": _("%(n)d breached", n=s["solution"]["breached"]["count"])},
        {"label": _("Satisfaction"), "value": fmt(rate, "percent"), "note": _("goal %(goal)s", goal=f"{sat['goal']:.0%}"),
         "state": None if rate is None else ("ok" if rate >= sat["goal"] else "bad")},
        {"label": _("Complaints resolved"), "value": fmt(cp["resolution_rate"], "percent"),
         "note": _("%(n)d complaints", n=cp["total"]["count"])},
        {"label": _("Revisits on time"), "value": fmt(rv["on_time_rate"], "percent"),
         "note": _("%(n)d customers overdue", n=rv["overdue_now"])},
    ]


def _month_title(month: str) -> str:
    year, mon = (int(x) for x in month.split("-"))
    if lang() == "zh":
        return f"{year} 年 {mon} 月"
    return date(year, mon, 1).strftime("%B %Y")


def _ticket_status(status: str) -> str:
    en, zh = STATUS_LABELS.get(status, (status, status))
    return zh if lang() == "zh" else en


def _team_label(team: str | None) -> str:
    if team is None:
        return _("All teams")
    return _t(reports.label_of(reports.GROUP_LABELS, team)) if team in reports.GROUP_LABELS else team


def _month_choices(selected: str | None) -> list[dict[str, str]]:
    """The month filter's options: the last ``MONTHS_SHOWN`` months, newest first (and the one asked for)."""
    now = reports.parse_month(None, engine().now())
    year, mon = (int(x) for x in now.month.split("-"))
    values = []
    for i in range(MONTHS_SHOWN):
        k = year * 12 + mon - 1 - i
        values.append(f"{k // 12:04d}-{k % 12 + 1:02d}")
    if selected and selected not in values:
        values.insert(0, selected)
    return [{"value": v, "label": _month_title(v)} for v in values]


@bp.route("/reports")
def index():
    """The month's figures with charts and tables."""
    f = _Filters()
    teams = [{"value": t or "", "label": _team_label(t)} for t in f.allowed]
    common = {"teams": teams, "team": f.team or "", "team_label": _team_label(f.team),
              "chart_installed": chart_installed()}
    try:
        report = _report(f)
    except ValidationFailed as err:
        problem = err.problems[0] if err.problems else None
        message = _("Write the month as YYYY-MM, e.g. 2026-03.") if problem and problem.field == "month" \
            else (problem.message if problem else str(err))
        return render_template("reports/index.html", report=None, error=message, month="",
                               months=_month_choices(None), **common), 400
    return render_template("reports/index.html", report=report, month=report["month"],
                           months=_month_choices(report["month"]),
                           month_title=_month_title(report["month"]), tables={
        t["id"]: t for t in _tables(report, f)}, charts=_charts(report), kpis=_kpis(report), error=None, **common)


@bp.route("/reports/<table_id>.csv")
def csv_export(table_id: str):
    """One table of the page as CSV (UTF-8 with BOM for Excel), exactly as the page shows it."""
    if table_id not in reports.TABLE_GROUPS:
        abort(404)
    f = _Filters()
    report = _report(f, [reports.TABLE_GROUPS[table_id]])
    table = next(t for t in reports.report_tables(report) if t["id"] == table_id)
    headers, rows = reports.table_matrix(table, lang())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(headers)
    writer.writerows(rows)
    name = f"careflow-{table_id}-{report['month']}{'-' + report['team'] if report['team'] else ''}.csv"
    return Response("\ufeff" + out.getvalue(), mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.route("/reports/drill")
def drill():
    """The tickets (complaints, customers, tasks, surveys) behind one number of the report."""
    f = _Filters()
    table_id, row_key, column = (request.args.get(k) or "" for k in ("table", "row", "col"))
    if table_id not in reports.TABLE_GROUPS:
        abort(404)
    report = _report(f, [reports.TABLE_GROUPS[table_id]])
    tables = reports.report_tables(report)
    found = reports.find_cell(tables, table_id, row_key, column)
    if found is None:
        abort(404)
    table, row, cell = found
    headers, rows = reports.table_matrix(table, lang())
    keys = [c["key"] for c in table["columns"]]
    row_text = rows[table["rows"].index(row)]
    heading = " · ".join(t for k, t, c in zip(keys, row_text, table["columns"], strict=True)
                         if c["kind"] == "text" and t != "—")
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    pii = authz.may_see_pii(current())
    sections = []
    cf = engine()
    with cf.Session() as session:
        for kind in reports.REF_KINDS:
            refs = cell["refs"].get(kind) or []
            if not refs:
                continue
            chunk = refs[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
            items = _items(session, kind, chunk, pii)
            sections.append({"kind": kind, "total": len(refs), "entries": items})
    pages = max([1] + [-(-s["total"] // PAGE_SIZE) for s in sections])
    return render_template("reports/drill.html", report=report, table=table, table_title=table["title"][lang()],
                           heading=heading, column=headers[keys.index(column)], value=row_text[keys.index(column)],
                           sections=sections, page=page, pages=pages, team_label=_team_label(f.team),
                           ticket_status=_ticket_status,
                           back=url_for("reports.index", **f.args(report["month"])) + f"#{table['group']}",
                           args={"table": table_id, "row": row_key, "col": column, **f.args(report["month"])})


def _items(session, kind: str, refs: list, pii: bool) -> list[dict[str, Any]]:
    if kind == "tickets":
        rows = reports.ticket_rows(session, refs)
        for r in rows:
            if r["customer_type"] == "individual" and not pii:
                r["customer_name"] = mask_name(r["customer_name"])
        return rows
    if kind == "complaints":
        return reports.complaint_rows(session, refs)
    if kind == "customers":
        rows = reports.customer_rows(session, refs)
        for r in rows:
            if r["customer_type"] == "individual" and not pii:
                r["name"] = mask_name(r["name"])
        return rows
    if kind == "tasks":
        return reports.task_rows(session, refs)
    return reports.survey_rows(session, refs)
