"""Audit commands for auditors and operators: ``careflow audit verify | head | export | erase-pii``.

They join the ``audit`` group of ``careflow.cli.core`` (whose default, ``careflow audit
INSTANCE_ID``, lists one instance's steps). ``verify`` exits 0 when the chain is intact and
5 when it is broken, naming the first bad sequence number and what is wrong.
"""

from __future__ import annotations

import getpass
import os
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from careflow.cli.core import audit
from careflow.cli.util import emit_json, get_engine, handle_errors

EXIT_BROKEN = 5
LARGE_LOG = 10_000  # rows from which verify shows a progress bar


def register(cli: click.Group) -> None:  # noqa: ARG001 - the commands join the existing audit group
    """Attach the commands to ``careflow audit``."""
    for command in (verify, head, export, erase_pii):
        audit.add_command(command)


def _head_option(value: str | None, name: str):
    from engine.audit_verify import ChainHead

    if value is None:
        return None
    try:
        return ChainHead.parse(value)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=name) from err


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "cli"


@click.command("verify")
@click.option("--head", "head_text", default=None, metavar="SEQ:HASH",
              help="A head recorded earlier with 'careflow audit head': the log must still extend it.")
@click.option("--anchor", "anchor_text", default=None, metavar="SEQ:HASH",
              help="Start after this point (the last row pruned under the retention procedure).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def verify(head_text: str | None, anchor_text: str | None, as_json: bool) -> None:
    """Walk the audit chain: exit 0 if intact, 5 naming the first broken sequence number
    and what is wrong (edited, deleted, reordered, truncated, head_mismatch)."""
    from engine.audit import current_head
    from engine.audit_verify import record_verification, verify_chain

    recorded, anchor = _head_option(head_text, "--head"), _head_option(anchor_text, "--anchor")
    eng = get_engine()
    with eng.Session() as session:
        total = current_head(session)[0] - (anchor.seq if anchor else 0)
    if not as_json and total >= LARGE_LOG and sys.stderr.isatty():
        with click.progressbar(length=total, label="Verifying audit chain", file=sys.stderr,
                               show_pos=True) as bar:
            done = [0]

            def progress(checked: int, _total: int) -> None:
                bar.update(checked - done[0])
                done[0] = checked

            result = verify_chain(eng.db, head=recorded, anchor=anchor, progress=progress)
    else:
        result = verify_chain(eng.db, head=recorded, anchor=anchor)
    try:
        with eng.Session() as session, session.begin():
            record_verification(session, result, _operator())
    except SQLAlchemyError as err:  # a read-only connection may verify without keeping the result
        click.echo(f"note: the result was not recorded ({type(err).__name__})", err=True)
    if not result.ok:
        eng.record_incident("audit", "careflow audit verify", result.message,
                            tb=f"first bad seq {result.first_bad_seq}: {result.problem}")
    if as_json:
        emit_json(result.to_dict())
    elif result.ok:
        click.echo(f"OK: {result.rows_checked} rows verified ({result.pii_checked} personal-data values), "
                   f"head {result.last}")
    else:
        click.echo(f"BROKEN at seq {result.first_bad_seq}: {result.problem} — {result.message}", err=True)
        click.echo(f"({result.rows_checked} rows verified before it)", err=True)
    sys.exit(0 if result.ok else EXIT_BROKEN)


@click.command("head")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def head(as_json: bool) -> None:
    """Print the chain head as SEQ:HASH, to record outside the database (verify --head checks it)."""
    from engine.audit import current_head

    eng = get_engine()
    with eng.Session() as session:
        seq, hash_ = current_head(session)
    if as_json:
        emit_json({"seq": seq, "hash": hash_, "head": f"{seq}:{hash_}", "at": eng.now().isoformat()})
    else:
        click.echo(f"{seq}:{hash_}")


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="File to write (default stdout).")
@click.option("--from", "date_from", default=None, help="From this date/time (UTC; 2024-03-15 or ISO).")
@click.option("--to", "date_to", default=None, help="Up to this date/time (UTC; a date includes that day).")
@click.option("--user", default=None, help="Only steps by this user.")
@click.option("--process", default=None, help="Only this process id.")
@click.option("--version", default=None, help="Only this process version number.")
@click.option("--action", default=None, help="Only this action (task_completed, timer_fired, …).")
@click.option("--cause", default=None, help="Only this cause (user, timer, system, plugin, migration).")
@click.option("--ticket", default=None, help="Only the instance with this ticket number (business key).")
@click.option("--customer", default=None, help="Only instances of this customer (id or name).")
@click.option("--instance", default=None, help="Only this instance id.")
@click.option("--unmask", is_flag=True, help="Personal data in clear (needs --as a user allowed to; audited).")
@click.option("--as", "as_user", default=None, help="Who exports unmasked (audited).")
@click.option("--reason", default=None, help="Why personal data is exported in clear (audited).")
@handle_errors()
def export(fmt: str, output: str | None, date_from: str | None, date_to: str | None, user: str | None,
           process: str | None, version: str | None, action: str | None, cause: str | None, ticket: str | None,
           customer: str | None, instance: str | None, unmask: bool, as_user: str | None,
           reason: str | None) -> None:
    """Export the audit rows matching the filters as CSV or JSON, personal data masked."""
    from engine.audit_query import AuditFilter, export_audit

    if unmask and not as_user:
        raise click.UsageError("--unmask needs --as USER (a user allowed to see personal data)")
    if as_user and not unmask:
        raise click.UsageError("--as is only used with --unmask")
    flt = AuditFilter.from_params({"from": date_from, "to": date_to, "user": user, "process": process,
                                   "version": version, "action": action, "cause": cause, "ticket": ticket,
                                   "customer": customer, "instance": instance})
    eng = get_engine()
    with eng.Session() as session:
        chunks = export_audit(session, flt, fmt=fmt, by=as_user, unmask=unmask, reason=reason)
        frame = 1 if fmt == "csv" else 2  # chunks that are not rows: the header (and the JSON tail)
        if output is None:
            _write(chunks, sys.stdout, frame)
        else:
            part = f"{output}.part"
            try:
                with open(part, "w", encoding="utf-8", newline="") as f:
                    rows = _write(chunks, f, frame)
                os.replace(part, output)
            finally:
                if os.path.exists(part):
                    os.remove(part)
            click.echo(f"Exported {rows} rows to {output} ({'UNMASKED' if unmask else 'masked'})", err=True)


def _write(chunks, out, frame: int) -> int:
    """Write the chunks; returns how many rows they held."""
    n = 0
    for chunk in chunks:
        out.write(chunk)
        n += 1
    out.flush()
    return max(n - frame, 0)


@click.command("erase-pii")
@click.argument("values", nargs=-1, required=True)
@click.option("--user", default="system", help="Who erases (audited).")
@click.option("--reason", default=None, help="Why (audited), e.g. the PIPL request number.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def erase_pii(values: tuple[str, ...], user: str, reason: str | None, as_json: bool) -> None:
    """Erase a person's phones, e-mails and ID numbers from the audit trail (PIPL); the chain
    stays verifiable. VALUE '-' reads the values from stdin, one per line (keeps them out of
    the shell history)."""
    from engine.pii import erase_subject_pii

    given = []
    for v in values:
        if v == "-":
            given.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            given.append(v)
    eng = get_engine()
    with eng.Session() as session:
        erased = erase_subject_pii(session, given, user, reason)
    if as_json:
        emit_json({"erased": erased})
    else:
        click.echo(f"Erased {erased} personal-data value(s) from the audit trail; the chain is unchanged.")
