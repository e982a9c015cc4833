"""Auditor search, per-instance history and export: every filter returns exactly the rows it
should, keyset paging walks the whole set both ways, exports hold exactly the filtered rows."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from careflow.cli import cli
from engine import audit_search
from engine.audit_query import (
    AuditFilter,
    export_audit,
    export_csv,
    instance_history,
    iter_audit,
    search_audit,
)
from engine.audit_search import watermark
from engine.clock import FrozenClock
from engine.deploy import Bundle
from engine.errors import NotFound, ValidationFailed
from engine.runtime import Careflow

from conftest import FIXTURES

T0 = datetime(2024, 3, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
def history(settings, tmp_path):
    """Three days of work on two versions of a process, two tickets, two customers."""
    cf = _history(settings, tmp_path)
    yield cf
    cf.close()


def _history(settings, tmp_path) -> Careflow:
    clock = FrozenClock(T0)
    cf = Careflow(settings, clock=clock)
    cf.deploy([FIXTURES / "simple.bpmn"], author="olivia")
    a = cf.start("simple_review", {"customer_id": "C001", "contact_phone": "13800000000"}, actor="alice")
    clock.advance(timedelta(hours=2))
    [task] = cf.tasks(instance_id=a.instance_id)
    cf.complete(task["id"], {"customer": "ACME", "amount": 80}, user="bob")

    clock.set(T0 + timedelta(days=1))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "simple.bpmn").write_text((FIXTURES / "simple.bpmn").read_text().replace("Simple review", "Simple v2"))
    shutil.copytree(FIXTURES / "forms", v2 / "forms")
    cf.deploy(Bundle.from_paths([v2 / "simple.bpmn"]), author="olivia", comment="v2")
    b = cf.start("simple_review", {"customer_id": "C002"}, actor="carol")
    clock.advance(timedelta(minutes=30))
    [task] = cf.tasks(instance_id=b.instance_id)
    cf.complete(task["id"], {"customer": "Beta", "amount": 5}, user="bob")

    clock.set(T0 + timedelta(days=2))
    c = cf.start("simple_review", {"customer_id": "C001"}, actor="=HYPERLINK(\"http://evil\")", version=1)
    with cf.db.begin() as conn:
        conn.execute(text("UPDATE instances SET business_key = 'SN20240314001' WHERE id = :i"), {"i": a.instance_id})
        conn.execute(text("UPDATE instances SET business_key = 'SN20240315001' WHERE id = :i"), {"i": b.instance_id})
    cf.ids = (a.instance_id, b.instance_id, c.instance_id)
    return cf


def expected(cf, pred) -> list[int]:
    """The seqs a filter must return, newest first, computed the slow, obvious way."""
    rows = [r for r in cf.audit() if pred(r)]
    rows.sort(key=lambda r: (r["at"], r["seq"]), reverse=True)
    return [r["seq"] for r in rows]


def all_pages(cf, flt: AuditFilter, limit: int = 3) -> list[int]:
    seqs = []
    with cf.Session() as s:
        page = search_audit(s, flt, limit=limit)
        assert page.newer is None
        pages = [page]
        while page.older:
            page = search_audit(s, flt, limit=limit, older=page.older)
            pages.append(page)
        for p in pages:
            seqs += [r["seq"] for r in p.items]
        # and back again with the newer cursors
        back = []
        page = pages[-1]
        while page.newer:
            page = search_audit(s, flt, limit=limit, newer=page.newer)
            back = [r["seq"] for r in page.items] + back
        assert back == seqs[:len(back)]
        if len(pages) > 1:
            assert back + [r["seq"] for r in pages[-1].items] == seqs
    return seqs


def at(r) -> datetime:
    return datetime.fromisoformat(r["at"])


@pytest.fixture(params=[1, 3, 7])
def batched_history(request, settings, tmp_path, monkeypatch):
    """The same history with ``audit_search`` filled every 1, 3 or 7 rows: its watermark falls
    at different places among the rows, so searches read both the copy and the rows after it."""
    monkeypatch.setattr(audit_search, "BATCH", request.param)
    cf = _history(settings, tmp_path)
    yield cf
    cf.close()


def test_search_copy_holds_exactly_the_rows_up_to_its_watermark(batched_history):
    cf = batched_history
    columns = "seq, at, actor, action, process_id, process_version_id"
    with cf.db.connect() as conn:
        mark = watermark(conn)
        copied = conn.execute(text(f"SELECT {columns} FROM audit_search ORDER BY seq")).all()
        originals = conn.execute(text(f"SELECT {columns} FROM audit_log WHERE seq <= :m ORDER BY seq"),
                                 {"m": mark}).all()
        last = conn.execute(text("SELECT max(seq) FROM audit_log")).scalar()
    assert copied == originals and [r[0] for r in copied] == list(range(1, mark + 1))
    # the step crossing a multiple of BATCH copied everything up to its own last row
    assert last // audit_search.BATCH * audit_search.BATCH <= mark <= last
    assert audit_search.BATCH > 1 or mark == last


def test_filters_read_the_search_copy_and_the_rows_after_it(batched_history):
    test_every_filter_returns_exactly_its_rows(batched_history)
    cf = batched_history
    flt = AuditFilter.from_params({"user": "bob"})
    with cf.Session() as s:
        ascending = [r["seq"] for r in iter_audit(s, flt, batch=1)]
    assert ascending == sorted(expected(cf, lambda r: r["actor"] == "bob"))


def test_every_filter_returns_exactly_its_rows(history):
    cf = history
    a, b, c = cf.ids
    assert len(cf.audit()) == 20  # steps share their time: paging must break the ties by seq
    with cf.Session() as s:
        v1 = s.execute(text("SELECT id FROM process_versions WHERE version = 1")).scalar()
    day2, day3 = T0 + timedelta(days=1), T0 + timedelta(days=2)
    cases = [
        ({}, lambda r: True),
        ({"from": "2024-03-15"}, lambda r: at(r) >= day2.replace(hour=0)),
        ({"from": "2024-03-15", "to": "2024-03-15"}, lambda r: day2.replace(hour=0) <= at(r) < day3.replace(hour=0)),
        ({"to": "2024-03-14T10:00:00+00:00"}, lambda r: at(r) < T0 + timedelta(hours=1)),
        ({"user": "bob"}, lambda r: r["actor"] == "bob"),
        ({"user": "bob", "from": "2024-03-15"}, lambda r: r["actor"] == "bob" and at(r) >= day2.replace(hour=0)),
        ({"process": "simple_review"}, lambda r: r["process_id"] == "simple_review"),
        ({"process": "simple_review", "version": "1"}, lambda r: r["process_version_id"] == v1),
        ({"action": "task_completed"}, lambda r: r["action"] == "task_completed"),
        ({"cause": "user"}, lambda r: r["cause"] == "user"),
        ({"ticket": "SN20240315001"}, lambda r: r["instance_id"] == b),
        ({"customer": "C001"}, lambda r: r["instance_id"] in (a, c)),
        ({"customer": "nobody"}, lambda r: False),
        ({"instance": str(c)}, lambda r: r["instance_id"] == c),
        ({"action": "process_deployed", "user": "olivia"}, lambda r: r["action"] == "process_deployed"),
    ]
    for params, pred in cases:
        want = expected(cf, pred)
        got = all_pages(cf, AuditFilter.from_params(params))
        assert got == want, (params, got, want)


def test_search_items_carry_ticket_version_and_masked_data(history):
    cf = history
    with cf.Session() as s:
        page = search_audit(s, AuditFilter.from_params({"ticket": "SN20240314001", "action": "instance_started"}))
    [row] = page.items
    assert (row["ticket"], row["version"], row["process_id"]) == ("SN20240314001", 1, "simple_review")
    assert row["data_diff"]["added"]["contact_phone"] == "138****0000"


def test_filter_validation():
    with pytest.raises(ValidationFailed) as err:
        AuditFilter.from_params({"from": "yesterday", "version": "x", "instance": "-1"})
    assert set(err.value.field_errors) == {"from", "version", "instance"}
    with pytest.raises(ValidationFailed) as err:
        AuditFilter.from_params({"version": "2"})
    assert "process" in err.value.field_errors["version"][0]
    with pytest.raises(ValidationFailed) as err:
        AuditFilter.from_params({"from": "2024-03-15", "to": "2024-03-14"})
    assert set(err.value.field_errors) == {"to"}
    flt = AuditFilter.from_params({"from": "2024-03-15", "to": "2024-03-15", "user": " ", "ticket": "SN1"})
    assert (flt.date_from, flt.date_to, flt.user, flt.ticket) == (
        datetime(2024, 3, 15, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC), None, "SN1")
    assert AuditFilter.from_params({"from": "2024-03-15T08:00:00+08:00"}).date_from == datetime(2024, 3, 15, tzinfo=UTC)


def test_bad_cursor_is_a_clear_error(history):
    with history.Session() as s, pytest.raises(ValidationFailed):
        search_audit(s, older="garbage")


def test_instance_history(history):
    cf = history
    a, _, c = cf.ids
    with cf.Session() as s:
        steps = instance_history(s, a)
        with pytest.raises(NotFound):
            instance_history(s, 424242)
        assert [r["version"] for r in instance_history(s, c)] == [1] * len(instance_history(s, c))
    assert [r["seq"] for r in steps] == sorted(r["seq"] for r in steps)
    assert [(r["action"], r["task_name"]) for r in steps[:5]] == [
        ("instance_started", None), ("engine_task", "start"), ("task_ready", "intake"),
        ("task_completed", "intake"), ("engine_task", "compute")]
    done = steps[3]
    assert (done["actor"], done["cause"], done["version"], done["ticket"]) == ("bob", "user", 1, "SN20240314001")
    assert done["form_version"] and done["data_diff"] == {"added": {"customer": "ACME", "amount": 80}}
    assert steps[0]["data_diff"]["added"]["contact_phone"] == "138****0000"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_contents_match_the_filter(history, fmt):
    cf = history
    params = {"user": "bob", "from": "2024-03-14", "to": "2024-03-15"}
    flt = AuditFilter.from_params(params)
    want = sorted(expected(cf, lambda r: r["actor"] == "bob" and at(r) < T0 + timedelta(days=2)))
    with cf.Session() as s:
        body = "".join(export_audit(s, flt, fmt=fmt))
        search = [r for r in iter_audit(s, flt, batch=2)]
    assert [r["seq"] for r in search] == want  # oldest first, across keyset batches
    if fmt == "csv":
        assert body.startswith("\ufeffseq,at,ticket,")
        rows = list(csv.DictReader(io.StringIO(body.lstrip("\ufeff"))))
        assert [int(r["seq"]) for r in rows] == want
        assert {r["actor"] for r in rows} == {"bob"}
        assert rows[0]["ticket"] == "SN20240314001" and rows[0]["version"] == "1"
    else:
        doc = json.loads(body)
        assert [r["seq"] for r in doc["rows"]] == want
        assert doc["masked"] is True and doc["filter"]["user"] == "bob"
        assert doc["head"]["seq"] == max(r["seq"] for r in cf.audit())
        assert doc["rows"] == [{**r} for r in search]


def test_csv_cells_cannot_become_formulas(history):
    cf = history
    with cf.Session() as s:
        rows = list(iter_audit(s, AuditFilter(instance_id=cf.ids[2])))
    body = "".join(export_csv(rows))
    actors = {r["actor"] for r in csv.DictReader(io.StringIO(body.lstrip("\ufeff")))}
    assert "'=HYPERLINK(\"http://evil\")" in actors and not any(a.startswith("=") for a in actors)


def test_cli_export_filters_and_errors(history, runner, tmp_path, monkeypatch):
    cf = history
    out = tmp_path / "ticket.json"
    res = runner.invoke(cli, ["audit", "export", "--format", "json", "--ticket", "SN20240315001", "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert {r["instance_id"] for r in doc["rows"]} == {cf.ids[1]}
    assert f"Exported {len(doc['rows'])} rows" in res.output
    res = runner.invoke(cli, ["audit", "export", "--action", "process_deployed"])
    assert res.exit_code == 0 and len(list(csv.DictReader(io.StringIO(res.output.lstrip("\ufeff"))))) == 2
    res = runner.invoke(cli, ["audit", "export", "--from", "someday"])
    assert res.exit_code == 2 and "from" in res.output
    res = runner.invoke(cli, ["audit", "export", "--format", "xml"])
    assert res.exit_code == 2
    assert not list(tmp_path.glob("*.part"))


def test_migration_copies_existing_rows_into_the_search_copy(history, db_url):
    from alembic import command

    from engine.db import alembic_config

    cf = history
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0008-1")  # back to the four indexes on audit_log
    with cf.db.connect() as conn:
        assert "audit_search" not in {r[0] for r in conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'table'" if cf.db.dialect.name == "sqlite"
            else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))}
    command.upgrade(cfg, "heads")
    with cf.db.connect() as conn:
        assert watermark(conn) == conn.execute(text("SELECT max(seq) FROM audit_log")).scalar() == 20
    test_every_filter_returns_exactly_its_rows(cf)
