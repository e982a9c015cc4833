"""The ``careflow`` command line: a thin layer over ``engine.runtime.Careflow``.

Every module in this package that defines ``register(cli)`` adds its commands, so each
concern keeps its commands in its own module.

Exit codes (a contract for scripts): 0 success; 1 unexpected error; 2 invalid input
(deploy problems, form field errors, bad JSON); 3 conflict (task already completed or
instance changed concurrently); 4 not found.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from careflow.cli.util import DefaultGroup
from engine.gc_tuning import tune_gc


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="careflow")
def cli() -> None:
    """Careflow: after-sales tickets and customer revisits on BPMN."""
    try:
        tune_gc()
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name == "util":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(cli)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(cli.main(args=argv, prog_name="careflow", standalone_mode=True))
