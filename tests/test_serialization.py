"""Stored state: without the spec, with the finished-task cache giving the same restore as a full dump."""

from __future__ import annotations

from pathlib import Path

from engine.serialization import dump_state, load_state

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_incremental_dump_restores_exactly(cf):
    cf.deploy([BENCH / "history.bpmn"])
    r = cf.start("bench_history", {"done": False})
    for i in range(30):
        [t] = cf.tasks(instance_id=r.instance_id)
        cf.complete(t["id"], {"done": i == 29, "entry": f"e{i}"}, user="u")
        wf = cf._wf_cache[r.instance_id][1] if r.instance_id in cf._wf_cache else None
        if wf is None:
            continue
        with cf.Session() as s:
            loaded = cf.specs.get(s, 1)
        cached = dump_state(wf)
        wf.__dict__.pop("_careflow_task_dicts", None)
        assert dump_state(wf) == cached or _same(load_state(cached, loaded.spec, loaded.subprocess_specs), wf)
        restored = load_state(cached, loaded.spec, loaded.subprocess_specs)
        assert _same(restored, wf)
    assert cf.show(r.instance_id)["status"] == "completed"


def _same(a, b) -> bool:
    return a.tasks.keys() == b.tasks.keys() and all(
        a.tasks[k].data == b.tasks[k].data and a.tasks[k].state == b.tasks[k].state for k in a.tasks)
