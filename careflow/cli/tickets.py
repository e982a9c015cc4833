"""``careflow tickets`` (list) and ``careflow ticket NUMBER`` (one ticket), read from the
ticket tables only: no instance is deserialized."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import click

from careflow.cli.util import emit_json, get_engine, handle_errors

SH = ZoneInfo("Asia/Shanghai")


def register(cli: click.Group) -> None:
    """Attach the ticket commands."""
    cli.add_command(tickets)
    cli.add_command(ticket)


def _local(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(SH).strftime("%Y-%m-%d %H:%M")


@click.command()
@click.option("--status", type=click.Choice(
    ["open", "diagnosing", "remote", "on_site", "resolved", "revisit", "reopened", "closed"]),
    default=None, help="Only tickets with this status.")
@click.option("--limit", type=click.IntRange(1, 10000), default=200, show_default=True,
              help="At most this many tickets (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def tickets(status: str | None, limit: int, as_json: bool) -> None:
    """List after-sales tickets, newest first (times in Beijing time)."""
    from engine.tickets import list_tickets

    cf = get_engine()
    with cf.Session() as session:
        rows = list_tickets(session, status=status, limit=limit, now=cf.now())
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No tickets." if status is None else f"No tickets with status {status}.")
        return
    click.echo(f"{'NUMBER':<15} {'STATUS':<11} {'PRIORITY':<9} {'TYPE':<17} {'CREATED':<16} "
               f"{'SOLUTION DUE':<16} CUSTOMER")
    for t in rows:
        mark = " OVERDUE" if t["overdue"] else ""
        click.echo(f"{t['number']:<15} {t['status']:<11} {t['priority']:<9} {t['type']:<17} "
                   f"{_local(t['created_at']):<16} {_local(t['solution_due']):<16} "
                   f"{t['customer']['name'] or '-'}{mark}")
    click.echo(f"{len(rows)} ticket(s).")


@click.command()
@click.argument("number")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def ticket(number: str, as_json: bool) -> None:
    """Show one ticket: facts, deadlines of every round, status history, instance id."""
    from engine.tickets import get_ticket

    cf = get_engine()
    with cf.Session() as session:
        t = get_ticket(session, number, now=cf.now())
    if as_json:
        emit_json(t)
        return
    c = t["customer"]
    click.echo(f"Ticket {t['number']}  {t['status_label']['zh']} / {t['status_label']['en']}"
               f"{'  OVERDUE' if t['overdue'] else ''}  (instance {t['instance_id']}, round {t['round']}, "
               f"reopened {t['reopen_count']}x)")
    click.echo(f"  customer:  {c['name'] or '-'} ({c['type'] or '-'}, tier {c['tier'] or '-'}, id {c['id'] or '-'}), "
               f"contact {c['contact'] or '-'} {c['phone'] or ''}")
    click.echo(f"  type:      {t['type']}, priority {t['priority']}, channel {t['channel'] or '-'}")
    click.echo(f"  problem:   {t['symptom'] or '-'}")
    click.echo(f"  received:  {_local(t['received_at'])}   opened {_local(t['created_at'])} by {t['created_by']}")
    click.echo(f"  due:       first response {_local(t['first_response_due'])}, solution {_local(t['solution_due'])}"
               f" ({t['sla_policy'] or '-'})")
    click.echo(f"  done:      first response {_local(t['first_response_at'])}, resolved "
               f"{_local(t['resolved_at'])} ({t['resolved_by'] or '-'}), closed {_local(t['closed_at'])}")
    if t["engineer"] or t["visit_at"]:
        click.echo(f"  engineer:  {t['engineer'] or '-'}, visit {_local(t['visit_at'])}")
    for part in t["spare_parts"]:
        click.echo(f"  part:      {part.get('name')} x{part.get('quantity')}")
    if t["overall_score"] is not None:
        click.echo(f"  satisfaction: overall {t['overall_score']}/5")
    click.echo("Deadlines (SLA clocks):")
    for d in t["deadlines"]:
        click.echo(f"  round {d['round']} {d['name']:<15} {d['budget']:<6} due {_local(d['due_at'])}  {d['status']}"
                   f"{' OVERDUE' if d['overdue'] else ''}")
        for h in d["history"]:
            if h.get("event") == "extended":
                click.echo(f"      renegotiated by {h['by']}: {_local(h['from'])} -> {_local(h['to'])}: {h['reason']}")
    click.echo("History:")
    for e in t["history"]:
        why = f" ({e['reason']})" if e["reason"] else ""
        click.echo(f"  {_local(e['at'])}  round {e['round']}  {e['status']:<11} by {e['by'] or '-'}{why}")
