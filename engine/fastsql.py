"""Prebuilt Core statements executed straight on the driver's cursor.

``Connection.execute`` costs about 10 µs per statement on top of the driver (cache key,
parameter and result set-up, event dispatch); a step runs dozens of statements, so on
the step path that is a good share of a step. A ``Prepared`` statement is still an
SQLAlchemy Core statement, compiled by SQLAlchemy once per dialect (and per set of
insert columns), and SQLAlchemy's own type processors convert its parameters and result
values (UTC datetimes, JSON), so rows read and written are exactly what
``Connection.execute`` would read and write; only the per-call machinery is skipped.
Statements that need more than that (``RETURNING``, expanding ``IN``) use ``execute``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...] | None  # parameter order for positional paramstyles; None: by name
    bind: dict[str, Callable[[Any], Any]]
    result: tuple[Callable[[Any], Any] | None, ...]
    keys: tuple[str, ...]
    fixed: dict[str, Any]  # values of the statement's own bound literals (``status == "ready"``)


class Row(tuple):
    """A result row: a tuple whose values are also attributes named after the columns."""

    __slots__ = ()
    _keys: tuple[str, ...] = ()

    def _asdict(self) -> dict[str, Any]:
        """The row as ``{column: value}``."""
        return dict(zip(self._keys, self, strict=True))


class Prepared:
    """A Core statement compiled once per dialect and run on the DBAPI cursor of a connection."""

    def __init__(self, statement: Executable):
        self.statement = statement
        self._plans: dict[tuple, _Plan] = {}
        self._row_types: dict[tuple[str, ...], type[Row]] = {}
        self._lock = threading.Lock()

    def all(self, conn: Connection, params: dict[str, Any] | None = None) -> list[Row]:
        """Run a SELECT; its rows (values converted as SQLAlchemy would)."""
        plan = self._plan(conn.dialect, params)
        cursor = self._cursor(conn)
        try:
            cursor.execute(plan.sql, self._args(plan, params or {}))
            raw = cursor.fetchall()
        finally:
            cursor.close()
        row_type = self._row_type(plan.keys)
        result = plan.result
        return [row_type(v if p is None else p(v) for p, v in zip(result, r, strict=True)) for r in raw]

    def first(self, conn: Connection, params: dict[str, Any] | None = None) -> Row | None:
        """The first row of a SELECT, or None."""
        rows = self.all(conn, params)
        return rows[0] if rows else None

    def run(self, conn: Connection, params: dict[str, Any] | None = None) -> int:
        """Run an INSERT / UPDATE / DELETE once; returns the row count."""
        plan = self._plan(conn.dialect, params)
        cursor = self._cursor(conn)
        try:
            cursor.execute(plan.sql, self._args(plan, params or {}))
            return cursor.rowcount
        finally:
            cursor.close()

    def run_many(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Run an INSERT / UPDATE once per parameter dict (every dict with the same keys)."""
        if not rows:
            return
        plan = self._plan(conn.dialect, rows[0])
        cursor = self._cursor(conn)
        try:
            cursor.executemany(plan.sql, [self._args(plan, r) for r in rows])
        finally:
            cursor.close()

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _cursor(conn: Connection):
        return conn.connection.driver_connection.cursor()

    @staticmethod
    def _args(plan: _Plan, params: dict[str, Any]):
        bind = plan.bind
        if plan.fixed:
            params = {**plan.fixed, **params}
        if plan.names is None:
            return {k: (bind[k](v) if k in bind else v) for k, v in params.items()}
        return [bind[n](params[n]) if n in bind else params[n] for n in plan.names]

    def _plan(self, dialect: Dialect, params: dict[str, Any] | None) -> _Plan:
        keys = tuple(sorted(params)) if params else ()
        key = (dialect.name, keys)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key) or self._compile(dialect, keys)
                self._plans[key] = plan
        return plan

    def _compile(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("statements with expanding or literal parameters cannot be prepared")
        bind = {name: proc for name, proc in compiled._bind_processors.items() if proc is not None}
        result = tuple(col.type._cached_result_processor(dialect, None) for col in compiled._result_columns)
        names = tuple(compiled.positiontup) if compiled.positional else None
        used = set(names) if names is not None else {n for n in compiled.binds if f"%({n})s" in compiled.string}
        fixed = {name: bp.value for name, bp in compiled.binds.items()
                 if name in used and name not in keys and not bp.required and bp.callable is None}
        return _Plan(compiled.string, names, bind, result,
                     tuple(col.keyname for col in compiled._result_columns), fixed)

    def _row_type(self, keys: tuple[str, ...]) -> type[Row]:
        row_type = self._row_types.get(keys)
        if row_type is None:
            fields = {key: property(itemgetter(i)) for i, key in enumerate(keys)}
            row_type = type("Row", (Row,), {"__slots__": (), "_keys": keys, **fields})
            self._row_types[keys] = row_type
        return row_type
