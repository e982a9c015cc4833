"""The worker loop behind ``careflow worker``: fire due BPMN timers and SLA escalation
rungs, deliver the outbox, then sleep until the next due moment.

Each firing is one transaction (claim, fire, save, audit, commit), so a worker killed
at any point loses nothing and, after a restart, fires nothing twice. On PostgreSQL
due rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several workers share the
load; on SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (one writer).

The sleep ends at the earliest of: the next waiting timer, the next escalation rung,
the next outbox attempt, ``max_sleep`` seconds (so work created by other processes is
noticed) and, on PostgreSQL, a ``careflow_worker`` notification sent by a trigger
when such work is written. SIGTERM/SIGINT finish the current firing and stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select as sa_select

from engine.errors import NotFound
from engine.escalation import fire_due_rungs, next_rung_due_query
from engine.models import Timer
from engine.runtime import running_instance

log = logging.getLogger("careflow.worker")

WAKE_CHANNEL = "careflow_worker"
STUCK_RETRY = timedelta(seconds=60)  # a timer SpiffWorkflow would not fire is looked at again after this
WAKE_SLACK = 0.001  # wake just after the due moment: a timer fires once now is past its due time


@dataclass
class PassStats:
    """What one pass did."""

    timers: int = 0  # instances whose due timers fired
    rungs: int = 0  # escalation rungs fired
    deliveries: int = 0  # outbox messages handled by engine.outbox
    revisits: int = 0  # customer revisit instances started by the schedule
    more: bool = False  # a batch limit was hit: run another pass at once

    @property
    def work(self) -> int:
        """Total items handled."""
        return self.timers + self.rungs + self.deliveries + self.revisits


@dataclass
class Totals:
    """What a worker did since it started."""

    timers: int = 0
    rungs: int = 0
    deliveries: int = 0
    revisits: int = 0
    passes: int = 0
    errors: int = 0
    stuck: dict[int, datetime] = field(default_factory=dict)

    def add(self, stats: PassStats) -> None:
        """Count a pass."""
        self.timers += stats.timers
        self.rungs += stats.rungs
        self.deliveries += stats.deliveries
        self.revisits += stats.revisits
        self.passes += 1


SCHEDULE_EVERY = timedelta(seconds=60)


def _outbox_module():
    """``engine.outbox`` if it is installed (it is optional for the worker)."""
    try:
        from engine import outbox
    except ModuleNotFoundError as err:
        if err.name in ("engine.outbox",):
            return None
        raise
    if hasattr(outbox, "deliver_due") and hasattr(outbox, "next_delivery_due"):
        return outbox
    return None


class Worker:
    """Fires what is due, then sleeps until the next due moment (see the module docstring)."""

    def __init__(self, engine, *, max_sleep: float = 2.0, batch: int = 200, listen: bool = True):
        if max_sleep <= 0:
            raise ValueError("max_sleep must be positive")
        self.engine = engine
        self.max_sleep = float(max_sleep)
        self.batch = batch
        self.totals = Totals()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._listen_wanted = listen and engine.db.dialect.name == "postgresql"
        self._listen_conn = None
        self._idle_spins = 0
        self._outbox = _outbox_module()
        self._next_schedule: datetime | None = None

    # -- control ---------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called (or a signal arrived)."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask the loop to stop after the current firing (safe from signal handlers and other threads)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Release the wake-up pipe and the LISTEN connection."""
        self._close_listen()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- one pass ----------------------------------------------------------------------------
    def run_pass(self) -> PassStats:
        """Fire due timers and rungs (up to ``batch`` each) and deliver the outbox, once."""
        stats = PassStats()
        stats.timers, timers_more = self._fire_timers()
        if not self.stopping:
            stats.rungs = fire_due_rungs(self.engine, limit=self.batch, stop=lambda: self.stopping)
            stats.more = timers_more or stats.rungs >= self.batch
        if not self.stopping:
            stats.revisits = self._run_schedules()
        if not self.stopping and self._outbox is not None:
            delivered = self._outbox.deliver_due(self.engine)
            stats.deliveries = delivered if isinstance(delivered, int) and not isinstance(delivered, bool) else 0
        self.totals.add(stats)
        if stats.work:
            log.info("fired %d timer(s), %d escalation rung(s), started %d revisit(s); delivered %d message(s)",
                     stats.timers, stats.rungs, stats.revisits, stats.deliveries)
        return stats

    def _run_schedules(self) -> int:
        """Calendar work, at most once per ``SCHEDULE_EVERY``: due customer revisits and care greetings.

        Both are idempotent (one revisit per customer and due date, one greeting per occasion),
        so several workers or a restart never duplicate them. Returns revisits started.
        """
        now = self.engine.now()
        if self._next_schedule is not None and now < self._next_schedule:
            return 0
        self._next_schedule = now + SCHEDULE_EVERY
        from engine.care import run_care
        from engine.revisits import start_due_revisits

        started: list[int] = []
        try:
            started = start_due_revisits(self.engine, now)
        except NotFound:
            pass  # the revisit process is not deployed: nothing to schedule
        except Exception:  # noqa: BLE001 - the loop must go on; the error is logged and counted
            log.exception("starting due revisits failed")
            self.totals.errors += 1
        try:
            run_care(self.engine, now)
        except Exception:  # noqa: BLE001
            log.exception("queueing care greetings failed")
            self.totals.errors += 1
        return len(started)

    def _stuck_ids(self) -> list[int]:
        now = self.engine.now()
        for instance_id, retry in list(self.totals.stuck.items()):
            if retry <= now:
                del self.totals.stuck[instance_id]
        return list(self.totals.stuck)

    def _fire_timers(self) -> tuple[int, bool]:
        fired = 0
        skip = self._stuck_ids()
        for _ in range(self.batch):
            if self.stopping:
                return fired, False
            firing = self.engine.fire_next_due_timer(skip=skip)
            if firing is None:
                return fired, False
            if firing.result is not None:
                fired += 1
            if firing.result is None or firing.still_due:
                log.warning("instance %s: a due timer did not fire; trying it again in %s", firing.instance_id,
                            STUCK_RETRY)
                self.totals.stuck[firing.instance_id] = self.engine.now() + STUCK_RETRY
                skip = self._stuck_ids()
        return fired, True

    # -- sleeping ----------------------------------------------------------------------------
    def next_due(self) -> datetime | None:
        """The earliest moment something becomes due: timer, escalation rung or outbox attempt."""
        q = sa_select(Timer.due_at).where(Timer.status == "waiting", running_instance())
        stuck = list(self.totals.stuck)
        if stuck:
            q = q.where(Timer.instance_id.notin_(stuck))
        with self.engine.Session() as session:  # one round trip for both indexes
            candidates = list(session.execute(sa_select(q.order_by(Timer.due_at).limit(1).scalar_subquery(),
                                                        next_rung_due_query().scalar_subquery())).one())
        if self._outbox is not None:
            candidates.append(self._outbox.next_delivery_due(self.engine))
        due = [c for c in candidates if c is not None]
        if stuck:
            due.append(min(self.totals.stuck.values()))
        return min(due) if due else None

    def sleep_seconds(self, stats: PassStats) -> float:
        """How long to sleep after a pass: until the next due moment, at most ``max_sleep``."""
        nxt = self.next_due()
        if nxt is None:
            delay = self.max_sleep
        else:
            delay = min(max((nxt - self.engine.now()).total_seconds() + WAKE_SLACK, 0.0), self.max_sleep)
        if delay <= WAKE_SLACK and not stats.work:
            # something is due but the pass could not take it (e.g. another worker holds it): back off a little
            self._idle_spins += 1
            delay = min(self.max_sleep, 0.01 * 2 ** min(self._idle_spins, 8))
        else:
            self._idle_spins = 0
        return delay

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; wake early on ``stop()`` or a PostgreSQL notification."""
        fds = [self._wake_r]
        conn = self._listen()
        if conn is not None:
            fds.append(conn.fileno())
        try:
            readable, _, _ = select.select(fds, [], [], max(seconds, 0.0))
        except (OSError, ValueError):
            self._close_listen()
            return
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 512):
                    pass
        if conn is not None and conn.fileno() in readable:
            try:
                for _ in conn.notifies(timeout=0):
                    pass
            except Exception as err:  # the LISTEN connection broke: fall back to timed sleeps
                log.warning("LISTEN connection lost (%s); polling every %.1f s", err, self.max_sleep)
                self._close_listen()

    def _listen(self):
        if not self._listen_wanted or self._listen_conn is not None:
            return self._listen_conn
        try:
            import psycopg

            url = self.engine.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = psycopg.connect(url, autocommit=True)
            conn.execute(f"LISTEN {WAKE_CHANNEL}")
            self._listen_conn = conn
        except Exception as err:
            log.warning("cannot LISTEN for wake-ups (%s); polling every %.1f s", err, self.max_sleep)
            self._listen_wanted = False
        return self._listen_conn

    def _close_listen(self) -> None:
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                self._listen_conn.close()
            self._listen_conn = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self, once: bool = False, handle_signals: bool = False) -> Totals:
        """Run passes until stopped (``once``: until nothing due is left, then return)."""
        previous = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stop())
        try:
            self._listen()  # listen before the first pass, so nothing written meanwhile is missed
            while not self.stopping:
                try:
                    stats = self.run_pass()
                except Exception:
                    if once:
                        raise
                    self.totals.errors += 1
                    log.exception("worker pass failed; retrying in %.1f s", self.max_sleep)
                    self.wait(self.max_sleep)
                    continue
                if stats.more:
                    continue
                if once:
                    break
                self.wait(self.sleep_seconds(stats))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close_listen()
        return self.totals
