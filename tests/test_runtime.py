"""Running instances: completion, field errors, stale tasks, concurrency, crashes, audit, timers, sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from engine.clock import FrozenClock, use_clock
from engine.errors import Conflict, NotFound, ScriptError, ValidationFailed
from engine.models import AuditEntry, HumanTask, Instance, OutboxMessage, Timer

from bpmn_factory import process_xml, write_bundle
from conftest import FIXTURES


@pytest.fixture
def simple(cf):
    cf.deploy([FIXTURES / "simple.bpmn"])
    return cf


def snapshot(cf, instance_id):
    """Everything a step may write, to compare before/after a failed step."""
    with cf.Session() as s:
        inst = s.get(Instance, instance_id)
        return {
            "revision": inst.revision, "state": inst.state, "status": inst.status,
            "tasks": sorted((t.id, t.status) for t in s.scalars(select(HumanTask)
                                                                .where(HumanTask.instance_id == instance_id))),
            "audit": s.scalar(select(func.count()).select_from(AuditEntry)),
            "outbox": s.scalar(select(func.count()).select_from(OutboxMessage)),
            "timers": sorted((t.task_id, t.status) for t in s.scalars(select(Timer))),
        }


def only_task(cf, instance_id):
    [task] = cf.tasks(instance_id=instance_id)
    return task


def test_run_to_completion(simple):
    cf = simple
    r = cf.start("simple_review", {"channel": "phone"}, actor="alice")
    task = only_task(cf, r.instance_id)
    assert (task["name"], task["lane"], task["form"]["title"]) == ("intake", "customer_service", "Intake")
    assert task["due_at"] is not None  # dueIn PT4H
    done = cf.complete(task["id"], {"customer": "ACME", "amount": 10}, user="alice")
    assert done.status == "completed" and done.ready_tasks == []
    info = cf.show(r.instance_id)
    assert info["status"] == "completed"
    assert info["data"] == {"channel": "phone", "customer": "ACME", "amount": 10, "total": 20}
    assert cf.tasks(instance_id=r.instance_id) == []
    [row] = cf.tasks(instance_id=r.instance_id, status="completed")
    assert row["completed_by"] == "alice"


def test_audit_rows_for_every_step(simple):
    cf = simple
    r = cf.start("simple_review", {}, actor="alice")
    cf.complete(only_task(cf, r.instance_id)["id"], {"customer": "ACME", "amount": 80}, user="bob")
    cf.complete(only_task(cf, r.instance_id)["id"], {"approved": True}, user="carol")
    rows = cf.audit(r.instance_id)
    steps = [(a["action"], a["actor"], a["task_name"]) for a in rows]
    assert steps == [
        ("instance_started", "alice", None),
        ("engine_task", "system", "start"),
        ("task_ready", "system", "intake"),
        ("task_completed", "bob", "intake"),
        ("engine_task", "system", "compute"),
        ("engine_task", "system", "gw"),
        ("task_ready", "system", "approve"),
        ("task_completed", "carol", "approve"),
        ("engine_task", "system", "end_big"),
        ("instance_completed", "carol", None),
    ]
    completed = rows[3]
    assert completed["data_diff"] == {"added": {"customer": "ACME", "amount": 80}}
    assert completed["cause"] == "user" and completed["form_version"] and completed["process_version_id"]
    assert rows[4]["data_diff"] == {"added": {"total": 160}}
    assert all(a["at"] for a in rows)
    # the chain links every row to the previous one
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))


def test_field_errors_save_nothing(simple):
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    before = snapshot(cf, r.instance_id)
    with pytest.raises(ValidationFailed) as exc:
        cf.complete(task["id"], {"customer": "", "amount": -1, "email": "not-an-email"}, user="alice")
    errors = exc.value.field_errors
    assert set(errors) == {"customer", "amount", "email"}
    with pytest.raises(ValidationFailed) as exc:
        cf.complete(task["id"], {}, user="alice")
    assert set(exc.value.field_errors) == {"customer", "amount"}
    assert snapshot(cf, r.instance_id) == before


def test_stale_task_is_a_conflict(simple):
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    cf.complete(task["id"], {"customer": "A", "amount": 1}, user="alice")
    with pytest.raises(Conflict, match="already completed by alice"):
        cf.complete(task["id"], {"customer": "B", "amount": 2}, user="bob")
    with pytest.raises(NotFound):
        cf.complete("00000000-0000-0000-0000-000000000000", {}, user="bob")


def test_concurrent_completion_exactly_one_wins(simple):
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def attempt(i):
        barrier.wait()
        try:
            cf.complete(task["id"], {"customer": f"C{i}", "amount": 1}, user=f"user{i}")
            outcomes.append("won")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "won"]
    assert [a["action"] for a in cf.audit(r.instance_id)].count("task_completed") == 1


def test_stale_revision_is_refused(simple, monkeypatch):
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    before = snapshot(cf, r.instance_id)
    real_lock = cf._lock_row

    def stale_lock(conn, instance_id):  # as if another writer committed after our read
        inst = real_lock(conn, instance_id)
        inst.revision -= 1
        return inst

    monkeypatch.setattr(cf, "_lock_row", stale_lock)
    with pytest.raises(Conflict, match="changed by someone else"):
        cf.complete(task["id"], {"customer": "A", "amount": 1}, user="alice")
    assert snapshot(cf, r.instance_id) == before


def test_crash_after_engine_run_leaves_previous_state(simple, monkeypatch):
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    before = snapshot(cf, r.instance_id)
    import engine.runtime as runtime

    def boom(session, events):
        raise RuntimeError("power cut")

    monkeypatch.setattr(runtime, "append_events", boom)
    with pytest.raises(RuntimeError):
        cf.complete(task["id"], {"customer": "A", "amount": 500}, user="alice")
    monkeypatch.undo()
    assert snapshot(cf, r.instance_id) == before
    # and the task can still be completed afterwards (the cached workflow was not reused)
    assert cf.complete(task["id"], {"customer": "A", "amount": 500}, user="alice").status == "running"


def test_process_killed_mid_step_loses_nothing(simple, settings, tmp_path):
    """A real crash: the process dies (os._exit) after the engine ran, before commit."""
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    before = snapshot(cf, r.instance_id)
    script = textwrap.dedent(f"""
        import os, engine.runtime as rt
        from engine.config import Settings
        from pathlib import Path
        cf = rt.Careflow(Settings(database_url={settings.database_url!r}, home=Path({str(tmp_path)!r})))
        real = rt.append_events
        def die(session, events):
            real(session, events)
            session.flush()
            os._exit(9)
        rt.append_events = die
        cf.complete({task['id']!r}, {{"customer": "A", "amount": 500}}, user="alice")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    assert snapshot(cf, r.instance_id) == before
    cf._forget(r.instance_id)
    assert cf.complete(task["id"], {"customer": "A", "amount": 500}, user="alice").status == "running"


def test_timer_fires_in_simulated_time(simple):
    cf = simple
    r = cf.start("simple_review", {})
    cf.complete(only_task(cf, r.instance_id)["id"], {"customer": "A", "amount": 500}, user="alice")
    with cf.Session() as s:
        [timer] = s.scalars(select(Timer).where(Timer.instance_id == r.instance_id)).all()
    assert timer.status == "waiting"
    clock = FrozenClock(timer.due_at - timedelta(minutes=1))
    with use_clock(clock):
        assert cf.due_timer_instances() == []
        assert cf.fire_due_timers() == 0
        clock.advance(timedelta(minutes=2))
        assert cf.due_timer_instances() == [r.instance_id]
        assert cf.fire_due_timers() == 1
    names = sorted(t["name"] for t in cf.tasks(instance_id=r.instance_id))
    assert names == ["approve", "escalate"]
    fired = [a for a in cf.audit(r.instance_id) if a["action"] == "timer_fired"]
    assert len(fired) == 1 and fired[0]["actor"] == "timer" and fired[0]["cause"] == "timer"
    with cf.Session() as s:
        assert s.get(Timer, timer.id).status == "fired"


def test_outbox_row_written_with_the_step(simple):
    cf = simple
    r = cf.start("simple_review", {})
    cf.complete(only_task(cf, r.instance_id)["id"], {"customer": "A", "amount": 5}, user="alice")
    with cf.Session() as s:
        [msg] = s.scalars(select(OutboxMessage)).all()
    assert (msg.topic, msg.recipient, msg.payload, msg.status) == ("intake_done", "customer", {"amount": 5}, "pending")


@pytest.mark.parametrize("script, fragment", [
    ("x = getattr(customer, 'upper')", "getattr"),
    ("x = 1\ny = 1 / 0", "ZeroDivisionError"),
    ("while True:\n    pass", "CPU time limit"),
    ("x = 'a' * 10**9", "too large"),
])
def test_script_errors_name_task_and_line_and_save_nothing(cf, tmp_path, script, fragment):
    cf.script_engine.environment.budget.seconds = 0.3  # keep the runaway-loop case short
    cf.deploy([write_bundle(tmp_path, process_xml(script=script))])
    r = cf.start("p_test", {"customer": "x"})
    task = only_task(cf, r.instance_id)
    before = snapshot(cf, r.instance_id)
    with pytest.raises(ScriptError) as exc:
        cf.complete(task["id"], {"note": "go"}, user="alice")
    message = str(exc.value)
    assert "计算 / Calc" in message and fragment in message
    if "1 / 0" in script:
        assert "line 2" in message
    assert snapshot(cf, r.instance_id) == before


def test_dates_and_decimals_survive_storage(cf, tmp_path):
    script = "d = date(2024, 3, 15)\\nm = Decimal('12.50')\\nwhen = datetime(2024, 3, 15, 8, 0, tzinfo=timezone.utc)"
    cf.deploy([write_bundle(tmp_path, process_xml(script=script.replace("\\n", "\n")))])
    r = cf.start("p_test")
    cf.complete(only_task(cf, r.instance_id)["id"], {"note": "ok"}, user="a")
    cf._wf_cache.clear()
    data = cf.show(r.instance_id)["data"]
    assert data["d"] == "2024-03-15" and data["m"] == "12.50" and data["when"].startswith("2024-03-15T08:00")


def test_start_unknown_process_or_version(cf):
    with pytest.raises(NotFound, match="careflow deploy"):
        cf.start("nope")


def test_completion_refused_when_reassigned_meanwhile(simple):
    cf = simple
    r = cf.start("simple_review", {})
    task = only_task(cf, r.instance_id)
    with cf.Session() as s, s.begin():
        s.get(HumanTask, task["id"]).assignee = "bob"
    with pytest.raises(Conflict, match="reassigned to bob"):
        cf.complete(task["id"], {"customer": "A", "amount": 1}, user="alice", expected_assignee=None)
    assert cf.complete(task["id"], {"customer": "A", "amount": 1}, user="bob", expected_assignee="bob")


def test_loop_finishes_after_a_restart(settings):
    """A looped task restored onto freshly parsed specs (new process) still completes its iterations."""
    from pathlib import Path

    from engine.runtime import Careflow

    bench = Path(__file__).resolve().parents[1] / "bench"
    first = Careflow(settings)
    first.deploy([bench / "history.bpmn"])
    r = first.start("bench_history", {"done": False})
    for i in range(2):
        first.complete(only_task(first, r.instance_id)["id"], {"done": False, "entry": f"e{i}"}, user="u")
    first.close()
    second = Careflow(settings)  # nothing cached: specs parsed again, state restored from the database
    second.complete(only_task(second, r.instance_id)["id"], {"done": True, "entry": "last"}, user="u")
    assert second.show(r.instance_id)["status"] == "completed"
    second.close()


@pytest.mark.parametrize("post_script", [None, "seen = note.upper()\ndel old"])
def test_task_completed_diff_covers_what_completion_changed(cf, tmp_path, post_script):
    """The form's keys only, or (a post-script ran) whatever the completion changed."""
    xml = process_xml()
    if post_script:
        xml = xml.replace("</spiffworkflow:properties>", "</spiffworkflow:properties>"
                          f"<spiffworkflow:postScript>{post_script}</spiffworkflow:postScript>")
    cf.deploy([write_bundle(tmp_path, xml)])
    r = cf.start("p_test", {"old": {"kept": [1, 2]}, "note": "before"})
    cf.complete(only_task(cf, r.instance_id)["id"], {"note": "after", "extra": {"n": 1}}, user="alice")
    [row] = [a for a in cf.audit(r.instance_id) if a["action"] == "task_completed"]
    expected = {"added": {"extra": {"n": 1}}, "changed": {"note": ["before", "after"]}}
    if post_script:
        expected["added"]["seen"] = "AFTER"
        expected["removed"] = ["old"]
    assert row["data_diff"] == expected
