"""Core commands: init-db, deploy, start, tasks, complete, show, audit."""

from __future__ import annotations

import click

from careflow.cli.util import DefaultGroup, emit_json, get_engine, handle_errors, parse_json_option


def register(cli: click.Group) -> None:
    """Attach the core commands to the root group."""  # noqa: D401
    for command in (init_db, deploy, start, tasks, complete, show, audit):
        cli.add_command(command)


@click.command("init-db")
def init_db() -> None:
    """Create or upgrade the database schema (safe to run again)."""
    eng = get_engine()
    eng.init_db()
    click.echo(f"Database ready: {_safe_url(eng.settings.database_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--author", default=None, help="Who deploys (recorded with the version).")
@click.option("--comment", "-m", default=None, help="Why this version (recorded with it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def deploy(paths: tuple[str, ...], author: str | None, comment: str | None, as_json: bool) -> None:
    """Validate BPMN files (or folders) and the forms they use, and deploy them as versions.

    Exit 0 with the versions; exit 2 with the list of problems, nothing deployed.
    """
    results = get_engine().deploy(list(paths), author=author, comment=comment)
    if as_json:
        emit_json({"versions": [r.to_dict() for r in results]})
        return
    for r in results:
        state = "deployed as new version" if r.created else "unchanged, still version"
        click.echo(f"{r.process_id}: {state} {r.version} (checksum {r.checksum[:12]})")
        for w in r.warnings:
            click.echo(f"  warning: {w}")


@click.command()
@click.argument("process_id")
@click.option("--data", default=None, help="Initial data as a JSON object (@file or - for stdin).")
@click.option("--user", default="system", help="Who starts it (audited).")
@click.option("--version", "version", type=int, default=None, help="A specific version (default: latest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def start(process_id: str, data: str | None, user: str, version: int | None, as_json: bool) -> None:
    """Start an instance of PROCESS_ID and run it to its first wait state."""
    result = get_engine().start(process_id, parse_json_option(data), actor=user, version=version)
    if as_json:
        emit_json({"instance_id": result.instance_id, "status": result.status, "ready_tasks": result.ready_tasks})
        return
    click.echo(f"Started instance {result.instance_id} ({result.status})")
    _echo_ready(result.ready_tasks)


def _echo_ready(ready: list[dict]) -> None:
    for t in ready:
        who = t.get("assignee") or t.get("lane") or "-"
        click.echo(f"  ready: {t['id']}  {t.get('title') or t['name']}  [{who}]")


def task_json(t: dict) -> dict:
    """The contract fields of a task in ``--json`` output (plus a few extras)."""
    return {
        "id": t["id"], "instance_id": t["instance_id"], "name": t["name"], "title": t["title"], "lane": t["lane"],
        "assignee": t["assignee"], "form": t["form"], "due_at": t["due_at"], "group": t.get("group"),
        "process_id": t.get("process_id"), "status": t.get("status"), "created_at": t.get("created_at"),
        "instructions": t.get("instructions"),
    }


@click.command()
@click.option("--instance", "instance_id", type=int, default=None, help="Only tasks of this instance.")
@click.option("--user", default=None, help="Tasks of this user: assigned to them or to their groups.")
@click.option("--all", "all_states", is_flag=True, help="Include completed and cancelled tasks.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def tasks(instance_id: int | None, user: str | None, all_states: bool, as_json: bool) -> None:
    """List ready human tasks."""
    rows = get_engine().tasks(instance_id=instance_id, user=user, status=None if all_states else "ready")
    if as_json:
        emit_json([task_json(t) for t in rows])
        return
    if not rows:
        click.echo("No tasks.")
    for t in rows:
        due = f" due {t['due_at'][:16].replace('T', ' ')} UTC" if t["due_at"] else ""
        who = t["assignee"] or t["group"] or t["lane"] or "-"
        click.echo(f"{t['id']}  #{t['instance_id']}  {t['title'] or t['name']}  [{who}]{due}")


@click.command()
@click.argument("task_id")
@click.option("--user", required=True, help="Who completes the task (audited).")
@click.option("--data", default=None, help="Form data as a JSON object (@file or - for stdin).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def complete(task_id: str, user: str, data: str | None, as_json: bool) -> None:
    """Complete TASK_ID with form data. Exit 2 on field errors, 3 if the task is no longer ready."""
    result = get_engine().complete(task_id, parse_json_option(data), user=user)
    if as_json:
        emit_json({"instance_id": result.instance_id, "status": result.status, "ready_tasks": result.ready_tasks})
        return
    click.echo(f"Completed. Instance {result.instance_id} is {result.status}.")
    _echo_ready(result.ready_tasks)


@click.command()
@click.argument("instance_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def show(instance_id: int, as_json: bool) -> None:
    """Show an instance: process, version, status and data."""
    info = get_engine().show(instance_id)
    if as_json:
        emit_json(info)
        return
    click.echo(f"Instance {info['id']}: {info['process_id']} v{info['version']} — {info['status']}")
    if info.get("business_key"):
        click.echo(f"  key: {info['business_key']}")
    if info.get("error"):
        click.echo(f"  error: {info['error']}")
    import json

    click.echo(json.dumps(info["data"], ensure_ascii=False, indent=2, default=str))


@click.group(cls=DefaultGroup, default_command="show", invoke_without_command=False)
def audit() -> None:
    """Audit trail: ``careflow audit INSTANCE_ID`` lists an instance's steps."""


@audit.command("show", hidden=True)
@click.argument("instance_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def audit_show(instance_id: int, as_json: bool) -> None:
    """Every audit row of INSTANCE_ID, in order."""
    rows = get_engine().audit(instance_id)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"No audit rows for instance {instance_id}.")
    for r in rows:
        what = r["task_title"] or r["task_name"] or ""
        click.echo(f"{r['seq']:>6}  {r['at'][:19].replace('T', ' ')}  {r['actor']:<12} {r['action']:<18} {what}")
