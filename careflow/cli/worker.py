"""Timers and SLA commands: ``worker``, ``overdue``, ``clocks`` and ``org``."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from careflow.cli.util import EXIT_ERROR, EXIT_INVALID, emit_json, get_engine, handle_errors


def register(cli: click.Group) -> None:
    """Attach the timer and SLA commands."""
    for command in (worker, overdue, clocks, org):
        cli.add_command(command)


@click.command()
@click.option("--once", is_flag=True, help="Fire everything due now, then exit.")
@click.option("--max-sleep", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="Longest sleep in seconds between looks for new work.")
@click.option("--batch", type=click.IntRange(min=1), default=200, show_default=True, hidden=True,
              help="Firings per kind before the worker looks at the other kinds.")
@handle_errors()
def worker(once: bool, max_sleep: float, batch: int) -> None:
    """Fire due BPMN timers and SLA escalations and deliver notifications, until stopped.

    Sleeps until the next due moment (at most --max-sleep seconds). SIGTERM or Ctrl-C
    finish the current firing and stop. Several workers may run on PostgreSQL.
    """
    from engine.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    eng = get_engine()
    w = Worker(eng, max_sleep=max_sleep, batch=batch)
    if not once:
        click.echo(f"Worker started (pid {_pid()}, max sleep {max_sleep:g} s); Ctrl-C to stop.", err=True)
    try:
        totals = w.run(once=once, handle_signals=True)
    except SQLAlchemyError as err:  # --once: a database it cannot use (the loop itself logs and retries)
        hint = " (run `careflow init-db` first)" if "no such table" in str(err) or "does not exist" in str(err) else ""
        click.echo(f"Error: database error: {str(err).splitlines()[0]}{hint}", err=True)
        sys.exit(EXIT_ERROR)
    finally:
        w.close()
    click.echo(f"Worker stopped: fired {totals.timers} timer(s), {totals.rungs} escalation rung(s); "
               f"delivered {totals.deliveries} message(s) in {totals.passes} pass(es).")


def _pid() -> int:
    return os.getpid()


def _short(iso: str | None, with_zone: bool = True) -> str:
    if not iso:
        return "-"
    from engine.sla import get_calendar

    cal = get_calendar()
    dt = datetime.fromisoformat(iso).astimezone(cal.tz)
    return dt.strftime("%Y-%m-%d %H:%M") + (f" {cal.timezone_name}" if with_zone else "")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def overdue(as_json: bool) -> None:
    """List overdue SLA clocks, most overdue first, with the escalation rung each has reached."""
    from engine.escalation import overdue as list_overdue

    eng = get_engine()
    with eng.Session() as session:
        rows = list_overdue(session, eng.now())
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No overdue SLA clocks.")
        return
    for r in rows:
        rung = r["rung"] or "no rung yet"
        if r["rung"] and r["rung_recipient"]:
            rung += f" -> {r['rung_recipient']}"
        nxt = f"; next {r['next_rung']} at {_short(r['next_rung_at'], False)}" if r["next_rung"] else ""
        paused = " (paused)" if r["status"] == "paused" else ""
        click.echo(f"{r['subject_key']}  {r['clock']}{paused}  owner {r['owner'] or '-'}  "
                   f"due {_short(r['due_at'])}  overdue {r['overdue_by']}  rung: {rung}{nxt}")


@click.command()
@click.argument("subject")
@click.option("--clock", "name", default=None, help="Only this clock (e.g. solution).")
@click.option("--zh", "chinese", is_flag=True, help="Explain in Chinese.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def clocks(subject: str, name: str | None, chinese: bool, as_json: bool) -> None:
    """Explain the SLA clocks of SUBJECT (a ticket or complaint key): budget, policy, tier,
    calendar, pauses, hence due at X; and the escalations fired."""
    from engine.sla import explain

    eng = get_engine()
    with eng.Session() as session:
        rows = explain(session, subject, name, now=eng.now())
    if as_json:
        emit_json(rows)
        return
    lang = "zh" if chinese else "en"
    for r in rows:
        head = f"{r['clock']} [{r['status']}{', OVERDUE' if r['overdue'] and r['status'] != 'breached' else ''}]"
        click.echo(f"{head}  owner {r['owner'] or '-'}  due {_short(r['due_at'])}")
        click.echo(f"  {r['sentence'][lang]}")
        for e in r["escalations"]:
            again = f" #{e['occurrence'] + 1}" if e["occurrence"] else ""
            click.echo(f"  escalated: {e['rung']}{again} -> {e['recipient']} at {_short(e['fired_at'], False)}")
        if r["next_rung"]:
            click.echo(f"  next rung: {r['next_rung']['rung']} at {_short(r['next_rung']['at'])}")


@click.group()
def org() -> None:
    """The org table: who supervises whom (escalations go to the owner's supervisor, then theirs)."""


@org.command("set")
@click.argument("user")
@click.option("--supervisor", default=None, help="The user's supervisor (created as a user if unknown).")
@click.option("--clear", is_flag=True, help="Remove the user's supervisor.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def org_set(user: str, supervisor: str | None, clear: bool, as_json: bool) -> None:
    """Set (or with --clear remove) USER's supervisor. Unknown users are created (role agent/supervisor)."""
    from engine.models import User

    if clear == (supervisor is not None):
        raise click.UsageError("give either --supervisor NAME or --clear")
    for name in (user, supervisor):
        if name is not None and (not name.strip() or len(name) > 150):
            raise click.UsageError(f"invalid user name {name!r}")
    if supervisor == user:
        _invalid(as_json, f"{user} cannot be their own supervisor")
    eng = get_engine()
    created = []
    with eng.Session() as session, session.begin():
        if supervisor is not None:
            chain, boss = [], supervisor
            while boss is not None and boss not in chain:
                if boss == user:
                    _invalid(as_json, f"{supervisor} reports to {user} (through {' -> '.join(chain) or 'nobody'}); "
                                      "a supervisor chain must not loop")
                chain.append(boss)
                boss = session.scalar(select(User.supervisor).where(User.username == boss))
        now = eng.now()
        rows = {}
        for name, role in ((user, "agent"), (supervisor, "supervisor")):
            if name is None:
                continue
            row = session.scalar(select(User).where(User.username == name))
            if row is None:
                row = User(username=name, role=role, active=True, created_at=now)
                session.add(row)
                created.append(name)
            rows[name] = row
        rows[user].supervisor = supervisor
    if as_json:
        emit_json({"user": user, "supervisor": supervisor, "created": created})
        return
    for name in created:
        click.echo(f"Created user {name}.")
    click.echo(f"{user}: supervisor {supervisor}" if supervisor else f"{user}: no supervisor")


def _invalid(as_json: bool, message: str) -> None:
    if as_json:
        emit_json({"error": "invalid", "message": message})
    else:
        click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_INVALID)


@org.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def org_show(as_json: bool) -> None:
    """Every user with their supervisor and manager (the supervisor's supervisor)."""
    from engine.models import User

    eng = get_engine()
    with eng.Session() as session:
        users = list(session.execute(select(User.username, User.supervisor, User.role).order_by(User.username)))
    sup = {u.username: u.supervisor for u in users}
    rows = [{"user": u.username, "role": u.role, "supervisor": u.supervisor,
             "manager": sup.get(u.supervisor) if u.supervisor else None} for u in users]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No users. Add reporting lines with: careflow org set USER --supervisor NAME")
        return
    width = max(len(r["user"]) for r in rows)
    for r in rows:
        click.echo(f"{r['user']:<{width}}  supervisor {r['supervisor'] or '-'}  manager {r['manager'] or '-'}")
