"""``careflow report --month YYYY-MM [--team G] [--json]``: the monthly after-sales analysis
(售后月度数据分析) as tables, or as JSON with the ticket numbers behind every figure.
The figures are ``engine.reports.month_report``; the tables are the ones the web page shows."""

from __future__ import annotations

import unicodedata
from datetime import datetime

import click

from careflow.cli.util import emit_json, get_engine, handle_errors


def register(cli: click.Group) -> None:
    """Attach ``careflow report``."""
    cli.add_command(report)


def _width(text: str) -> int:
    """Columns a text takes in a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(width - _width(text), 0)
    return gap + text if right else text + gap


def render_table(title: str, headers: list[str], rows: list[list[str]], kinds: list[str]) -> str:
    """A table as aligned text: numbers right-aligned, text left-aligned."""
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = [k != "text" for k in kinds]
    lines = [title, "  ".join(_pad(h, w, r) for h, w, r in zip(headers, widths, right, strict=True)),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.append("  ".join(_pad(c, w, r) for c, w, r in zip(row, widths, right, strict=True)))
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _parse_now(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 date-time", param_hint="--now") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-04-01T09:00:00+08:00", param_hint="--now")
    return moment


@click.command()
@click.option("--month", default=None, metavar="YYYY-MM",
              help="The month (Beijing time); default: the current month.")
@click.option("--team", default=None, metavar="GROUP",
              help="Only this team: a group key such as technical_support or customer_service.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output with the references behind each figure.")
@click.option("--zh", is_flag=True, help="Table headings and labels in Chinese.")
@click.option("--now", "now_text", default=None, help="Figures as known at this moment (ISO 8601 with zone).")
@handle_errors()
def report(month: str | None, team: str | None, as_json: bool, zh: bool, now_text: str | None) -> None:
    """Monthly after-sales analysis: tickets, response and resolution times, SLA compliance,
    complaints (1-24-48), satisfaction, revisit coverage and today's backlog."""
    from engine import reports
    from engine.errors import ValidationFailed

    now = _parse_now(now_text)
    cf = get_engine()
    with cf.Session() as session:
        try:
            data = reports.month_report(session, month, team, now=now or cf.now())
        except ValidationFailed as err:
            p = err.problems[0]
            raise click.BadParameter(f"{p.message}; {p.hint}" if p.hint else p.message,
                                     param_hint=f"--{p.field}" if p.field else None) from None
    if as_json:
        emit_json(data)
        return
    lang = "zh" if zh else "en"
    as_of = datetime.fromisoformat(data["as_of"]).astimezone(reports.LOCAL_TZ).strftime("%Y-%m-%d %H:%M")
    team_text = data["team"] or ("全部团队" if zh else "all teams")
    if zh:
        click.echo(f"售后月度数据分析 {data['month']} · 团队：{team_text} · 北京时间 · 截至 {as_of}")
    else:
        click.echo(f"After-sales analysis {data['month']} · team: {team_text} · Beijing time · as of {as_of}")
    for table in reports.report_tables(data):
        headers, rows = reports.table_matrix(table, lang)
        kinds = [c["kind"] for c in table["columns"]]
        click.echo("")
        click.echo(render_table(table["title"][lang], headers, rows, kinds))
