"""A script engine for BPMN scripts and conditions that is an actual sandbox.

SpiffWorkflow runs scripts with plain ``exec``/``eval``. Here every script and
expression is compiled with RestrictedPython's ``compile_restricted`` (no imports, no
dunder or ``_private`` attribute access, no ``open``/``exec``/``eval``), runs with
guarded attribute/item/iteration access, and is held to a CPU-time budget: the
compiler inserts a tick into every loop and comprehension, ``range`` and repetition
are capped, and huge powers are refused.

Host functions (from plugins, or the engine's own ``notify`` etc.) are plain Python
callables placed in the environment's globals; they are removed from task data after
each script, so they are never serialized.
"""

from __future__ import annotations

import ast
import datetime as _dt
import decimal
import functools
import math
import operator
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from RestrictedPython import RestrictingNodeTransformer, compile_restricted
from RestrictedPython.Eval import default_guarded_getitem
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
    safer_getattr,
)
from RestrictedPython.PrintCollector import PrintCollector
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment

MAX_RANGE = 1_000_000
MAX_SEQUENCE_REPEAT = 1_000_000
MAX_POW_BITS = 100_000


class ScriptTimeout(Exception):
    """A script used more CPU time than its budget."""


class SandboxViolation(Exception):
    """A script tried something the sandbox forbids (or compiled with forbidden syntax)."""


class _Budget(threading.local):
    """CPU-time budget of the script currently running in this thread."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = 0.0

    def start(self) -> None:
        self.deadline = time.thread_time() + self.seconds

    def tick(self) -> None:
        if time.thread_time() > self.deadline:
            raise ScriptTimeout(f"script exceeded its CPU time limit of {self.seconds:g} s")


class _CarefulTransformer(RestrictingNodeTransformer):
    """RestrictedPython policy plus a budget tick in every loop and guarded ``**``/``*``."""

    def _tick_call(self, node: ast.AST) -> ast.Expr:
        call = ast.Expr(value=ast.Call(func=ast.Name(id="_tick_", ctx=ast.Load()), args=[], keywords=[]))
        return _located(call, node)

    def visit_Import(self, node: ast.Import) -> ast.AST:
        self.error(node, "imports are not allowed in scripts; use the host functions plugins provide")
        return node

    visit_ImportFrom = visit_Import

    def visit_While(self, node: ast.While) -> ast.AST:
        node = self.node_contents_visit(node)
        node.body.insert(0, self._tick_call(node))
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        node = super().visit_For(node)
        node.body.insert(0, self._tick_call(node))
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = super().visit_BinOp(node)
        if isinstance(node.op, ast.Pow | ast.Mult):
            name = "_pow_" if isinstance(node.op, ast.Pow) else "_mul_"
            call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=[node.left, node.right], keywords=[])
            return _located(call, node)
        return node


def _located(new: ast.AST, old: ast.AST) -> ast.AST:
    """Give a generated node and its generated children the source position of ``old``."""
    for child in ast.walk(new):
        if "lineno" in child._attributes and not hasattr(child, "lineno"):
            ast.copy_location(child, old)
    return new


def _guarded_pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if b * max(a.bit_length(), 1) > MAX_POW_BITS:
            raise SandboxViolation("result of ** would be too large")
    return a**b


def _guarded_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
            if len(seq) * n > MAX_SEQUENCE_REPEAT:
                raise SandboxViolation("repeated sequence would be too large")
    return a * b


def _guarded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise SandboxViolation(f"range() is limited to {MAX_RANGE:,} items")
    return r


_INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "|=": operator.ior,
    "&=": operator.iand, "^=": operator.ixor, "<<=": operator.ilshift, ">>=": operator.irshift,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    if op == "**=":
        return _guarded_pow(x, y)
    if op == "*=":
        return _guarded_mul(x, y)
    return _INPLACE[op](x, y)


def _safe_builtins() -> dict[str, Any]:
    allowed = dict(safe_builtins)
    for name in ("dict", "list", "set", "frozenset", "sum", "min", "max", "any", "all", "enumerate",
                 "sorted", "reversed", "map", "filter", "zip", "iter", "next"):
        allowed[name] = __builtins__[name] if isinstance(__builtins__, dict) else getattr(__builtins__, name)
    allowed["range"] = _guarded_range
    for name in ("setattr", "delattr", "_getattr_"):
        allowed.pop(name, None)
    return allowed


_BUILTINS = _safe_builtins()


@functools.lru_cache(maxsize=4096)
def compile_script(source: str, mode: str = "exec"):
    """Compile a script (``exec``) or expression (``eval``) under the sandbox policy, cached.

    Raises ``SyntaxError`` with a line number for syntax errors and for forbidden
    constructs (imports, dunder names...).
    """
    try:
        return compile_restricted(source, filename="<string>", mode=mode, policy=_CarefulTransformer)
    except SyntaxError as err:
        if err.lineno is None:
            err.lineno = _line_from_message(str(err))
        raise


def _line_from_message(message: str) -> int:
    # RestrictedPython reports "Line 3: ..." in the message and leaves lineno empty.
    import re

    m = re.search(r"Line (\d+)", message)
    return int(m.group(1)) if m else 1


class SandboxEnvironment(TaskDataEnvironment):
    """Task-data environment that runs code compiled by ``compile_script`` under guards."""

    def __init__(self, functions: dict[str, Callable] | None = None, cpu_seconds: float = 2.0):
        self.budget = _Budget(cpu_seconds)
        guards = {
            "__builtins__": _BUILTINS,
            "_getattr_": safer_getattr,
            "_getitem_": default_guarded_getitem,
            "_getiter_": self._getiter,
            "_write_": full_write_guard,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_inplacevar_": _inplacevar,
            "_print_": PrintCollector,
            "_apply_": lambda f, *a, **kw: f(*a, **kw),
            "_tick_": self.budget.tick,
            "_pow_": _guarded_pow,
            "_mul_": _guarded_mul,
            "datetime": _dt.datetime,
            "date": _dt.date,
            "timedelta": _dt.timedelta,
            "timezone": _dt.timezone,
            "Decimal": decimal.Decimal,
            "math": math,
        }
        super().__init__({**guards, **(functions or {})})

    def _getiter(self, ob: Iterable) -> Iterable:
        tick = self.budget.tick
        if isinstance(ob, list | tuple | str | dict | set | range) and len(ob) < 10_000:
            tick()
            return iter(ob)

        def ticking():
            for i, item in enumerate(ob):
                if i % 1000 == 0:
                    tick()
                yield item

        return ticking()

    def add_functions(self, functions: dict[str, Callable]) -> None:
        """Expose more host functions to scripts and conditions."""
        self.globals.update(functions)

    def evaluate(self, expression, context, external_context=None):
        """Evaluate a condition or expression in the sandbox."""
        code = compile_script(expression.strip(), "eval")
        my_globals = dict(self.globals)
        my_globals.update(external_context or {})
        my_globals.update(context)
        self.budget.start()
        return eval(code, my_globals)

    def execute(self, script, context, external_context=None):
        """Run a script task's code in the sandbox; variables it sets land in task data."""
        self.check_for_overwrite(context, external_context or {})
        code = compile_script(script, "exec")
        context.update(self.globals)
        context.update(external_context or {})
        self.budget.start()
        try:
            exec(code, context)
        finally:
            self._remove_globals_and_functions_from_context(context, external_context)
            context.pop("_print", None)
        return True

    def _remove_globals_and_functions_from_context(self, context, external_context=None):
        for k in list(context):
            value = context[k]
            if (k == "__builtins__" or k in self.globals or (external_context and k in external_context)
                    or callable(value) and not isinstance(value, type)):
                context.pop(k)
            elif isinstance(value, type) or type(value).__name__ == "module":
                context.pop(k)


class SandboxScriptEngine(PythonScriptEngine):
    """SpiffWorkflow script engine backed by ``SandboxEnvironment``."""

    def __init__(self, functions: dict[str, Callable] | None = None, cpu_seconds: float = 2.0):
        super().__init__(environment=SandboxEnvironment(functions, cpu_seconds))

    def validate(self, expression: str) -> None:
        """Check an expression compiles under the sandbox (used at deploy time)."""
        compile_script(expression, "eval")
