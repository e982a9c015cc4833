"""The worker: clock injection, sleeping until the next due moment, draining, and real
worker processes that are killed mid-drain or run side by side."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.clock import FrozenClock, use_clock, utcnow
from engine.models import AuditEntry, Instance, OutboxMessage, Timer
from engine.runtime import Careflow
from engine.sla import SlaClockRow, SlaEscalation, open_clocks
from engine.worker import PassStats, Worker

from sla_helpers import deploy, sh

ROOT = Path(__file__).resolve().parent.parent
RUNGS_PER_SUBJECT = 6  # urgent ticket, 10 h old: both clocks past 150 %


def _start_timers(cf, n: int, due, created_at) -> list[int]:
    """``n`` instances of sla_timer waiting until ``due``, created in one transaction at ``created_at``."""
    with use_clock(FrozenClock(created_at)), cf.Session() as s, s.begin():
        return [cf.start("sla_timer", {"due": due.isoformat()}, session=s).instance_id for _ in range(n)]


def _open_overdue_subjects(cf, n: int, started_at, prefix="SN") -> None:
    with cf.Session() as s, s.begin():
        for i in range(n):
            open_clocks(s, subject_type="ticket", subject_key=f"{prefix}{i:05d}", instance_id=None, priority="urgent",
                        ticket_type=None, tier=None, owner="alice", group="technical_support",
                        started_at=started_at, pm=cf.pm)


def _counts(cf) -> dict[str, int]:
    with cf.ReadSession() as s:  # a snapshot: polling must not queue for the worker's write lock
        return {
            "timers_fired": s.scalar(select(func.count()).select_from(Timer).where(Timer.status == "fired")),
            "escalations": s.scalar(select(func.count()).select_from(SlaEscalation)),
        }


def _assert_fired_exactly_once(cf, instance_ids: list[int], subjects: int) -> None:
    with cf.Session() as s:
        per_instance = Counter(s.scalars(select(AuditEntry.instance_id).where(AuditEntry.action == "timer_fired")))
        statuses = Counter(s.scalars(select(Instance.status).where(Instance.id.in_(instance_ids))))
        waiting = s.scalar(select(func.count()).select_from(Timer).where(Timer.status == "waiting"))
        esc = s.execute(select(SlaEscalation.clock_id, SlaEscalation.rung, SlaEscalation.occurrence)).all()
        audited = s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "sla_escalated"))
        keys = set(s.scalars(select(SlaEscalation.outbox_key)))
        outbox = Counter(s.scalars(select(OutboxMessage.idempotency_key)
                                   .where(OutboxMessage.idempotency_key.in_(keys))))
        clocks_waiting = s.scalar(select(func.count()).select_from(SlaClockRow)
                                  .where(SlaClockRow.next_rung_at <= utcnow()))
    assert {i: per_instance[i] for i in instance_ids} == {i: 1 for i in instance_ids}
    assert statuses == {"completed": len(instance_ids)} and waiting == 0
    assert len(esc) == len(set(esc)) == subjects * RUNGS_PER_SUBJECT
    assert audited == len(keys) == subjects * RUNGS_PER_SUBJECT
    assert outbox == {k: 1 for k in keys}  # one notification per rung (delivery may fan it out per channel)
    assert clocks_waiting == 0


def _worker_process(settings, log_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "CAREFLOW_DATABASE_URL": settings.database_url, "CAREFLOW_HOME": str(settings.home),
           "PYTHONUNBUFFERED": "1"}
    env.pop("CAREFLOW_CALENDAR_FILE", None)
    log = log_path.open("w")
    return subprocess.Popen([sys.executable, "-m", "careflow", "worker", *args], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _totals(log_path: Path) -> tuple[int, int]:
    m = re.search(r"Worker stopped: fired (\d+) timer\(s\), (\d+) escalation", log_path.read_text())
    assert m, log_path.read_text()[-2000:]
    return int(m[1]), int(m[2])


# ------------------------------------------------------------------- in-process worker


def test_injected_engine_clock_drives_bpmn_timers(settings):
    clock = FrozenClock(sh(2026, 11, 20, 15))
    cf = Careflow(settings, clock=clock)  # no use_clock: the engine's own clock must drive SpiffWorkflow too
    try:
        deploy(cf, "sla_timer")
        due = sh(2026, 11, 25, 15)
        inst = cf.start("sla_timer", {"due": due.isoformat()}).instance_id
        worker = Worker(cf, listen=False)
        clock.set(due - timedelta(seconds=1))
        assert worker.run_pass().timers == 0
        assert worker.next_due() == due
        clock.set(due + timedelta(microseconds=1))
        assert worker.run_pass().timers == 1
        assert cf.show(inst)["status"] == "completed"
        with cf.Session() as s:
            timer = s.scalars(select(Timer)).one()
            fired = s.scalars(select(AuditEntry).where(AuditEntry.action == "timer_fired")).one()
        assert (timer.status, timer.fired_at) == ("fired", due + timedelta(microseconds=1))
        assert (fired.actor, fired.cause) == ("timer", "timer")
        worker.close()
    finally:
        cf.close()


def test_worker_sleeps_until_the_next_due_moment(cf):
    clock = FrozenClock(sh(2026, 11, 23, 9))
    with use_clock(clock):
        deploy(cf, "sla_timer")
        idle = Worker(cf, max_sleep=5, listen=False)
        assert idle.next_due() is None and idle.sleep_seconds(PassStats()) == 5
        cf.start("sla_timer", {"due": (clock.now() + timedelta(seconds=90)).isoformat()})
        far = Worker(cf, max_sleep=3600, listen=False)
        assert far.sleep_seconds(PassStats()) == pytest.approx(90.001)
        assert Worker(cf, max_sleep=2, listen=False).sleep_seconds(PassStats()) == 2
        with cf.Session() as s, s.begin():  # urgent ticket: first rung (50 % of PT2H) in one hour
            open_clocks(s, subject_type="ticket", subject_key="SN1", instance_id=None, priority="urgent",
                        ticket_type=None, tier=None, owner="alice", group=None,
                        started_at=clock.now() - timedelta(minutes=59, seconds=30), pm=cf.pm)
        assert far.sleep_seconds(PassStats()) == pytest.approx(30.001)
        for w in (idle, far):
            w.close()


def test_simultaneous_due_work_drains_across_batches(cf):
    deploy(cf, "sla_timer")
    now = utcnow()
    ids = _start_timers(cf, 120, due=now - timedelta(minutes=1), created_at=now - timedelta(hours=1))
    _open_overdue_subjects(cf, 30, now - timedelta(hours=10))
    worker = Worker(cf, batch=25, listen=False)
    totals = worker.run(once=True)
    worker.close()
    assert (totals.timers, totals.rungs) == (120, 30 * RUNGS_PER_SUBJECT)
    assert totals.passes >= 120 // 25
    _assert_fired_exactly_once(cf, ids, 30)


def test_worker_once_from_the_command_line(cf, runner):
    deploy(cf, "sla_timer")
    now = utcnow()
    _start_timers(cf, 3, due=now - timedelta(seconds=5), created_at=now - timedelta(minutes=5))
    _open_overdue_subjects(cf, 1, now - timedelta(hours=10))
    res = runner.invoke(cli, ["worker", "--once"])
    assert res.exit_code == 0, res.output
    assert "fired 3 timer(s), 6 escalation rung(s)" in res.output
    res = runner.invoke(cli, ["worker", "--once"])
    assert "fired 0 timer(s), 0 escalation rung(s)" in res.output
    assert runner.invoke(cli, ["worker", "--max-sleep", "0"]).exit_code == 2


# -------------------------------------------------------------- real worker processes


def test_killed_worker_loses_nothing_and_fires_nothing_twice(cf, settings, tmp_path):
    deploy(cf, "sla_timer")
    now = utcnow()
    ids = _start_timers(cf, 300, due=now - timedelta(seconds=30), created_at=now - timedelta(hours=1))
    subjects = 120
    _open_overdue_subjects(cf, subjects, now - timedelta(hours=10))
    total_rungs = subjects * RUNGS_PER_SUBJECT

    proc = _worker_process(settings, tmp_path / "w1.log", "--max-sleep", "0.5")
    try:
        _wait_for(lambda: _counts(cf)["timers_fired"] >= 10, 60, "the first worker to start firing timers")
    finally:
        proc.kill()  # SIGKILL: no cleanup, possibly in the middle of a firing
        proc.wait(10)
    at_kill = _counts(cf)
    assert 0 < at_kill["timers_fired"] < len(ids), f"not killed mid-drain: {at_kill}"

    proc = _worker_process(settings, tmp_path / "w2.log", "--max-sleep", "0.5")
    try:
        _wait_for(lambda: _counts(cf)["escalations"] >= 10, 60, "the second worker to start escalating")
    finally:
        proc.kill()
        proc.wait(10)
    at_kill = _counts(cf)
    assert at_kill["escalations"] > 0
    assert at_kill["timers_fired"] + at_kill["escalations"] < len(ids) + total_rungs, f"not mid-drain: {at_kill}"

    proc = _worker_process(settings, tmp_path / "w3.log", "--once")
    assert proc.wait(120) == 0, (tmp_path / "w3.log").read_text()[-2000:]
    timers, rungs = _totals(tmp_path / "w3.log")
    assert (timers, rungs) == (len(ids) - at_kill["timers_fired"], total_rungs - at_kill["escalations"])
    _assert_fired_exactly_once(cf, ids, subjects)


def test_two_workers_share_the_due_set_and_never_fire_twice(cf, settings, db_url, tmp_path):
    deploy(cf, "sla_timer")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_worker_process(settings, log, "--max-sleep", "0.5") for log in logs]
    try:
        _wait_for(lambda: all("Worker started" in log.read_text() for log in logs), 60, "both workers to start")
        now = utcnow()
        due = now + timedelta(seconds=2)  # both workers are asleep when it comes due
        ids = _start_timers(cf, 400, due=due, created_at=now)
        subjects = 60
        _open_overdue_subjects(cf, subjects, now - timedelta(hours=10))
        _wait_for(lambda: _counts(cf) == {"timers_fired": 400, "escalations": subjects * RUNGS_PER_SUBJECT}, 120,
                  "the due set to drain", interval=0.1)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)  # graceful: finish the current firing, then stop
        codes = [p.wait(30) for p in procs]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    totals = [_totals(log) for log in logs]
    assert sum(t for t, _ in totals) == 400
    assert sum(r for _, r in totals) == subjects * RUNGS_PER_SUBJECT
    if db_url.startswith("postgresql"):  # SKIP LOCKED: both took a share (SQLite has one writer at a time)
        assert all(t > 0 for t, _ in totals), totals
    _assert_fired_exactly_once(cf, ids, subjects)
