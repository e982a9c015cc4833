"""Web commands: ``careflow users add|list``, ``careflow tokens create`` and ``careflow serve``.

``careflow serve`` runs the web app under gunicorn and, when the ``careflow worker``
command is installed, the background worker next to it; SIGINT/SIGTERM stop both.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time

import click

from careflow.cli.util import EXIT_ERROR, EXIT_INVALID, emit_json, get_engine, handle_errors

ROLES = ("agent", "supervisor", "process_owner", "auditor", "admin")


def register(cli: click.Group) -> None:
    """Attach the users, tokens and serve commands."""
    cli.add_command(users)
    cli.add_command(tokens)
    cli.add_command(serve)


@click.group()
def users() -> None:
    """People who sign in: add and list users."""


def _read_password() -> str:
    """The new password: typed twice on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != first:
            raise click.UsageError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the user may do.")
@click.option("--group", "groups", multiple=True, help="A group (= BPMN lane) the user works in; repeatable.")
@click.option("--supervisor", default=None, help="Username of the user's supervisor.")
@click.option("--email", default=None, help="E-mail address.")
@click.option("--display-name", default=None, help="Name shown in the UI (e.g. 张伟).")
@click.option("--locale", default=None, type=click.Choice(["zh", "en"]), help="Interface language.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def users_add(name: str, role: str, groups: tuple[str, ...], supervisor: str | None, email: str | None,
              display_name: str | None, locale: str | None, as_json: bool) -> None:
    """Add user NAME; the password is read from standard input (stored as an argon2 hash).

    Example: echo 's3cret-pass' | careflow users add zhang.wei --role agent --group customer_service
    """
    from engine import accounts
    from engine.errors import ValidationFailed

    password = _read_password()
    try:
        account = accounts.add_user(get_engine(), name, role=role, password=password, groups=groups,
                                    supervisor=supervisor, email=email, display_name=display_name, locale=locale,
                                    actor="cli")
    except ValidationFailed as err:
        if as_json:
            emit_json({"error": "invalid", "message": "the user cannot be added",
                       "problems": [p.to_dict() for p in err.problems], "field_errors": err.field_errors})
        else:
            click.echo("Error: the user cannot be added", err=True)
            for p in err.problems:
                click.echo(f"  - {p.field}: {p.message}", err=True)
        sys.exit(EXIT_INVALID)
    if as_json:
        emit_json(account.to_dict())
        return
    where = f" in {', '.join(account.groups)}" if account.groups else ""
    click.echo(f"Added {account.username} ({account.role}){where}.")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def users_list(as_json: bool) -> None:
    """List users with role, groups and supervisor."""
    from engine import accounts

    rows = accounts.list_accounts(get_engine())
    if as_json:
        emit_json([a.to_dict() for a in rows])
        return
    if not rows:
        click.echo("No users. Add one: careflow users add NAME --role admin")
    for a in rows:
        state = "" if a.active else "  (inactive)"
        sup = f"  supervisor={a.supervisor}" if a.supervisor else ""
        click.echo(f"{a.username:<20} {a.role:<14} {','.join(a.groups) or '-':<36}{sup}{state}")


@click.group()
def tokens() -> None:
    """API tokens for integrations."""


@tokens.command("create")
@click.argument("user")
@click.option("--name", default=None, help="What the token is for (shown in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def tokens_create(user: str, name: str | None, as_json: bool) -> None:
    """Create an API token acting as USER; it is printed once and stored only as a hash."""
    from engine import accounts

    token = accounts.create_token(get_engine(), user, name, actor="cli")
    if as_json:
        emit_json({"user": user, "name": name, "token": token})
        return
    click.echo(token)
    click.echo("Use it as: Authorization: Bearer <token>  (it is not shown again)", err=True)


def _worker_available() -> bool:
    from careflow.cli import cli

    return "worker" in cli.commands


@click.command()
@click.option("--host", default=lambda: os.environ.get("CAREFLOW_HOST", "127.0.0.1"), show_default="127.0.0.1",
              help="Address to listen on.")
@click.option("--port", type=int, default=lambda: int(os.environ.get("CAREFLOW_PORT", "8000")),
              show_default="8000", help="Port to listen on.")
@click.option("--workers", type=int, default=lambda: int(os.environ.get("CAREFLOW_WEB_WORKERS", "2")),
              show_default="2", help="gunicorn worker processes.")
@click.option("--no-worker", is_flag=True, help="Do not start the background worker.")
def serve(host: str, port: int, workers: int, no_worker: bool) -> None:
    """Run the web UI (gunicorn) and the background worker; Ctrl-C stops both."""
    if workers < 1:
        click.echo("Error: --workers must be at least 1", err=True)
        sys.exit(EXIT_INVALID)
    get_engine().init_db()  # also checks the database is reachable before anything starts
    children: list[tuple[str, subprocess.Popen]] = []
    web_cmd = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"{host}:{port}",
               "--access-logfile", "-", "--graceful-timeout", "10", "--timeout", "60", "web:create_app()"]
    children.append(("web", subprocess.Popen(web_cmd)))
    if not no_worker and _worker_available():
        children.append(("worker", subprocess.Popen([sys.executable, "-m", "careflow", "worker"])))
    click.echo(f"Careflow is serving on http://{host}:{port}/ ({', '.join(n for n, _p in children)}); "
               "Ctrl-C stops it.")

    stopping = {"signal": None}

    def _stop(signum, _frame) -> None:
        stopping["signal"] = signum

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while stopping["signal"] is None:
            exited = [(n, p) for n, p in children if p.poll() is not None]
            if exited:
                name, proc = exited[0]
                click.echo(f"Error: the {name} process exited with code {proc.returncode}; stopping.", err=True)
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        code = _stop_children(children)
    if stopping["signal"] is None:
        sys.exit(EXIT_ERROR)
    sys.exit(0 if code == 0 else EXIT_ERROR)


def _stop_children(children: list[tuple[str, subprocess.Popen]], timeout: float = 15.0) -> int:
    """SIGTERM every child, wait, SIGKILL what is left; 0 when all stopped cleanly."""
    for _name, proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    worst = 0
    for name, proc in children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            click.echo(f"The {name} process did not stop in time; killing it.", err=True)
            proc.kill()
            proc.wait()
            worst = 1
        if proc.returncode not in (0, -signal.SIGTERM):
            worst = worst or 1
    return worst
