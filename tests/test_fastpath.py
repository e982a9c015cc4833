"""The flat task scans answer exactly what SpiffWorkflow's tree walk answers."""

from __future__ import annotations

from datetime import timedelta

from SpiffWorkflow.util.task import TaskState

from engine.fastpath import _TREE_GET_TASKS, accelerate

from ticket_helpers import CS, TS, Flow, diagnosis, intake, sh, ticket_engine

STATES = [TaskState.READY, TaskState.WAITING, TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FUTURE,
          TaskState.LIKELY | TaskState.MAYBE, TaskState.STARTED]


def test_flat_scan_matches_the_tree_walk_on_a_running_ticket(settings):
    gen = ticket_engine(settings)
    cf, clock = next(gen)
    try:
        f = Flow(cf, clock).start()
        f.do("ut_intake", CS, intake(clock.now()), "zhang.wei", after=timedelta(minutes=5))
        f.do("ut_diagnose", TS, diagnosis(sh(2026, 11, 23, 9, 20)), "liu.yang", after=timedelta(minutes=25))
        wf = cf._wf_cache[f.instance_id][1]  # a live workflow inside a looped call activity
        assert wf.subprocesses, "the round runs in a subprocess"
        accelerate(wf)
        for state in STATES:  # READY is scanned, the rest still walk the tree: all must agree
            flat = {t.id for t in wf.get_tasks(state=state)}
            tree = {t.id for t in _TREE_GET_TASKS(wf, None, state=state)}
            assert flat == tree, TaskState.get_name(state)
        assert {t.task_spec.bpmn_id for t in wf.get_tasks(state=TaskState.READY)} == {"ut_remote"}
        waiting = {t.id for t in wf.tasks.values() if t.state == TaskState.WAITING}
        assert waiting == {t.id for t in _TREE_GET_TASKS(wf, None, state=TaskState.WAITING) if t.workflow is wf}
    finally:
        gen.close()
