"""Version commands for process owners: ``careflow versions | diff | migrate``.

``migrate`` exits 0 when every instance moved (or, with ``--dry-run``, would move) and 2
when some could not, listing them with the reasons; it shows a progress bar on real runs.
"""

from __future__ import annotations

import sys

import click

from careflow.cli.util import EXIT_INVALID, emit_json, get_engine, handle_errors


def register(cli: click.Group) -> None:
    """Attach the version commands to the root group."""
    for command in (versions, diff, migrate):
        cli.add_command(command)


@click.command()
@click.argument("process_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def versions(process_id: str, as_json: bool) -> None:
    """List the versions of PROCESS_ID with author, time, checksum, comment and instance counts."""
    from engine.versions import list_versions

    eng = get_engine()
    with eng.Session() as session:
        rows = list_versions(session, process_id)
    if as_json:
        emit_json({"process_id": process_id, "versions": rows})
        return
    click.echo(f"{'version':>7}  {'deployed (UTC)':<16}  {'author':<14}  {'checksum':<12}  {'running':>7}  "
               f"{'total':>6}  comment")
    for v in rows:
        when = (v["created_at"] or "")[:16].replace("T", " ")
        flags = " (called only)" if v["called_only"] else ""
        click.echo(f"{v['version']:>7}  {when:<16}  {(v['author'] or '-'):<14.14}  {v['checksum'][:12]:<12}  "
                   f"{v['running']:>7}  {v['total']:>6}  {(v['comment'] or '')}{flags}")


@click.command()
@click.argument("process_id")
@click.argument("a", type=int)
@click.argument("b", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def diff(process_id: str, a: int, b: int, as_json: bool) -> None:
    """Compare versions A and B of PROCESS_ID: changed elements, then the XML and form diffs."""
    from engine.versions import diff_versions

    eng = get_engine()
    with eng.Session() as session:
        result = diff_versions(session, process_id, a, b)
    if as_json:
        emit_json(result)
        return
    els = result["elements"]
    click.echo(f"{process_id}: version {a} -> {b}: {len(els['added'])} added, {len(els['removed'])} removed, "
               f"{len(els['changed'])} changed, {len(els['moved'])} moved in the diagram only")
    for mark, key in (("+", "added"), ("-", "removed")):
        for e in els[key]:
            click.echo(f"  {mark} {e['type']} {e['id']}" + (f"  {e['name']}" if e["name"] else ""))
    for e in els["changed"]:
        click.echo(f"  ~ {e['type']} {e['id']}" + (f"  {e['name']}" if e["name"] else ""))
        for c in e["changes"]:
            click.echo(f"      {c['field']}: {_one_line(c['old'])} -> {_one_line(c['new'])}")
    for section in ("files", "forms"):
        for f in result[section]:
            if f["status"] != "unchanged":
                click.echo(f"\n{section[:-1]} {f['name']} ({f['status']})")
                click.echo(f["diff"].rstrip("\n"))


def _one_line(value) -> str:
    if value is None:
        return "(none)"
    text = str(value).replace("\n", "⏎")
    return text if len(text) <= 100 else text[:97] + "..."


@click.command()
@click.argument("process_id")
@click.option("--from", "from_version", type=int, required=True, help="The version the instances are on.")
@click.option("--to", "to_version", type=int, required=True, help="The version to move them to.")
@click.option("--dry-run", is_flag=True, help="Only show, per instance, what would move and what cannot.")
@click.option("--instance", "instance_ids", type=int, multiple=True,
              help="Only this instance (repeatable); default: every running instance on --from.")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True,
              help="Instances read per batch (each instance moves in its own transaction).")
@click.option("--user", default="system", help="Who migrates (audited).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def migrate(process_id: str, from_version: int, to_version: int, dry_run: bool, instance_ids: tuple[int, ...],
            batch_size: int, user: str, as_json: bool) -> None:
    """Move running instances of PROCESS_ID from version --from to version --to.

    Exit 0: all moved (or would move); exit 2: some could not (listed, they stay on their version).
    """
    from engine.migration import migrate_instances, plan_migration

    if from_version == to_version:
        raise click.BadParameter("--from and --to are the same version", param_hint="--to")
    eng = get_engine()
    ids = list(instance_ids) or None
    if dry_run:
        plans = plan_migration(eng, process_id, from_version, to_version, ids)
        stuck = [p for p in plans if not p.movable]
        if as_json:
            emit_json({"process_id": process_id, "from_version": from_version, "to_version": to_version,
                       "dry_run": True, "total": len(plans), "movable": len(plans) - len(stuck),
                       "blocked": len(stuck), "instances": [p.to_dict() for p in plans]})
        else:
            _echo_plans(plans, from_version, to_version)
        if stuck:
            sys.exit(EXIT_INVALID)
        return

    bar = None

    def progress(done: int, total: int, outcome) -> None:
        nonlocal bar
        if as_json:
            return
        if bar is None:
            bar = click.progressbar(length=total, label=f"Migrating {process_id} v{from_version} -> v{to_version}",
                                    file=sys.stderr, show_pos=True)
            bar.__enter__()
        bar.update(1)

    try:
        report = migrate_instances(eng, process_id, from_version, to_version, ids, batch_size, by=user,
                                   progress=progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if as_json:
        emit_json({**report.to_dict(), "dry_run": False})
    else:
        if report.total == 0:
            click.echo(f"No running instance of {process_id} is on version {from_version}.")
        else:
            click.echo(f"Migrated {len(report.migrated)} of {report.total} instance(s) of {process_id} "
                       f"from version {from_version} to {to_version} (run {report.run_id}).")
        for o in report.failed:
            click.echo(f"  instance {o.instance_id} stays on version {from_version}:")
            for r in o.reasons:
                click.echo(f"    - {r}")
    if report.failed:
        sys.exit(EXIT_INVALID)


def _echo_plans(plans, from_version: int, to_version: int) -> None:
    if not plans:
        click.echo(f"No running instance is on version {from_version}.")
        return
    movable = sum(p.movable for p in plans)
    click.echo(f"Dry run, version {from_version} -> {to_version}: {movable} of {len(plans)} instance(s) can move.")
    for p in plans:
        key = f" [{p.business_key}]" if p.business_key else ""
        click.echo(f"instance {p.instance_id}{key}: {'moves' if p.movable else 'CANNOT MOVE'}")
        for t in p.tasks:
            mark = "ok " if t.outcome == "mapped" else "NO "
            click.echo(f"  {mark}{t.state.lower():<8} {t.element_id}" + (f"  {t.name}" if t.name else ""))
            for c in t.changes:
                click.echo(f"        {c['field']}: {_one_line(c.get('old'))} -> {_one_line(c.get('new'))}")
            if t.reason:
                click.echo(f"        why: {t.reason}")
        if p.lost:
            click.echo("  no longer on its path: " + ", ".join(e["element_id"] for e in p.lost))
        for r in p.reasons:
            if not any(t.reason == r for t in p.tasks):
                click.echo(f"  why: {r}")
