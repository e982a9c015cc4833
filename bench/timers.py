"""Timer benchmark: finding due work, firing it on time, draining a burst.

    .venv/bin/python bench/timers.py [--open 100000] [--drain 10000] [--lateness-seconds 30]

Runs on a temporary SQLite database, and on PostgreSQL too when
``CAREFLOW_BENCH_POSTGRES_URL`` is set (the bench works in its own schema,
``careflow_bench_timers``, dropped and recreated each phase; nothing else in that
database is touched). Prints ``name: value`` lines (PostgreSQL ones end in ``_postgres``):

- due_scan_p99_ms: finding what is due, with 100,000 open timers and 100,000 open SLA
  clocks: one transaction claiming the instance with the earliest due timer and the clock
  with the earliest due escalation rung (target <= 5); next_due_p99_ms: the worker's
  sleep computation (next timer, rung and outbox attempt); worker_look_p99_ms: both;
- firing_lateness_p99_ms: fired_at - due_at of BPMN timers and escalation rungs coming
  due over the measuring window, created while a real ``careflow worker`` process runs
  on real time (target <= 1000);
- drain_10k_s: wall time of a ``careflow worker --once`` process (start to exit) firing
  10,000 timers due at the same moment, each in its own transaction;
- drain_10k_2workers_s_postgres: the same burst shared by two worker processes.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from engine.clock import FrozenClock, use_clock  # noqa: E402
from engine.config import Settings, normalize_database_url  # noqa: E402
from engine.db import make_engine  # noqa: E402
from engine.escalation import claim_due_clock  # noqa: E402
from engine.models import AuditEntry, Instance, Timer  # noqa: E402
from engine.runtime import Careflow  # noqa: E402
from engine.serialization import SERIALIZER_VERSION  # noqa: E402
from engine.sla import SlaClockRow, SlaEscalation, open_clocks  # noqa: E402
from engine.worker import Worker  # noqa: E402

BPMN = ROOT / "bench" / "timers.bpmn"
PROCESS = "bench_timer"
PG_SCHEMA = "careflow_bench_timers"
CHUNK = 5000


def p(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# ---------------------------------------------------------------------------- databases


class Backend:
    """Hands out fresh, migrated databases of one kind."""

    def __init__(self, kind: str, workdir: Path, pg_url: str | None = None):
        self.kind, self.workdir, self.pg_url, self.n = kind, workdir, pg_url, 0
        self.suffix = "" if kind == "sqlite" else "_postgres"

    def fresh(self) -> Careflow:
        """A Careflow on an empty, migrated database with the bench process deployed."""
        self.n += 1
        if self.kind == "sqlite":
            path = self.workdir / f"bench{self.n}.db"
            for leftover in (path, path.with_suffix(".db-wal"), path.with_suffix(".db-shm")):
                leftover.unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        else:
            base = normalize_database_url(self.pg_url)
            admin = make_engine(base)
            with admin.begin() as c:
                c.execute(text(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
                c.execute(text(f"CREATE SCHEMA {PG_SCHEMA}"))
            admin.dispose()
            url = make_url(base).update_query_dict({"options": f"-csearch_path={PG_SCHEMA}"}) \
                .render_as_string(hide_password=False)
        cf = Careflow(Settings(database_url=url, home=self.workdir))
        cf.init_db()
        cf.deploy([BPMN], author="bench")
        return cf


def worker_process(cf: Careflow, log: Path, *args: str) -> subprocess.Popen:
    """A real ``careflow worker`` process on the same database."""
    env = {**os.environ, "CAREFLOW_DATABASE_URL": cf.settings.database_url, "CAREFLOW_HOME": str(cf.settings.home),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "careflow", "worker", *args], env=env, cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_text(path: Path, needle: str, timeout: float = 60) -> None:
    """Wait until a log file contains ``needle``."""
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {needle!r} in {path}:\n{path.read_text()[-2000:]}")
        time.sleep(0.05)


def bulk_insert(cf: Careflow, model, rows: list[dict]) -> None:
    """Insert rows in chunks, one transaction."""
    with cf.Session() as s, s.begin():
        for i in range(0, len(rows), CHUNK):
            s.execute(insert(model), rows[i:i + CHUNK])
        if cf.db.dialect.name == "postgresql" and model is Instance:
            s.execute(text("SELECT setval(pg_get_serial_sequence('instances', 'id'), (SELECT max(id) FROM instances))"))


def version_id(cf: Careflow) -> int:
    """The deployed bench process version."""
    with cf.Session() as s:
        return cf.latest_version(s, PROCESS).id


# ----------------------------------------------------------------------------- due scan


def due_scan(backend: Backend, n_open: int, rounds: int) -> dict[str, float]:
    """p99 of the worker's look for due work with ``n_open`` open timers and as many SLA clocks."""
    cf = backend.fresh()
    now = datetime.now(UTC)
    rnd = random.Random(7)
    pv = version_id(cf)
    overdue = 100
    dues = [now - timedelta(seconds=rnd.uniform(1, 600)) for _ in range(overdue)]
    dues += [now + timedelta(seconds=rnd.uniform(60, 30 * 86400)) for _ in range(n_open - overdue)]
    t0 = time.perf_counter()
    bulk_insert(cf, Instance, [
        {"id": i + 1, "process_version_id": pv, "process_id": PROCESS, "status": "running", "revision": 1,
         "state": "{}", "serializer_version": SERIALIZER_VERSION, "created_at": now, "updated_at": now,
         "next_timer_due": due} for i, due in enumerate(dues)])
    bulk_insert(cf, Timer, [
        {"instance_id": i + 1, "task_id": f"00000000-0000-0000-0000-{i:012d}", "name": "wait", "kind": "bpmn",
         "due_at": due, "status": "waiting"} for i, due in enumerate(dues)])
    rnd.shuffle(dues)
    bulk_insert(cf, SlaClockRow, [
        {"subject_type": "ticket", "subject_key": f"B{i:07d}", "instance_id": None, "name": "solution",
         "status": "running", "priority": "general", "policy": "default", "budget": "3WD", "calendar_name": "CN",
         "started_at": now, "pauses": [], "history": [], "ladder": [], "due_at": due, "next_rung_at": due,
         "owner": "alice", "group_name": None, "created_at": now, "updated_at": now} for i, due in enumerate(dues)])
    if cf.db.dialect.name == "postgresql":  # what autovacuum does in production; SQLite never gathers statistics
        with cf.db.begin() as c:
            c.execute(text("ANALYZE"))
    print(f"# {backend.kind}: {n_open:,} open timers and {n_open:,} open SLA clocks written in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    del dues  # measure with a heap like a worker's, not one holding the 300,000 rows just written
    gc.collect()
    worker = Worker(cf, listen=False)
    timers_ms, rungs_ms, scan_ms, next_ms, total_ms = [], [], [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with cf.Session() as s:
            at = cf.now()
            inst = cf.claim_due_timer_instance(s, at)
            t1 = time.perf_counter()
            clock = claim_due_clock(s, at)
            t2 = time.perf_counter()
            s.rollback()
        t2b = time.perf_counter()
        assert inst is not None and clock is not None
        nxt = worker.next_due()
        t3 = time.perf_counter()
        assert nxt is not None
        timers_ms.append((t1 - t0) * 1000)
        rungs_ms.append((t2 - t1) * 1000)
        scan_ms.append((t2b - t0) * 1000)
        next_ms.append((t3 - t2b) * 1000)
        total_ms.append((t3 - t0) * 1000)
    worker.close()
    cf.close()
    return {"due_scan_p99_ms": p(scan_ms, 0.99), "due_scan_p50_ms": statistics.median(scan_ms),
            "due_scan_timers_p99_ms": p(timers_ms, 0.99), "due_scan_rungs_p99_ms": p(rungs_ms, 0.99),
            "next_due_p99_ms": p(next_ms, 0.99), "worker_look_p99_ms": p(total_ms, 0.99),
            "worker_look_p50_ms": statistics.median(total_ms)}


# ------------------------------------------------------------------------------ lateness


def lateness(backend: Backend, window_s: float, workdir: Path) -> dict[str, float]:
    """Timers and rungs created while a real worker runs, due 3-12 s after creation, over ``window_s``."""
    cf = backend.fresh()
    log = workdir / f"lateness{backend.suffix}.log"
    proc = worker_process(cf, log)  # default --max-sleep
    rnd = random.Random(11)
    n_timers = n_rungs = 0
    last_due = datetime.now(UTC)
    try:
        wait_for_text(log, "Worker started")
        end = time.monotonic() + window_s
        batch = 0
        while time.monotonic() < end:
            batch += 1
            now = datetime.now(UTC)
            with use_clock(FrozenClock(now)), cf.Session() as s, s.begin():
                for _ in range(rnd.randint(5, 15)):
                    due = now + timedelta(seconds=rnd.uniform(3, 12))
                    cf.start(PROCESS, {"due": due.isoformat()}, actor="bench", session=s)
                    n_timers += 1
                    last_due = max(last_due, due)
                for i in range(rnd.randint(2, 5)):
                    rung_at = now + timedelta(seconds=rnd.uniform(3, 12))  # 50 % of PT2H: reminder to the owner
                    open_clocks(s, subject_type="ticket", subject_key=f"L{batch:04d}-{i}", instance_id=None,
                                priority="urgent", ticket_type=None, tier=None, owner="alice", group=None,
                                started_at=rung_at - timedelta(hours=1), pm=cf.pm)
                    n_rungs += 1
                    last_due = max(last_due, rung_at)
            time.sleep(rnd.uniform(0.2, 1.0))
        while datetime.now(UTC) < last_due + timedelta(seconds=3):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    with cf.Session() as s:
        timer_late = [(f - d).total_seconds() * 1000 for f, d in
                      s.execute(select(Timer.fired_at, Timer.due_at).where(Timer.status == "fired"))]
        rung_late = [(f - d).total_seconds() * 1000 for f, d in
                     s.execute(select(SlaEscalation.fired_at, SlaEscalation.due_at))]
    cf.close()
    if len(timer_late) != n_timers or len(rung_late) != n_rungs:
        raise SystemExit(f"lateness: fired {len(timer_late)}/{n_timers} timers and {len(rung_late)}/{n_rungs} rungs; "
                         f"see {log}")
    both = timer_late + rung_late
    return {"firing_lateness_p99_ms": p(both, 0.99), "firing_lateness_p50_ms": statistics.median(both),
            "firing_lateness_max_ms": max(both), "firing_lateness_timers_p99_ms": p(timer_late, 0.99),
            "firing_lateness_rungs_p99_ms": p(rung_late, 0.99), "firing_lateness_samples": len(both)}


# --------------------------------------------------------------------------------- drain


def drain(backend: Backend, n: int, workers: int, workdir: Path) -> float:
    """Seconds for ``workers`` worker processes (--once) to fire ``n`` timers due at the same moment."""
    cf = backend.fresh()
    now = datetime.now(UTC)
    due = now - timedelta(seconds=1)
    with use_clock(FrozenClock(now - timedelta(hours=1))):
        first = cf.start(PROCESS, {"due": due.isoformat()}, actor="bench").instance_id
    with cf.Session() as s:
        inst = s.get(Instance, first)
        timer = s.scalars(select(Timer).where(Timer.instance_id == first)).one()
        template = {c.name: getattr(inst, c.key) for c in Instance.__table__.columns if c.name != "id"}
        task_id = timer.task_id
    bulk_insert(cf, Instance, [{**template, "id": first + i} for i in range(1, n)])
    bulk_insert(cf, Timer, [{"instance_id": first + i, "task_id": task_id, "name": timer.name, "kind": "bpmn",
                             "due_at": due, "status": "waiting"} for i in range(1, n)])
    logs = [workdir / f"drain{backend.suffix}_{workers}_{k}.log" for k in range(workers)]
    t0 = time.perf_counter()
    procs = [worker_process(cf, log, "--once") for log in logs]
    codes = [proc.wait(1800) for proc in procs]
    elapsed = time.perf_counter() - t0
    with cf.Session() as s:
        done = s.scalar(select(func.count()).select_from(Instance).where(Instance.status == "completed"))
        fired = s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "timer_fired"))
    cf.close()
    if codes != [0] * workers or done != n or fired != n:
        raise SystemExit(f"drain: exit codes {codes}, {done}/{n} completed, {fired} timer_fired rows; see {logs}")
    return elapsed


# ---------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--open", type=int, default=100_000, help="open timers (and SLA clocks) for the due scan")
    ap.add_argument("--rounds", type=int, default=1000, help="due-scan repetitions")
    ap.add_argument("--drain", type=int, default=10_000, help="timers due at the same moment")
    ap.add_argument("--lateness-seconds", type=float, default=30.0, help="how long new work keeps coming")
    ap.add_argument("--only", default="scan,lateness,drain", help="comma list of phases: scan, lateness, drain")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = ap.parse_args()
    phases = set(args.only.split(","))
    pg_url = os.environ.get("CAREFLOW_BENCH_POSTGRES_URL")
    with tempfile.TemporaryDirectory(prefix="careflow-bench-timers-") as tmp:
        workdir = Path(tmp)
        backends = [] if args.no_sqlite else [Backend("sqlite", workdir)]
        if pg_url:
            backends.append(Backend("postgresql", workdir, pg_url))
        for b in backends:
            if "scan" in phases:
                for name, value in due_scan(b, args.open, args.rounds).items():
                    print(f"{name}{b.suffix}: {value:.3f}", flush=True)
            if "lateness" in phases:
                for name, value in lateness(b, args.lateness_seconds, workdir).items():
                    print(f"{name}{b.suffix}: {value:.1f}" if isinstance(value, float)
                          else f"{name}{b.suffix}: {value}", flush=True)
            if "drain" not in phases:
                continue
            label = "drain_10k_s" if args.drain == 10_000 else f"drain_{args.drain}_s"
            seconds = drain(b, args.drain, 1, workdir)
            print(f"{label}{b.suffix}: {seconds:.1f}", flush=True)
            print(f"drain_timers_per_s{b.suffix}: {args.drain / seconds:.0f}", flush=True)
            if b.kind == "postgresql":
                label2 = label[:-2] + "_2workers_s"
                print(f"{label2}{b.suffix}: {drain(b, args.drain, 2, workdir):.1f}", flush=True)


if __name__ == "__main__":
    main()
