"""Finished tasks stored once in parts (``dump_state_parts``), not rewritten with every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from test_serialization import reference_dump

from engine import step_rows
from engine.models import Instance, InstanceStatePart
from engine.runtime import Careflow
from engine.serialization import dump_state, dump_state_parts, expand_state, load_state

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _log(cf: Careflow, instance_id: int, entries: range, done_at: int | None = None) -> None:
    for i in entries:
        [t] = cf.tasks(instance_id=instance_id)
        cf.complete(t["id"], {"done": i == done_at, "entry": f"entry {i}"}, user="u")


def _stored(cf: Careflow, instance_id: int) -> tuple[str, int]:
    """The instance's stored state text and how many parts it has."""
    with cf.Session() as s:
        state = s.get(Instance, instance_id).state
        n = s.scalar(select(func.count()).select_from(InstanceStatePart)
                     .where(InstanceStatePart.instance_id == instance_id))
    return state, n


@pytest.fixture
def history(cf):
    cf.deploy([BENCH / "history.bpmn"])
    r = cf.start("bench_history", {"done": False})
    return cf, r.instance_id


def test_a_long_history_is_stored_once_and_restored_exactly(history):
    cf, iid = history
    _log(cf, iid, range(120))
    state, n_parts = _stored(cf, iid)
    wf = cf._wf_cache[iid][1]
    full = dump_state(wf)
    assert n_parts >= 5
    # the finished iterations are stubs, "<id>":<part> (the loop task still lists them all as children)
    assert len(state) < len(full) / 3
    assert json.dumps(cf.stored_state(iid), separators=(",", ":")) == full == reference_dump(wf)


def test_a_restored_workflow_keeps_its_stubs_and_runs_on(history, settings):
    cf, iid = history
    _log(cf, iid, range(60))
    state, n_parts = _stored(cf, iid)
    # another process (no cached workflow) takes the next steps: it restores from the parts
    other = Careflow(settings)
    try:
        _log(other, iid, range(60, 62))
        after, n_after = _stored(other, iid)
        # the restored tasks are stubs again, not written in full nor archived a second time
        assert len(after) < len(state) + 2000 and n_after <= n_parts + 1
        _log(other, iid, range(62, 70), done_at=69)
        assert other.show(iid)["status"] == "completed"
        data = other.show(iid)["data"]
        assert data["entry"] == "entry 69" and data["done"] is True
        # the stored state is what a never-cached run writes
        stored = other.stored_state(iid)
        with other.Session() as s:
            loaded = other.specs.get(s, s.get(Instance, iid).process_version_id)
        restored = load_state(json.dumps(stored), loaded.spec, loaded.subprocess_specs)
        assert dump_state(restored) == json.dumps(stored, separators=(",", ":"))
    finally:
        other.close()


def test_every_step_restores_from_its_parts_without_a_cache(settings):
    cf = Careflow(settings)
    cf.wf_cache_size = 0  # every step restores its workflow from the database
    try:
        cf.deploy([BENCH / "history.bpmn"])
        iid = cf.start("bench_history", {"done": False}).instance_id
        sizes = []
        for i in range(80):
            _log(cf, iid, range(i, i + 1), done_at=79)
            sizes.append(len(_stored(cf, iid)[0]))
        assert cf.show(iid)["status"] == "completed"
        # (in full, the state of 79 iterations is ~35 KB; here it grows by a stub and a child id a step)
        assert max(sizes[:79]) < 15_000  # (the last step: the flipped iterations in full, no part)
        stored = cf.stored_state(iid)
        assert [t["task_spec"] for t in stored["tasks"].values()].count("log [child]") == 80
    finally:
        cf.close()


def test_a_state_with_stubs_needs_its_parts(history):
    cf, iid = history
    _log(cf, iid, range(40))
    state, n_parts = _stored(cf, iid)
    assert n_parts
    with cf.Session() as s:
        loaded = cf.specs.get(s, s.get(Instance, iid).process_version_id)
    with pytest.raises(ValueError, match="with its parts"):
        load_state(state, loaded.spec, loaded.subprocess_specs)
    with pytest.raises(ValueError, match="missing"):
        load_state(state, loaded.spec, loaded.subprocess_specs, parts=lambda numbers: {})
    with pytest.raises(ValueError, match="missing"):
        expand_state(state, lambda numbers: {})


def test_a_step_that_fails_after_writing_its_part_leaves_nothing(history, monkeypatch):
    cf, iid = history
    real_insert = step_rows.insert_state_part
    written = []

    def part_then_crash(conn, instance_id, part, tasks):
        real_insert(conn, instance_id, part, tasks)
        written.append(part)
        raise RuntimeError("crash after the part was written")

    monkeypatch.setattr(step_rows, "insert_state_part", part_then_crash)
    for i in range(40):
        before = _stored(cf, iid)
        [t] = cf.tasks(instance_id=iid)
        try:
            cf.complete(t["id"], {"done": False, "entry": f"entry {i}"}, user="u")
        except RuntimeError:
            break
    assert written, "no step archived anything"
    assert _stored(cf, iid) == before  # neither the state nor the part of the failed step
    monkeypatch.undo()
    # its workflow was not cached: the next steps restore what was committed
    _log(cf, iid, range(i, i + 3), done_at=i + 2)
    assert cf.show(iid)["status"] == "completed"
    assert cf.show(iid)["data"]["entry"] == f"entry {i + 2}"


def test_an_archived_task_that_changes_is_stored_in_full_again(history):
    cf, iid = history
    _log(cf, iid, range(30))
    wf = cf._wf_cache[iid][1]
    finished = [t for t in wf.tasks.values() if t.task_spec.name == "log [child]" and t.state == 64]
    e = wf.__dict__["_careflow_state_json"].tasks[finished[0]]
    assert e.archived is not None
    finished[0].data = {**finished[0].data, "entry": "changed"}  # (a new dict, as an admin edit would make)
    state, part = dump_state_parts(wf, 999)
    assert '"changed"' in state and (part is None or '"changed"' not in part)
    assert json.dumps(expand_state(state, lambda numbers: {n: _part(cf, iid, n) for n in numbers}),
                      separators=(",", ":")) == reference_dump(wf)


def _part(cf: Careflow, iid: int, n: int) -> str:
    with cf.Session() as s:
        return s.get(InstanceStatePart, (iid, n)).tasks


def test_downgrade_puts_the_archived_tasks_back_into_the_states(history, db_url):
    from alembic import command

    from engine.db import alembic_config

    cf, iid = history
    _log(cf, iid, range(50))
    expected = cf.stored_state(iid)
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0010")
    try:
        with cf.db.connect() as conn:
            state = json.loads(conn.execute(text("SELECT state FROM instances WHERE id = :i"), {"i": iid}).scalar())
        assert state == expected
    finally:
        command.upgrade(cfg, "heads")
    cf._wf_cache.clear()
    _log(cf, iid, range(50, 52), done_at=51)
    assert cf.show(iid)["status"] == "completed"
