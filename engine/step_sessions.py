"""Sessions for step transactions: on SQLite, one per thread on a connection it keeps.

A step is one short transaction, and on SQLite the ORM session around it cost more than
its ``BEGIN IMMEDIATE`` and ``COMMIT`` together: 44 µs a step to build a session, check a
connection out of the pool, return and reset it, against 17 µs for a session that stays
bound to a connection of its own (2 % of an after-sales instance, ``bench/engine.py``).
So each thread that runs steps keeps one session on one connection and begins a
transaction on it per step; between steps no transaction is open (no lock, no snapshot),
and the session forgets the objects it loaded (``expunge_all``), as a new one would.

The kept connections come from an engine of their own without a pool (held for good, they
would drain the shared pool of a server with a few dozen threads). A step that starts
while the thread's session is in use (a step inside a step), and every step on PostgreSQL
(whose pool checks connections before use), gets a session of its own from the pool. ``close`` closes the kept connections (``Careflow.close``); a
connection left in an unusable state is dropped and the next step opens a new one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from engine.db import make_engine


class _Held:
    """A thread's kept connection and the session bound to it."""

    __slots__ = ("connection", "session", "busy", "__weakref__")

    def __init__(self, connection: Connection, session: Session) -> None:
        self.connection, self.session, self.busy = connection, session, False

    def close(self) -> None:
        """Close the session and give the connection back for good."""
        try:
            self.session.close()
        finally:
            self.connection.close()


class StepSessions:
    """``with step_sessions() as session, session.begin(): ...``: the session of one step."""

    def __init__(self, engine: Engine, factory: sessionmaker[Session]) -> None:
        self._factory = factory
        self._keep = engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")
        # kept connections come from an engine of their own without a pool: taken from the shared
        # pool for good, a few dozen threads would leave none for anything else
        self._source = (make_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)
                        if self._keep else None)
        self._local = threading.local()
        self._held: set[_Held] = set()  # every kept session (their owner: closed with it)
        self._lock = threading.Lock()
        self._closer = weakref.finalize(self, _close_all, self._held, self._lock)

    @property
    def engine(self) -> Engine | None:
        """The engine the kept connections come from (None when steps use the shared pool)."""
        return self._source

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        held = self._take()
        if held is None:
            with self._factory() as session:
                yield session
            return
        try:
            yield held.session
        finally:
            held.busy = False
            if held.connection.invalidated or held.connection.closed or held.session.in_transaction():
                self._drop(held)  # (a transaction still open here was not ended by its step: start afresh)
            else:
                held.session.expunge_all()

    def _take(self) -> _Held | None:
        """This thread's kept session, marked busy; None when it is busy or not kept (use the pool)."""
        if not self._keep or not self._closer.alive:
            return None
        held = getattr(self._local, "held", None)
        if held is None:
            connection = self._source.connect()
            held = _Held(connection, Session(bind=connection, expire_on_commit=False))
            self._local.held = held
            with self._lock:
                self._held.add(held)
            # a thread that ends gives its connection back
            weakref.finalize(threading.current_thread(), _release, weakref.ref(self), weakref.ref(held))
        elif held.busy:
            return None
        held.busy = True
        return held

    def _drop(self, held: _Held) -> None:
        """Forget and close a kept session."""
        if getattr(self._local, "held", None) is held:
            self._local.held = None
        with self._lock:
            self._held.discard(held)
        _close_quietly(held)

    def close(self) -> None:
        """Close every kept connection (the engine is shutting down); later steps use the pool."""
        self._closer()
        if self._source is not None:
            self._source.dispose()


def _release(sessions_ref: weakref.ref, held_ref: weakref.ref) -> None:
    sessions, held = sessions_ref(), held_ref()
    if sessions is not None and held is not None:
        with sessions._lock:
            sessions._held.discard(held)
        _close_quietly(held)


def _close_all(held: set[_Held], lock: threading.Lock) -> None:
    with lock:
        every = list(held)
        held.clear()
    for h in every:
        _close_quietly(h)


def _close_quietly(held: _Held) -> None:
    try:
        held.close()
    except Exception:  # noqa: BLE001 - at shutdown or thread end: nothing left to do about it
        pass
