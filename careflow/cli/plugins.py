"""Plugin and delivery commands: ``careflow plugins``, ``careflow incidents`` (list, show,
retry, resolve) and ``careflow deliver`` (the outbox delivery worker)."""

from __future__ import annotations

import getpass
import logging
import signal
import time

import click

from careflow.cli.util import emit_json, get_engine, handle_errors


def register(cli: click.Group) -> None:
    """Attach the plugin, incident and delivery commands."""
    for command in (plugins, incidents, deliver):
        cli.add_command(command)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def plugins(as_json: bool) -> None:
    """List loaded plugins, their versions and the hooks each implements."""
    from plugins.manager import get_plugin_manager, plugin_info

    pm = get_plugin_manager()
    info = plugin_info(pm)
    if as_json:
        emit_json(info)
        return
    width = max(len(p["name"]) for p in info)
    for p in info:
        origin = "shipped" if p["builtin"] else p["package"] or "?"
        click.echo(f"{p['name']:<{width}}  {p['version'] or '?':<10} {origin}")
        if p["status"] == "failed":
            click.echo(f"{'':<{width}}  FAILED TO LOAD: {p['error']}")
        for hook in p["hooks"]:
            note = "  (no such hook: never called)" if hook in p["unknown_hooks"] else ""
            click.echo(f"{'':<{width}}    {hook}{note}")
    from engine.outbox import channels_of

    click.echo("")
    described = [_describe(c) for c in channels_of(pm).values()]
    click.echo("Channels: " + ("; ".join(described) or "none"))
    click.echo(f"Tier scheme: {pm.careflow_settings.tier_scheme} (CAREFLOW_TIER_SCHEME)")
    for name in pm.missing:
        click.echo(f"Warning: CAREFLOW_PLUGINS names '{name}', but no installed package provides it", err=True)


def _describe(channel) -> str:  # noqa: ANN001 - any channel object
    try:
        return channel.describe() if callable(getattr(channel, "describe", None)) else channel.name
    except Exception as err:  # a plugin's channel must not break the listing
        return f"{channel.name} (describe() failed: {err})"


@click.group(invoke_without_command=True)
@click.option("--all", "include_resolved", is_flag=True, help="Include resolved incidents.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def incidents(ctx: click.Context, include_resolved: bool, as_json: bool) -> None:
    """Incidents an operator must look at (failed deliveries, failing plugins, failed instances).

    Without a subcommand: the open incidents (with --all, resolved ones too), oldest first.
    """
    if ctx.invoked_subcommand is None:
        _list_incidents(include_resolved=include_resolved, as_json=as_json)


@handle_errors()
def _list_incidents(include_resolved: bool = False, as_json: bool = False) -> None:
    from engine.outbox import list_incidents

    rows = list_incidents(get_engine(), include_resolved=include_resolved)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No incidents." if include_resolved else "No open incidents.")
        return
    for r in rows:
        when = (r["created_at"] or "")[:16].replace("T", " ")
        where = " ".join(x for x in (f"instance {r['instance_id']}" if r["instance_id"] else "",
                                     f"outbox {r['outbox_id']}" if r["outbox_id"] else "") if x)
        state = f"  [resolved by {r['resolved_by']}]" if r["resolved_at"] else ("  [retry: careflow incidents "
                                                                               f"retry {r['id']}]" if r["retryable"]
                                                                               else "")
        click.echo(f"#{r['id']:<5} {when}  {r['kind']:<9} {r['source'] or '-':<24} {where}{state}")
        click.echo(f"       {r['message'].splitlines()[0] if r['message'] else ''}")


@incidents.command("show")
@click.argument("incident_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def incidents_show(incident_id: int, as_json: bool) -> None:
    """One incident with its traceback."""
    from engine.outbox import get_incident

    r = get_incident(get_engine(), incident_id)
    if as_json:
        emit_json(r)
        return
    click.echo(f"Incident #{r['id']} ({r['kind']}, {r['source'] or '-'}) at {r['created_at']}")
    click.echo(r["message"])
    if r.get("outbox"):
        o = r["outbox"]
        click.echo(f"Outbox: '{o['topic']}' to {o['recipient']} via {o['channel'] or 'any channel'}, "
                   f"{o['status']} after {o['attempts']} attempt(s)")
    if r["resolved_at"]:
        click.echo(f"Resolved by {r['resolved_by']} at {r['resolved_at']}")
    if r["traceback"]:
        click.echo("")
        click.echo(r["traceback"].rstrip())


@incidents.command("retry")
@click.argument("incident_id", type=int)
@click.option("--user", default=None, help="Who retries (audited; default: your login name).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def incidents_retry(incident_id: int, user: str | None, as_json: bool) -> None:
    """Send a failed delivery again (fresh attempts; the incident is resolved). Exit 3 if it cannot be retried."""
    from engine.outbox import retry_incident

    r = retry_incident(get_engine(), incident_id, user or _login())
    if as_json:
        emit_json(r)
        return
    click.echo(f"Incident #{incident_id} resolved; outbox message {r['outbox_id']} will be delivered again "
               "(careflow deliver).")


@incidents.command("resolve")
@click.argument("incident_id", type=int)
@click.option("--user", default=None, help="Who resolves it (audited; default: your login name).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors()
def incidents_resolve(incident_id: int, user: str | None, as_json: bool) -> None:
    """Mark an incident as dealt with (a failed delivery is then not retried)."""
    from engine.outbox import resolve_incident

    r = resolve_incident(get_engine(), incident_id, user or _login())
    if as_json:
        emit_json(r)
        return
    click.echo(f"Incident #{incident_id} resolved.")


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "operator"


@click.command()
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1),
              help="Most messages handled per pass.")
@click.option("--poll", default=5.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Longest sleep between passes, in seconds.")
@handle_errors()
def deliver(once: bool, limit: int, poll: float) -> None:
    """Deliver outbox messages through the notification channels, with retries.

    Runs until stopped (Ctrl-C or SIGTERM finish the current pass first), or one pass with --once.
    """
    from engine.outbox import OutboxPolicy, deliver_due, next_delivery_due

    if not logging.getLogger().handlers:  # show the log channel and the retries on stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = get_engine()
    policy = OutboxPolicy.from_env()
    if once:
        report = deliver_due(engine, limit=limit, policy=policy)
        while report and int(report) == limit:  # more may be due: keep going until a short pass
            click.echo(report.summary())
            report = deliver_due(engine, limit=limit, policy=policy)
        click.echo(report.summary() if report else "Nothing to deliver.")
        return
    stop = {"now": False}

    def _stop(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, _stop)
    click.echo(f"Delivering outbox messages (at most {limit} per pass); Ctrl-C to stop.")
    try:
        while not stop["now"]:
            report = deliver_due(engine, limit=limit, policy=policy)
            if report:
                click.echo(report.summary())
                continue
            due = next_delivery_due(engine)
            wait = poll if due is None else min(poll, max(0.05, (due - engine.now()).total_seconds()))
            deadline = time.monotonic() + wait
            while not stop["now"] and time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("Delivery stopped.")
