"""Shared helpers of the CLI: engine construction, JSON output, error-to-exit-code mapping."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from engine.errors import CareflowError, Conflict, DeployError, NotFound, ScriptError, ValidationFailed

EXIT_ERROR, EXIT_INVALID, EXIT_CONFLICT, EXIT_NOT_FOUND = 1, 2, 3, 4


class DefaultGroup(click.Group):
    """A group that runs its ``default_command`` when the first word is not a subcommand
    (so ``careflow audit 12`` and ``careflow audit verify`` can both exist)."""

    def __init__(self, *args: Any, default_command: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if self.default_command and args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        elif self.default_command and args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().resolve_command(ctx, args)


def get_engine():
    """The engine for this process, configured from the environment (cached)."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {}
    if "engine" not in root.obj:
        from engine.runtime import Careflow

        root.obj["engine"] = Careflow()
        root.call_on_close(root.obj["engine"].close)
    return root.obj["engine"]


def emit_json(value: Any) -> None:
    """Print machine-readable JSON (and nothing else) on stdout."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def parse_json_option(raw: str | None, what: str = "--data") -> dict:
    """Parse a JSON object given on the command line (``@file`` reads a file, ``-`` stdin)."""
    if raw is None:
        return {}
    text = raw
    if raw == "-":
        text = sys.stdin.read()
    elif raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as f:
            text = f.read()
    try:
        value = json.loads(text)
    except ValueError as err:
        raise click.UsageError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise click.UsageError(f"{what} must be a JSON object, e.g. '{{\"priority\": \"urgent\"}}'")
    return value


def handle_errors(as_json_param: str = "as_json") -> Callable:
    """Map engine errors to messages and the documented exit codes."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            as_json = kwargs.get(as_json_param, False)
            try:
                return fn(*args, **kwargs)
            except DeployError as err:
                _fail(as_json, "invalid", "deploy failed", EXIT_INVALID, problems=[p.to_dict() for p in err.problems])
            except ValidationFailed as err:
                _fail(as_json, "invalid", "the data does not match the form", EXIT_INVALID,
                      problems=[p.to_dict() for p in err.problems], field_errors=err.field_errors)
            except Conflict as err:
                _fail(as_json, "conflict", str(err), EXIT_CONFLICT)
            except NotFound as err:
                _fail(as_json, "not_found", str(err), EXIT_NOT_FOUND)
            except ScriptError as err:
                _fail(as_json, "script_error", str(err), EXIT_ERROR)
            except CareflowError as err:
                _fail(as_json, "error", str(err), EXIT_ERROR)

        return wrapper

    return deco


def _fail(as_json: bool, kind: str, message: str, code: int, **extra: Any) -> None:
    if as_json:
        click.echo(json.dumps({"error": kind, "message": message, **extra}, ensure_ascii=False, indent=2))
    else:
        click.echo(f"Error: {message}", err=True)
        for p in extra.get("problems", []):
            where = ":".join(str(x) for x in (p.get("file"), p.get("line")) if x)
            parts = [where] if where else []
            if p.get("element_id"):
                parts.append(f"[{p['element_id']}]")
            if p.get("field"):
                parts.append(f"{p['field']}:")
            text = " ".join(parts + [p["message"]])
            if p.get("hint"):
                text += f"\n      → {p['hint']}"
            click.echo(f"  - {text}", err=True)
    sys.exit(code)
