"""Customer commands: the registry (add, import, export, merge...), revisits, surveys, care, complaints.

Personal data (phone, e-mail, ID / credit code) is masked in output unless ``--unmask``
is given with a ``--user`` whose role may see it; unmasking is audited.
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import date, datetime
from pathlib import Path

import click

from careflow.cli.util import DefaultGroup, emit_json, get_engine, handle_errors, parse_json_option

UNMASK_ROLES = ("supervisor", "admin")  # may export every customer unmasked
VIEW_PII_ROLES = ("agent", "supervisor", "admin")  # may see one customer unmasked (agents: their own)


def register(cli: click.Group) -> None:
    """Attach the customers, revisits, survey, care and complaints groups."""
    for group in (customers, revisits, survey, care, complaints):
        cli.add_command(group)


def _require_role(session, user: str | None, roles: tuple[str, ...], what: str):
    from sqlalchemy import select

    from engine.models import User

    if not user:
        raise click.UsageError(f"{what} needs --user (a user whose role is one of: {', '.join(roles)})")
    row = session.scalar(select(User).where(User.username == user))
    if row is None or not row.active:
        raise click.UsageError(f"{what}: no active user {user!r}")
    if row.role not in roles:
        raise click.UsageError(f"{what}: role {row.role!r} of {user!r} may not see unmasked personal data "
                               f"(allowed: {', '.join(roles)})")
    return row


def _show_customer(d: dict, unmask: bool) -> dict:
    out = dict(d)
    if not unmask:
        out.update({k: v for k, v in d["masked"].items() if k in out})
    out.pop("masked", None)
    return out


# ------------------------------------------------------------------------------- customers


@click.group(cls=DefaultGroup)
def customers() -> None:
    """The customer registry: add, update, import, export, merge, show, list."""


@customers.command("add")
@click.option("--data", required=True, help="The customer as a JSON object (@file or - for stdin).")
@click.option("--merge-duplicate", is_flag=True,
              help="If the customer already exists (same credit code, ID number or phone), update it instead.")
@click.option("--user", default="system", help="Who registers the customer (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def customers_add(data: str, merge_duplicate: bool, user: str, as_json: bool) -> None:
    """Register a customer. Exit 2 with field errors; exit 3 if it duplicates an existing customer."""
    from engine.customers import DuplicateCustomer, add_customer, customer_to_dict

    eng = get_engine()
    payload = parse_json_option(data)
    try:
        with eng.Session() as session, session.begin():
            c = add_customer(session, payload, pm=eng.pm, actor=user, now=eng.now(),
                             on_duplicate="merge" if merge_duplicate else "error")
            d = customer_to_dict(c)
    except DuplicateCustomer as err:
        if as_json:
            emit_json({"error": "duplicate", "message": str(err), "matches": err.matches})
        else:
            click.echo(f"Error: {err}", err=True)
        sys.exit(3)
    if as_json:
        emit_json(_show_customer(d, False))
        return
    click.echo(f"Customer #{d['id']} {d['name']}: tier {d['tier']}, next revisit {_day(d['revisit_due_at'])}")


@customers.command("update")
@click.argument("customer_id", type=int)
@click.option("--data", required=True, help="Fields to change as a JSON object; null clears an optional field.")
@click.option("--user", default="system", help="Who changes the customer (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def customers_update(customer_id: int, data: str, user: str, as_json: bool) -> None:
    """Change a customer's fields; the tier and the revisit schedule follow."""
    from engine.customers import customer_to_dict, update_customer

    eng = get_engine()
    with eng.Session() as session, session.begin():
        c = update_customer(session, customer_id, parse_json_option(data), pm=eng.pm, actor=user, now=eng.now())
        d = customer_to_dict(c)
    if as_json:
        emit_json(_show_customer(d, False))
        return
    click.echo(f"Customer #{d['id']} updated: tier {d['tier']}, next revisit {_day(d['revisit_due_at'])}")


@customers.command("show")
@click.argument("customer_id", type=int)
@click.option("--unmask", is_flag=True, help="Show personal data unmasked (needs --user with the right; audited).")
@click.option("--user", default=None, help="Who looks (for --unmask).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def customers_show(customer_id: int, unmask: bool, user: str | None, as_json: bool) -> None:
    """A customer and its contact history."""
    from engine.customers import audit, get_customer, list_contacts

    eng = get_engine()
    with eng.Session() as session, session.begin():
        d = get_customer(session, customer_id)
        contacts = list_contacts(session, customer_id)
        if unmask:
            who = _require_role(session, user, VIEW_PII_ROLES, "--unmask")
            if who.role == "agent" and d.get("account_manager") != user:
                raise click.UsageError(f"--unmask: {user} is not the account manager of customer #{customer_id}")
            audit(session, "customer_unmasked", actor=user, at=eng.now(),
                  details={"customer_id": d["id"], "via": "cli show"})
    shown = _show_customer(d, unmask)
    if as_json:
        emit_json({**shown, "contacts": contacts})
        return
    click.echo(f"Customer #{shown['id']}: {shown['name']} ({shown['customer_type']}, tier {shown['tier']})"
               + (f" — merged into #{shown['merged_into']}" if shown["status"] == "merged" else ""))
    for key in ("credit_code", "id_number", "contact_person", "contact_title", "phone", "email", "industry",
                "source", "annual_spend", "strategic_value", "account_manager", "first_contact_date", "birthday",
                "signing_date"):
        if shown.get(key) not in (None, "", []):
            click.echo(f"  {key:<19} {shown[key]}")
    if shown.get("need_types"):
        click.echo(f"  {'need_types':<19} {', '.join(shown['need_types'])}")
    click.echo(f"  {'next revisit':<19} {_day(shown['revisit_due_at'])}   last revisit {_day(shown['last_revisit_at'])}")
    click.echo(f"Contacts ({len(contacts)}):")
    for c in contacts:
        click.echo(f"  {c['at'][:16].replace('T', ' ')}  {c['kind']:<9} {c['by'] or '-':<12} {c['summary']}")


@customers.command("list")
@click.option("--q", "query", default=None, help="Search name, contact, e-mail, phone digits, code or id.")
@click.option("--tier", default=None, help="Only this tier.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (personal data masked).")
@handle_errors()
def customers_list(query: str | None, tier: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Customers (personal data masked)."""
    from engine.customers import count_customers, search_customers

    eng = get_engine()
    with eng.Session() as session:
        rows = [_show_customer(d, False) for d in search_customers(session, query, limit, offset, tier=tier)]
        total = count_customers(session, query, tier=tier)
    if as_json:
        emit_json({"total": total, "items": rows})
        return
    if not rows:
        click.echo("No customers.")
    for d in rows:
        click.echo(f"#{d['id']:<5} {d['tier'] or '-':<10} {d['name']:<30} {d['phone']:<16} "
                   f"{d['account_manager'] or '-':<12} next revisit {_day(d['revisit_due_at'])}")
    if total > offset + len(rows):
        click.echo(f"... {total} in all (use --offset {offset + len(rows)})")


@customers.command("contact")
@click.argument("customer_id", type=int)
@click.option("--kind", type=click.Choice(["note", "revisit", "ticket", "complaint", "survey"]), default="note",
              show_default=True)
@click.option("--summary", required=True, help="What was said or promised.")
@click.option("--user", required=True, help="Who had the contact.")
@handle_errors()
def customers_contact(customer_id: int, kind: str, summary: str, user: str) -> None:
    """Record a contact with a customer (no promise without a record)."""
    from engine.customers import record_contact

    eng = get_engine()
    with eng.Session() as session, session.begin():
        row = record_contact(session, customer_id, kind, summary, by=user, at=eng.now())
        click.echo(f"Contact #{row.id} recorded for customer #{row.customer_id}.")


@customers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the bad rows (default: FILE-report.csv next to FILE).")
@click.option("--on-duplicate", type=click.Choice(["skip", "merge"]), default="skip", show_default=True,
              help="A row matching an existing customer but adding data: report it (skip) or update the customer.")
@click.option("--user", default="system", help="Who imports (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@handle_errors()
def customers_import(file: Path, report_path: Path | None, on_duplicate: str, user: str, as_json: bool) -> None:
    """Import customers from a CSV file (UTF-8 or GB18030; English or Chinese column names).

    Good rows are kept; bad rows go to the report file with their row number (the header
    is row 1) and reason. Importing the same file again creates no duplicates.
    """
    from engine.customers import import_customers, read_csv

    eng = get_engine()
    header, rows = read_csv(file)
    with click.progressbar(length=len(rows), label="Importing customers", file=sys.stderr) as bar:
        result = import_customers(eng, rows, actor=user, on_duplicate=on_duplicate, progress=bar.update)
    report_path = report_path or file.with_name(f"{file.stem}-report.csv")
    if result.errors:
        _write_report(report_path, header, result.errors)
    elif report_path.exists() and report_path.name.endswith("-report.csv"):
        report_path.unlink()  # an old report of this file would now be misleading
    summary = result.to_dict()
    summary["report"] = str(report_path) if result.errors else None
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
               f"{result.bad} not imported.")
    if result.errors:
        click.echo(f"Bad rows are listed with their reasons in {report_path}")


def _write_report(path: Path, header: list[str], errors: list) -> None:
    from engine.customers import FIELDS

    columns = [k for k in FIELDS]
    extra = [k for e in errors for k in e.values if k not in columns and k != "__extra__"]
    columns += sorted(set(extra))
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "reason", *columns])
        for e in errors:
            w.writerow([e.row, " | ".join(e.reasons), *[e.values.get(k, "") for k in columns]])


@customers.command("export")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV file to write (default: standard output).")
@click.option("--unmask", is_flag=True, help="Export personal data unmasked (needs --user: supervisor or admin).")
@click.option("--user", default=None, help="Who exports (audited).")
@click.option("--include-merged", is_flag=True, help="Also export customers merged into others.")
@handle_errors()
def customers_export(output: Path | None, unmask: bool, user: str | None, include_merged: bool) -> None:
    """Export customers as CSV (UTF-8 with BOM for Excel); personal data masked by default."""
    from engine.customers import EXPORT_COLUMNS, audit, export_rows

    eng = get_engine()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EXPORT_COLUMNS))
    writer.writeheader()
    count = 0
    with eng.Session() as session, session.begin():
        if unmask:
            _require_role(session, user, UNMASK_ROLES, "--unmask")
        for row in export_rows(session, unmask=unmask, include_merged=include_merged):
            writer.writerow(row)
            count += 1
        audit(session, "customers_exported", actor=user or "system", at=eng.now(),
              details={"count": count, "unmasked": unmask, "to": "file" if output else "stdout"})
    if output:
        output.write_text(buffer.getvalue(), encoding="utf-8-sig")
        click.echo(f"Exported {count} customers to {output}" + (" (unmasked)" if unmask else " (masked)"), err=True)
    else:
        click.echo(buffer.getvalue(), nl=False)


@customers.command("merge")
@click.argument("keep_id", type=int)
@click.argument("drop_id", type=int)
@click.option("--user", default="system", help="Who merges (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def customers_merge(keep_id: int, drop_id: int, user: str, as_json: bool) -> None:
    """Merge duplicate DROP_ID into KEEP_ID: gaps are filled, contact histories joined, both records kept."""
    from engine.customers import merge_customers

    eng = get_engine()
    with eng.Session() as session, session.begin():
        m = merge_customers(session, keep_id, drop_id, pm=eng.pm, actor=user, now=eng.now())
        out = {"merge_id": m.id, "kept_id": m.kept_id, "dropped_id": m.dropped_id, "filled_fields": m.filled_fields,
               "moved_contacts": m.moved_contacts}
    if as_json:
        emit_json(out)
        return
    filled = f"; filled: {', '.join(out['filled_fields'])}" if out["filled_fields"] else ""
    click.echo(f"Merged customer #{drop_id} into #{keep_id} ({out['moved_contacts']} contact(s) moved{filled}).")


@customers.command("retier")
@click.option("--user", default="system", help="Who re-tiers (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def customers_retier(user: str, as_json: bool) -> None:
    """Re-tier every customer with the current tier rule (after changing CAREFLOW_TIER_SCHEME or a plugin)."""
    from engine.customers import retier_all

    eng = get_engine()
    with eng.Session() as session, session.begin():
        changes = retier_all(session, pm=eng.pm, actor=user, now=eng.now())
    if as_json:
        emit_json({"changed": changes})
        return
    click.echo(f"{len(changes)} customer(s) changed tier.")
    for c in changes:
        click.echo(f"  #{c['id']}: {c['from']} -> {c['to']}")


# -------------------------------------------------------------------------------- revisits


@click.group(cls=DefaultGroup)
def revisits() -> None:
    """Customer revisits (回访) by tier cadence."""


def _parse_now(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date-time, e.g. 2026-04-01T09:00:00+08:00",
                                 param_hint="--now") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-04-01T09:00:00+08:00", param_hint="--now")
    return moment


@revisits.command("due")
@click.option("--now", "now_text", default=None, help="Pretend it is this moment (ISO 8601 with zone).")
@click.option("--dry-run", is_flag=True, help="Only list the customers that are due.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def revisits_due(now_text: str | None, dry_run: bool, as_json: bool) -> None:
    """Start one revisit instance per customer whose revisit is due (and per requested revisit).

    Safe to run again, or from several machines at once: each revisit starts once.
    """
    from engine.revisits import due_customers, start_due_revisits

    eng = get_engine()
    now = _parse_now(now_text) or eng.now()
    if dry_run:
        with eng.Session() as session:
            due = [{"customer_id": c.id, "name": c.name, "tier": c.tier, "due_at": c.revisit_due_at.isoformat()}
                   for c in due_customers(session, now)]
        if as_json:
            emit_json({"now": now.isoformat(), "due": due})
            return
        click.echo(f"{len(due)} customer(s) due at {now.isoformat()}")
        for d in due:
            click.echo(f"  #{d['customer_id']:<5} {d['tier'] or '-':<10} {d['name']}  due {_day(d['due_at'])}")
        return
    started = start_due_revisits(eng, now)
    if as_json:
        emit_json({"now": now.isoformat(), "started": started})
        return
    click.echo(f"Started {len(started)} revisit(s)" + (f": instances {', '.join(map(str, started))}" if started
                                                        else "."))


# ---------------------------------------------------------------------------------- survey


@click.group(cls=DefaultGroup)
def survey() -> None:
    """Satisfaction surveys: links for customers, answers taken on the phone."""


@survey.command("link")
@click.option("--customer", "customer_id", type=int, required=True, help="Customer id.")
@click.option("--ticket", default=None, help="The ticket the survey is about (e.g. SN20240315001).")
@click.option("--expires-in", default="P7D", show_default=True, help="Lifetime as an ISO 8601 duration.")
@click.option("--user", default="system", help="Who creates the link (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def survey_link(customer_id: int, ticket: str | None, expires_in: str, user: str, as_json: bool) -> None:
    """Create a signed, single-use survey link for a customer."""
    from engine.surveys import create_survey_link

    out = create_survey_link(get_engine(), customer_id, ticket_number=ticket, expires_in=expires_in, actor=user)
    if as_json:
        emit_json(out)
        return
    click.echo(out["url"])
    click.echo(f"  valid until {out['expires_at']}, once", err=True)


@survey.command("submit")
@click.argument("token")
@click.option("--data", required=True, help="Answers as JSON: four scores 1-5 and optional suggestions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def survey_submit(token: str, data: str, as_json: bool) -> None:
    """Answer a survey through its link TOKEN (what the customer's browser does). Exit 3: used or expired."""
    from engine.surveys import submit_survey_link

    out = submit_survey_link(get_engine(), _token_of(token), parse_json_option(data))
    _echo_survey(out, as_json)


@survey.command("take")
@click.option("--customer", "customer_id", type=int, required=True, help="Customer id.")
@click.option("--data", required=True, help="Answers as JSON: four scores 1-5 and optional suggestions.")
@click.option("--ticket", default=None, help="The ticket the survey is about.")
@click.option("--user", required=True, help="The agent who took the survey on the phone.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def survey_take(customer_id: int, data: str, ticket: str | None, user: str, as_json: bool) -> None:
    """Record a survey taken on the phone."""
    from engine.surveys import record_phone_survey

    out = record_phone_survey(get_engine(), customer_id, parse_json_option(data), taken_by=user, ticket_number=ticket)
    _echo_survey(out, as_json)


def _token_of(value: str) -> str:
    return value.rstrip("/").rsplit("/", 1)[-1]


def _echo_survey(out: dict, as_json: bool) -> None:
    if as_json:
        emit_json(out)
        return
    click.echo(f"Survey #{out['response_id']} recorded (overall {out['overall']}/5).")
    if out["followup_instance_id"]:
        click.echo(f"  Low score: supervisor follow-up started (instance {out['followup_instance_id']}).")
    elif out["low_score"]:
        click.echo("  Low score, but no follow-up could start: see the incidents.")


# ------------------------------------------------------------------------------------ care


@click.group(cls=DefaultGroup)
def care() -> None:
    """Customer care (关怀): birthday, holiday and anniversary greetings."""


@care.command("run")
@click.option("--date", "day_text", default=None, help="The day (YYYY-MM-DD, China time; default today).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def care_run(day_text: str | None, as_json: bool) -> None:
    """Queue the greetings due on a day. Running it again sends nothing twice."""
    from engine.care import run_care

    day = None
    if day_text:
        try:
            day = date.fromisoformat(day_text)
        except ValueError:
            raise click.BadParameter(f"{day_text!r} is not a date like 2026-10-01", param_hint="--date") from None
    out = run_care(get_engine(), day)
    if as_json:
        emit_json(out)
        return
    detail = ", ".join(f"{k} {v}" for k, v in sorted(out["by_occasion"].items()))
    click.echo(f"{out['date']}: {out['sent']} greeting(s) queued" + (f" ({detail})" if detail else "")
               + (f"; {out['already_sent']} already sent earlier" if out["already_sent"] else "") + ".")


# ------------------------------------------------------------------------------ complaints


@click.group(cls=DefaultGroup)
def complaints() -> None:
    """Complaints (投诉): the weekly review by cause."""


@complaints.command("review")
@click.option("--week", default=None, help="ISO week, e.g. 2026-W11 (default: the current week, China time).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def complaints_review(week: str | None, as_json: bool) -> None:
    """The week's complaints by cause, with 1-24-48 compliance, for the weekly review."""
    from engine.complaints import weekly_review

    eng = get_engine()
    with eng.Session() as session:
        review = weekly_review(session, week, now=eng.now())
    if as_json:
        emit_json(review)
        return
    rate = f"{review['resolution_rate']:.0%}" if review["resolution_rate"] is not None else "-"
    click.echo(f"Complaints of {review['week']}: {review['total']} received, {review['resolved']} resolved "
               f"({rate}), {review['resolved_within_48h']} within 48 h, {review['late']} late.")
    for g in review["causes"]:
        hours = f"{g['mean_hours_to_resolve']} h" if g["mean_hours_to_resolve"] is not None else "-"
        click.echo(f"  {g['label']['zh']} / {g['label']['en']}: {g['count']} (resolved {g['resolved']}, open "
                   f"{g['open']}, late {g['late']}, mean time to resolve {hours})")
        for c in g["complaints"]:
            click.echo(f"    {c['number']}  {c['status']:<13} {c['customer_name'] or '-'}  {c['content'][:60]}")


@complaints.command("show")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def complaints_show(number: str, as_json: bool) -> None:
    """One complaint with its deadlines and milestones."""
    from engine.complaints import get_complaint

    eng = get_engine()
    with eng.Session() as session:
        c = get_complaint(session, number)
    if as_json:
        emit_json(c)
        return
    click.echo(f"{c['number']} · {c['status']} · {c['cause_label']['zh']} · {c['customer_name'] or '-'}")
    for m, done in (("respond", "responded_at"), ("plan", "planned_at"), ("resolve", "resolved_at")):
        state = {True: "in time", False: "LATE", None: "open"}[c["in_time"][m]]
        click.echo(f"  {m:<8} due {c[m + '_due'] or '-'}  done {c[done] or '-'}  {state}")


def _day(value: str | None) -> str:
    return value[:10] if value else "-"
