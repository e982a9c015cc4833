"""Demo data for the run command. Each module here defines ``ORDER`` (int) and
``seed(engine, echo) -> None``; ``careflow demo-data`` runs them in ``ORDER``.
Seeding is idempotent: running it twice adds nothing the second time."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable


def seeders() -> list:
    """The demo modules, in order."""
    mods = [importlib.import_module(f"{__name__}.{i.name}") for i in pkgutil.iter_modules(__path__)]
    return sorted((m for m in mods if hasattr(m, "seed")), key=lambda m: getattr(m, "ORDER", 100))


def seed_all(engine, echo: Callable[[str], None] = print) -> None:
    """Run every demo seeder."""
    for module in seeders():
        module.seed(engine, echo)
