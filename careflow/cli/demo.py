"""``careflow demo-data``: seed the demo deployment."""

from __future__ import annotations

import click

from careflow.cli.util import get_engine


def register(cli: click.Group) -> None:
    """Attach the demo command."""
    cli.add_command(demo_data)


@click.command("demo-data")
def demo_data() -> None:
    """Deploy the shipped workflows and add demo users, customers and tickets (idempotent)."""
    from careflow.demo import seed_all

    seed_all(get_engine(), click.echo)
